"""Cluster mode: this replica's place among the schedulers sharing a PostgreSQL store.

Runs beside the engine (core/services.py starts it when the store is PostgreSQL):
- a heartbeat every `lease / 3` s: this replica's registry row (host, pid, version, config
  hash, jobs in flight), its leases renewed, the other replicas listed, the states they
  wrote taken over by the engine, and the intents of replicas that are gone resolved;
- LISTEN/NOTIFY on `vmsh_cluster`: a pause, resume or reload made on any replica (its
  dashboard, `ctl`, the control API) is applied by every replica at once; the paused flag
  is also kept in the `cluster` table, so a replica that starts later starts paused.

When the store cannot be reached, `store_problem` says why (/readyz is then 503, /health
degraded); claims fail too, so nothing is anchored without a lease, and the jobs back off
with kind `network`. Everything resumes by itself when the database is back.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from core import __version__
from core.errors import describe
from core.events import ConfigApplied, Event, Paused, ReplicasSeen
from core.pgstore import LIVENESS_LEASES, NOTIFY_CHANNEL, Database
from core.replicas import ReplicaInfo

if TYPE_CHECKING:
    from core.runtime import Runtime



class Cluster:
    kind = "postgresql"

    def __init__(self, runtime: Runtime, db: Database, replica: str) -> None:
        self.runtime = runtime
        self.db = db
        self.replica = replica
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = time.time()
        lease = runtime.engine.lease
        self.interval = max(0.5, lease / 3)
        self.liveness = lease * LIVENESS_LEASES
        self.store_problem: str | None = None
        self._replicas: list[ReplicaInfo] = []
        self._applying = False  # a change that came from another replica: not sent back
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe = runtime.bus.subscribe(self._on_event)
        self._pending_notify: set[asyncio.Task[None]] = set()

    # ----- what others read -----------------------------------------------------------

    def replicas(self) -> list[ReplicaInfo]:
        return list(self._replicas)

    # ----- running ----------------------------------------------------------------------

    async def start(self) -> None:
        """Register, take the cluster's paused flag, then beat and listen in the background."""
        try:
            paused = await asyncio.to_thread(self._register)
            self._apply_remote("pause" if paused else None)
        except Exception as exc:
            self._failed(exc)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._beat(), name="cluster-heartbeat"),
            loop.create_task(self._listen(), name="cluster-listen"),
        ]

    async def stop(self) -> None:
        self._stop.set()
        self._unsubscribe()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._pending_notify, return_exceptions=True)
        try:
            await asyncio.to_thread(self._unregister)
        except Exception:
            pass  # its heartbeat simply ages out

    async def _beat(self) -> None:
        engine = self.runtime.engine
        while not self._stop.is_set():
            try:
                # First on a thread of its own: whether the store answers is known within
                # one connect timeout, even while the engine's writer waits on it too.
                self._replicas = await asyncio.to_thread(self._heartbeat, len(engine.in_flight()))
                await engine.renew_leases()
                await engine.refresh_from_store()
                await engine.adopt_orphans()
                if self.store_problem is not None:
                    self.runtime.log.info("store reachable again", store=self.db.display)
                    self.store_problem = self.db.unreachable = None
                self._seen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval)
            except TimeoutError:
                pass

    def _failed(self, exc: BaseException) -> None:
        problem = describe(exc)
        if self.store_problem is None:
            self.runtime.log.error(
                "store unreachable: not ready, anchoring nothing until it is back", store=self.db.display,
                error=problem,
            )
        self.store_problem = self.db.unreachable = problem
        self._seen()

    def _seen(self) -> None:
        alive = sum(1 for r in self._replicas if r.alive)
        self.runtime.bus.publish(
            ReplicasSeen(at=self.runtime.engine.clock.now(), alive=alive, store_ok=self.store_problem is None)
        )

    async def _listen(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                conn = await self.db.connect_async()
                try:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    delay = 0.5
                    async for notice in conn.notifies():
                        self._on_notice(notice.payload)
                finally:
                    await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.interval)

    def _on_notice(self, payload: str) -> None:
        try:
            doc = json.loads(payload)
        except ValueError:
            return
        if not isinstance(doc, dict) or doc.get("from") == self.replica:
            return
        op = doc.get("op")
        if op == "reload":
            self.runtime.log.info("config reload asked by another replica", replica=str(doc.get("from")))
            self._applying = True
            try:
                self.runtime.reload_in_background()
            finally:
                self._applying = False
        elif op in ("pause", "resume"):
            self.runtime.log.info(f"{op} asked by another replica", replica=str(doc.get("from")))
            self._apply_remote(op)

    def _apply_remote(self, op: str | None) -> None:
        if op is None:
            return
        self._applying = True
        try:
            if op == "pause":
                self.runtime.engine.pause()
            else:
                self.runtime.engine.resume()
        finally:
            self._applying = False

    def _on_event(self, event: Event) -> None:
        """A pause, resume or reload made here goes to every replica."""
        if self._applying:
            return
        if isinstance(event, Paused):
            self._send("pause" if event.paused else "resume", paused=event.paused)
        elif isinstance(event, ConfigApplied):
            self._send("reload")

    def _send(self, op: str, *, paused: bool | None = None) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(asyncio.to_thread(self._notify, op, paused))
        self._pending_notify.add(task)
        task.add_done_callback(self._notified)

    def _notified(self, task: asyncio.Task[None]) -> None:
        self._pending_notify.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            self.runtime.log.error("could not tell the other replicas", error=describe(exc))

    # ----- blocking database work (worker threads) ---------------------------------------

    def _beat_row(self, conn: psycopg.Connection[Any], in_flight: int) -> None:
        """This replica's registry row, created or refreshed (heartbeat now)."""
        conn.execute(
            "INSERT INTO replicas (id, host, pid, version, config_hash, started_at, heartbeat_at, in_flight) "
            "VALUES (%s, %s, %s, %s, %s, to_timestamp(%s), now(), %s) ON CONFLICT (id) DO UPDATE SET "
            "heartbeat_at = now(), config_hash = excluded.config_hash, in_flight = excluded.in_flight",
            (self.replica, self.host, self.pid, __version__, self.runtime.engine.config_hash,
             self.started_at, in_flight),
        )

    def _register(self) -> bool:
        with self.db.tx() as conn:
            self._beat_row(conn, 0)
            row = conn.execute("SELECT value FROM cluster WHERE key = 'paused'").fetchone()
            return bool(row and row[0])

    def _heartbeat(self, in_flight: int) -> list[ReplicaInfo]:
        with self.db.tx() as conn:
            self._beat_row(conn, in_flight)
            # Rows of replicas gone for long (10 liveness windows) are dropped.
            conn.execute(
                "DELETE FROM replicas WHERE heartbeat_at < now() - make_interval(secs => %s)", (self.liveness * 10,)
            )
            rows = conn.execute(
                "SELECT id, host, pid, version, config_hash, in_flight, extract(epoch FROM heartbeat_at), "
                "extract(epoch FROM started_at), heartbeat_at > now() - make_interval(secs => %s) "
                "FROM replicas ORDER BY started_at, id",
                (self.liveness,),
            ).fetchall()
        return [
            ReplicaInfo(
                id=r[0], host=r[1], pid=int(r[2]), version=r[3], config_hash=r[4], in_flight=int(r[5]),
                heartbeat_at=float(r[6]), started_at=float(r[7]), alive=bool(r[8]), this=r[0] == self.replica,
            )
            for r in rows
        ]

    def _notify(self, op: str, paused: bool | None) -> None:
        with self.db.tx() as conn:
            if paused is not None:
                conn.execute(
                    "INSERT INTO cluster (key, value) VALUES ('paused', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (Jsonb(paused),),
                )
            conn.execute(
                "SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, json.dumps({"op": op, "from": self.replica}))
            )

    def _unregister(self) -> None:
        with self.db.tx() as conn:
            conn.execute("DELETE FROM replicas WHERE id = %s", (self.replica,))

