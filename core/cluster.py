"""Cluster mode: this replica's place among the schedulers sharing a PostgreSQL store.

Runs beside the engine (core/services.py starts it when the store is PostgreSQL):
- a heartbeat every `lease / 3` s: this replica's registry row (host, pid, version, config
  hash, jobs in flight), its leases renewed, the other replicas listed, the states they
  wrote taken over by the engine, and the intents of replicas that are gone resolved;
- LISTEN/NOTIFY on `vmsh_cluster`: a pause, resume or reload made on any replica (its
  dashboard, `ctl`, the control API) is applied by every replica at once; the paused flag
  is also kept in the `cluster` table, so a replica that starts later starts paused.

When the store cannot be reached, `store_problem` says why (/readyz is then 503, /health
degraded) and the engine claims nothing (`set_claim_refusal`), so nothing is anchored
without a lease. A hung database is seen as one that is down: every call has a deadline
(core/store/postgres/deadline.py), so the heartbeat fails within about one lease. Everything resumes by
itself when the database is back.

Each heartbeat also reads the database's clock (`clock_timestamp()`) between two readings of
this replica's wall clock. A replica whose clock is surely more than MAX_CLOCK_OFFSET off
(`clock_decision`) leaves the claim rotation until it is back within: the tokens it would
have signed would be refused here as clock skew (paid for and thrown away), and its
receipts' times would be wrong. /health is degraded with the reason (`clock_problem`).
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from core.replicas import ClockReading, ReplicaInfo
from core.store.postgres.database import LIVENESS_LEASES, NOTIFY_CHANNEL, Database

if TYPE_CHECKING:
    from core.runtime import Runtime

# Seconds this replica's wall clock may be off the database's and still claim jobs. Well
# inside what a TSA token's time is checked against (rfc3161 maxClockSkew, 300 s; the
# embedded TSA's 5 s): a replica past it would pay for tokens it then refuses.
MAX_CLOCK_OFFSET = 2.0



def clock_decision(reading: ClockReading, *, refusing: bool = False, bound: float = MAX_CLOCK_OFFSET) -> str | None:
    """Why this replica must claim no jobs, by its clock (None: it may claim).

    Out of the rotation only when its clock is surely off: |offset| - uncertainty > bound.
    Back in only when it is surely within: |offset| + uncertainty <= bound; a reading in
    between (a slow round trip) keeps it where it was (`refusing`)."""
    off = abs(reading.offset)
    if refusing:
        surely_within = off + reading.uncertainty <= bound
        return None if surely_within else _clock_reason(reading, bound)
    return _clock_reason(reading, bound) if off - reading.uncertainty > bound else None


def _clock_reason(reading: ClockReading, bound: float) -> str:
    return (
        f"clock is {reading.offset:+.1f} s off the database's (\u00b1{reading.uncertainty:.3f} s; "
        f"at most {bound:g} s allowed)"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Beat:
    """What one heartbeat read: the registry, and this replica's clock against the database's."""

    replicas: list[ReplicaInfo]
    clock: ClockReading


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
        self.clock: ClockReading | None = None  # the last heartbeat's reading
        self.clock_problem: str | None = None  # why this replica claims nothing, by its clock
        self._failures = 0  # store failures so far: a sync started before one clears nothing
        self._sync: asyncio.Task[None] | None = None
        self._replicas: list[ReplicaInfo] = []
        self._applying = False  # a change that came from another replica: not sent back
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe = runtime.bus.subscribe(self._on_event)
        self._pending_notify: set[asyncio.Task[None]] = set()

    # ----- what others read -----------------------------------------------------------

    def replicas(self) -> list[ReplicaInfo]:
        """The registry as of the last heartbeat; this replica's row says what it knows now."""
        return [self._this(r) if r.this else r for r in self._replicas]

    def claim_refusal(self) -> str | None:
        """Why this replica claims no jobs now (None: it claims): its store, its clock."""
        reasons = [
            *(["the store does not answer"] if self.store_problem is not None else []),
            *([self.clock_problem] if self.clock_problem is not None else []),
        ]
        return "; ".join(reasons) or None

    def _this(self, row: ReplicaInfo) -> ReplicaInfo:
        return dataclasses.replace(
            row, clock_offset=None if self.clock is None else self.clock.offset, refusal=self.claim_refusal()
        )

    # ----- running ----------------------------------------------------------------------

    async def start(self) -> None:
        """Register, take the cluster's paused flag, then beat and listen in the background."""
        try:
            # Before the engine's first pass: a replica whose clock is off claims nothing.
            paused, clock = await asyncio.to_thread(self._register)
            self._clock_read(clock)
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
        tasks = [*self._tasks, *([self._sync] if self._sync is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._pending_notify, return_exceptions=True)
        try:
            await asyncio.to_thread(self._unregister)
        except Exception:
            pass  # its heartbeat simply ages out

    async def _beat(self) -> None:
        engine = self.runtime.engine
        while not self._stop.is_set():
            try:
                # On a thread of its own, never behind the engine's writer: whether the store
                # answers is known within one deadline (core/store/postgres/deadline.py).
                beat = await asyncio.to_thread(self._heartbeat, len(engine.in_flight()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
            else:
                self._replicas = beat.replicas
                self._clock_read(beat.clock)
                # The engine's part (leases, states, orphans) waits on its writer: in a task,
                # so that a slow one delays no heartbeat; one at a time.
                if self._sync is None or self._sync.done():
                    self._sync = asyncio.get_running_loop().create_task(
                        self._sync_engine(self._failures), name="cluster-sync"
                    )
                self._seen()
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval)
            except TimeoutError:
                pass

    async def _sync_engine(self, failures: int) -> None:
        """Leases renewed, other replicas' states taken, orphaned intents resolved; a store
        problem is cleared once all of that worked with no failure since it started."""
        engine = self.runtime.engine
        try:
            await engine.renew_leases()
            await engine.refresh_from_store()
            if self.clock_problem is None:  # out of the rotation: the others take them over
                await engine.adopt_orphans()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
            return
        if self.store_problem is not None and failures == self._failures:
            self.runtime.log.info("store reachable again", store=self.db.display)
            self.store_problem = self.db.unreachable = None
            self._refuse()
            self._seen()

    def _failed(self, exc: BaseException) -> None:
        problem = describe(exc)
        self._failures += 1
        if self.store_problem is None:
            self.runtime.log.error(
                "store unreachable: not ready, anchoring nothing until it is back", store=self.db.display,
                error=problem,
            )
        self.store_problem = self.db.unreachable = problem
        self._refuse()
        self._seen()

    def _clock_read(self, reading: ClockReading) -> None:
        """A heartbeat's reading of the clocks: leave or rejoin the claim rotation (said once each way)."""
        self.clock = reading
        problem = clock_decision(reading, refusing=self.clock_problem is not None)
        if (problem is None) == (self.clock_problem is None):
            return  # no change (the reason keeps the reading that started it)
        if problem is not None:
            self.runtime.log.error(
                "clock off the database's: claiming no jobs until it is back within the bound",
                offset=round(reading.offset, 3), uncertainty=round(reading.uncertainty, 3), bound=MAX_CLOCK_OFFSET,
            )
        else:
            self.runtime.log.info(
                "clock back within the bound of the database's: claiming jobs again",
                offset=round(reading.offset, 3), uncertainty=round(reading.uncertainty, 3), bound=MAX_CLOCK_OFFSET,
            )
        self.clock_problem = problem
        self._refuse()

    def _refuse(self) -> None:
        self.runtime.engine.set_claim_refusal(self.claim_refusal())

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
        # Its clock's offset and why it claims nothing, for every replica's view (and the
        # claim spread, which leaves out the replicas that claim nothing: PgStateStore.claim).
        conn.execute(
            "INSERT INTO replicas (id, host, pid, version, config_hash, started_at, heartbeat_at, in_flight, "
            "clock_offset, claim_refusal) VALUES (%s, %s, %s, %s, %s, to_timestamp(%s), now(), %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), config_hash = excluded.config_hash, "
            "in_flight = excluded.in_flight, clock_offset = excluded.clock_offset, "
            "claim_refusal = excluded.claim_refusal",
            (self.replica, self.host, self.pid, __version__, self.runtime.engine.config_hash,
             self.started_at, in_flight, None if self.clock is None else self.clock.offset, self.claim_refusal()),
        )

    @staticmethod
    def _read_clock(conn: psycopg.Connection[Any]) -> ClockReading:
        """The database's clock between two readings of ours (time.time(): the clock the
        backends check tokens against)."""
        before = time.time()
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
        after = time.time()
        assert row is not None
        return ClockReading.measure(before, float(row[0]), after)

    def _register(self) -> tuple[bool, ClockReading]:
        with self.db.tx() as conn:
            clock = self._read_clock(conn)
            self._beat_row(conn, 0)
            row = conn.execute("SELECT value FROM cluster WHERE key = 'paused'").fetchone()
            return bool(row and row[0]), clock

    def _heartbeat(self, in_flight: int) -> Beat:
        with self.db.tx() as conn:
            clock = self._read_clock(conn)
            self._beat_row(conn, in_flight)
            # Rows of replicas gone for long (10 liveness windows) are dropped.
            conn.execute(
                "DELETE FROM replicas WHERE heartbeat_at < now() - make_interval(secs => %s)", (self.liveness * 10,)
            )
            rows = conn.execute(
                "SELECT id, host, pid, version, config_hash, in_flight, extract(epoch FROM heartbeat_at), "
                "extract(epoch FROM started_at), heartbeat_at > now() - make_interval(secs => %s), "
                "clock_offset, claim_refusal FROM replicas ORDER BY started_at, id",
                (self.liveness,),
            ).fetchall()
        replicas = [
            ReplicaInfo(
                id=r[0], host=r[1], pid=int(r[2]), version=r[3], config_hash=r[4], in_flight=int(r[5]),
                heartbeat_at=float(r[6]), started_at=float(r[7]), alive=bool(r[8]), this=r[0] == self.replica,
                clock_offset=None if r[9] is None else float(r[9]), refusal=r[10],
            )
            for r in rows
        ]
        return Beat(replicas, clock)

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

