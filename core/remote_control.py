"""SchedulerControl over the control socket: the dashboard attached to a running scheduler.

`RemoteControl` is the second implementation of core/control.py SchedulerControl (the
first, RuntimeControl, runs the engine in process). It speaks the control API of
docs/control-api.md through core/control_client.py (ctl's client too) and keeps a local mirror: the last
snapshot the server sent (its `now` advanced by the local monotonic clock while connected),
so `snapshot()` and `in_flight()` are synchronous reads, as the panes expect. The mirror
(core/control_feed.py Mirror) follows `/v1/events?views=1`: each `views` line carries the
new views of the jobs that changed, and the events it covers are handed to the
subscribers after it is applied: a pane redrawn on an event sees the state that event
describes, and no snapshot is taken after the first (issue 24; a server without views
lines: events gathered for a short moment, then one snapshot refresh). The first snapshot
is a page of FIRST_PAGE jobs (the dashboard shows rows at once); `start()` takes every job
before following the stream. Receipts are listed from the scheduler's data dir on this
host (read only, with the same ReceiptStore), so the panes get the same listing in both
modes (the first listing excepted: the first page's, the same files).

Commands: `force`, `force_namespace`, `pause` and `resume` answer at once (optimistically:
a job is forced when it is configured and neither in flight nor disabled in the mirror)
and send ONE request in a background task (a namespace too: `{"namespace": ns}`); a refusal or a failure of that request is told through `on_notice`
(the App shows it as a notification). `reload` and `verify` await the server's answer.

The connection: `connect()` takes the first snapshot synchronously (NoScheduler, with a
sentence saying how to start one, when nothing answers). `start()` (on the running loop)
follows the event stream; when the socket goes away `connected` turns False with
`disconnected_since` (monotonic), and the task reconnects with backoff (0.2 s doubling to
2 s), takes a fresh snapshot and follows the stream again. Closing the client never stops
the scheduler: there is no command for that.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from core import wire
from core.control import Receipts, ReloadResult, Snapshot, VerifyOutcome, VerifyResult
from core.control_client import (
    ControlClient,
    ControlFailed,
    ControlRefused,
    ControlUnreachable,
    error_text,
)
from core.control_feed import Mirror
from core.events import Event, LogRecord, ReceiptWritten, TickCompleted
from core.jobs import JobKey
from core.receipts import Receipt, ReceiptError, ReceiptInvalid, parse_iso_utc
from core.store.files.receipts import ReceiptStore

RECEIPTS_CAUGHT_UP = 200  # receipts written while disconnected that are told after a reconnect
GATHER = 0.05  # seconds events are gathered before one snapshot refresh
FIRST_PAGE = 100  # jobs in the first snapshot an attaching dashboard shows (a screen holds fewer; then all)
FIRST_RECEIPTS = 200  # receipts in it (the Receipts pane's first listing, tui/panes/receipts.py)
VIEWS_WAIT = 0.5  # seconds events wait for the views line that covers them, at most
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 2.0


class NoScheduler(Exception):
    """Nothing answers on the control socket; the message says how to start a scheduler."""


def not_running_message(socket_path: Path, why: str) -> str:
    return (
        f"no scheduler answers on {socket_path} ({why})\n"
        "  start one: `vmsh-scheduler --no-ui --config FILE` (or `systemctl start vmsh-scheduler`),\n"
        "  or run the dashboard with its own engine: `vmsh-scheduler --config FILE`"
    )


class RemoteControl:
    """SchedulerControl over `<data_dir>/control.sock` (see the module doc)."""

    def __init__(
        self, socket_path: str | Path, *, data_dir: str | Path | None = None, namespaces: dict[str, Any] | None = None
    ) -> None:
        self.socket_path = Path(socket_path)
        # Receipts are read from the scheduler's data dir (this host, read-only), as the
        # in-process dashboard reads them: the default socket lives in that folder.
        self.data_dir = str(Path(data_dir) if data_dir is not None else self.socket_path.parent)
        self._receipts = ReceiptStore(Path(self.data_dir) / "receipts")
        self._served: Receipts = []  # the snapshot's newest receipts (a database store's)
        self._first_listing: Receipts | None = None  # the first page's, for the first listing
        self.connected = False
        self.disconnected_since: float | None = None  # time.monotonic() when the socket went away
        self.pid: int | None = None
        self.host = ""
        self.version = ""
        self.on_notice: Callable[[str], None] | None = None  # a command's refusal or failure
        self._namespaces = namespaces or {}  # the local config's sections, when one was read
        self._mirror: Mirror | None = None  # the last snapshot, and the views lines since
        self._views_feed = False  # the server sends views lines (core/control_feed.py)
        self.partial = False  # the mirror holds the first page of jobs only (until start() takes all)
        self._fetched_at = 0.0  # time.monotonic() of the snapshot
        self.heard_at = 0.0  # time.monotonic() of the last snapshot or stream line
        self._frozen_at: float | None = None
        self._seq = 0
        # The snapshot's recent log records not yet handed to the subscribers: the Logs pane
        # starts with what the scheduler said before, and after a reconnect gets the lines
        # it missed (newer than the last one it saw).
        self._backlog: list[Event] = []
        self._last_log_at = float("-inf")
        self._receipts_known: set[Path] | None = None  # listed when the socket went away
        self._callbacks: list[Callable[[Event], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._client = ControlClient(self.socket_path)  # the one control-socket client (ctl's too)
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    # ----- connection -------------------------------------------------------------------

    @classmethod
    def connect(cls, socket_path: str | Path, **kwargs: Any) -> RemoteControl:
        """The first snapshot, synchronously (before the dashboard is built); NoScheduler
        when nothing answers on the socket."""
        control = cls(socket_path, **kwargs)
        path = control.socket_path
        if not path.exists():
            raise NoScheduler(not_running_message(path, "no such socket"))
        try:
            with ControlClient(path, timeout=10) as client:
                # The first page: the dashboard shows it at once, the rest follows (start()).
                payload = client.call("GET", "snapshot", params={"limit": str(FIRST_PAGE), "receipts": str(FIRST_RECEIPTS)})
        except (ControlUnreachable, ControlFailed, ControlRefused) as exc:
            raise NoScheduler(not_running_message(path, str(exc))) from exc
        control._take_snapshot(payload, with_logs=True)
        control._first_listing = control._served  # the Receipts pane's first listing: not the data dir's 10,000 folders
        control.connected = True
        return control

    def start(self) -> None:
        """Follow the event stream (and reconnect) on the running loop."""
        self._dispatch([])
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow(), name="remote-control")

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    def _take_snapshot(self, payload: dict[str, Any], *, with_logs: bool = False, snap: Snapshot | None = None) -> None:
        self._mirror = Mirror(snap if snap is not None else wire.decode_snapshot(payload["snapshot"]))
        self._views_feed = "views" in (payload.get("features") or [])
        self.partial = bool(payload.get("partial"))
        self._fetched_at = self.heard_at = time.monotonic()
        self._seq = int(payload.get("seq", self._seq))
        self.pid = payload.get("pid", self.pid)
        self.host = payload.get("host", self.host)
        self.version = payload.get("version", self.version)
        self._served = [_served_receipt(item) for item in payload.get("receipts") or []]
        for body in payload.get("logs") or [] if with_logs else []:
            record = wire.decode_event({"type": "LogRecord", "event": body})
            if record is not None and record.at > self._last_log_at:
                self._backlog.append(record)

    async def _refresh(self, *, with_logs: bool = False) -> None:
        response = await self._client.request("GET", "snapshot")
        response.raise_for_status()
        payload, snap = await asyncio.to_thread(_parse_snapshot, response.content)  # 10,000 jobs: 0.2 s
        self._take_snapshot(payload, with_logs=with_logs, snap=snap)

    async def _follow(self) -> None:
        delay = BACKOFF_FIRST
        while not self._closed:
            try:
                if not self.connected:
                    await self._refresh(with_logs=True)
                    self._set_connected(True)
                    self._dispatch(self._receipts_missed())
                    delay = BACKOFF_FIRST
                elif self.partial:  # the first page is shown: now every job
                    await self._refresh()
                    self._dispatch([])
                await self._stream()
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, OSError, ValueError) as exc:
                self._set_connected(False)
                await self._client.reset()  # a new connection pool after a restart
                del exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    async def _stream(self) -> None:
        """Follow /v1/events until it ends; a resync line takes a fresh snapshot. A views
        line (a server with the views feed) updates the mirror, then the events it covers
        reach the subscribers; without it the mirror is refreshed from a snapshot."""
        pending: list[tuple[int, Event]] = []
        flush: asyncio.Task[None] | None = None
        try:
            async with self._client.stream(self._seq, views=self._views_feed) as response:
                async for line in response.aiter_lines():
                    self.heard_at = time.monotonic()
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    kind = message.get("type")
                    if kind == "resync":
                        await self._refresh(with_logs=True)
                        self._dispatch([e for _, e in pending])
                        pending.clear()
                        continue
                    if kind == "views":
                        self._apply(wire.decode_views_update(message), pending)
                        continue
                    self._seq = int(message.get("seq", self._seq))
                    event = wire.decode_event(message)
                    if event is None:  # a type this version does not know
                        continue
                    pending.append((self._seq, event))
                    if flush is None or flush.done():
                        flush = asyncio.get_running_loop().create_task(self._flush_later(pending))
        finally:
            if flush is not None and not flush.done():
                flush.cancel()
        raise httpx.ReadError("the event stream ended")

    def _apply(self, update: wire.ViewsUpdate, pending: list[tuple[int, Event]]) -> None:
        """A views line: the mirror updated, then the events it covers handed on."""
        assert self._mirror is not None
        self._mirror.apply(update)
        self._fetched_at = time.monotonic()
        covered = [e for seq, e in pending if seq <= update.seq]
        pending[:] = [(seq, e) for seq, e in pending if seq > update.seq]
        if covered:
            self._dispatch(covered)

    async def _flush_later(self, pending: list[tuple[int, Event]]) -> None:
        await asyncio.sleep(GATHER)
        changes = any(not isinstance(e, (LogRecord, TickCompleted)) for _, e in pending)
        if changes and self._views_feed:
            await asyncio.sleep(VIEWS_WAIT)  # their views line hands them on; this, if it is late
        elif changes:
            try:
                await self._refresh()
            except (httpx.HTTPError, OSError, ValueError):
                pass  # the stream notices too; the events still reach the panes
        events = [e for _, e in pending]
        pending.clear()
        self._dispatch(events)

    def _dispatch(self, events: list[Event]) -> None:
        """Hand `events` to the subscribers, after the log lines of the last snapshot they
        have not seen yet."""
        backlog, self._backlog = self._backlog, []
        for event in (*backlog, *events):
            if isinstance(event, LogRecord):
                self._last_log_at = max(self._last_log_at, event.at)
            for callback in list(self._callbacks):
                callback(event)

    def _set_connected(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        if connected:
            self.disconnected_since = None
            self._frozen_at = None
        else:
            self.disconnected_since = self._frozen_at = time.monotonic()
            self._receipts_known = {p for p, _ in self._receipts.recent(RECEIPTS_CAUGHT_UP)}

    def _receipts_missed(self) -> list[Event]:
        """ReceiptWritten for the receipts written while the socket was away (oldest first),
        as the scheduler told them to the dashboards that were attached."""
        known, self._receipts_known = self._receipts_known, None
        if known is None:
            return []
        missed: list[Event] = []
        for path, receipt in reversed(self._receipts.recent(RECEIPTS_CAUGHT_UP)):
            if path in known or not isinstance(receipt, Receipt):
                continue
            anchored_at = parse_iso_utc(receipt.anchored_at).timestamp()
            missed.append(ReceiptWritten(
                at=anchored_at, job=JobKey(receipt.namespace, receipt.cadence), target=receipt.target,
                path=str(path), root=receipt.anchored_root, status=receipt.status, anchored_at=anchored_at,
                tx_hash=str(receipt.attestation.get("tx_hash") or ""), observed=receipt.confirmations.observed,
                required=receipt.confirmations.required,
            ))
        return missed

    def data_age(self, now: float | None = None) -> float:
        """Seconds since the mirror last heard from the scheduler (a snapshot or a line of
        its event stream, where every scheduling pass sends one)."""
        return max(0.0, (time.monotonic() if now is None else now) - self.heard_at)

    # ----- SchedulerControl: reads --------------------------------------------------------

    @property
    def _snapshot(self) -> Snapshot | None:
        return None if self._mirror is None else self._mirror.snapshot()

    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        assert snap is not None, "RemoteControl.connect() takes the first snapshot"
        return replace(snap, now=self._now_of(snap))

    def now(self) -> float:
        snap = self._snapshot
        assert snap is not None, "RemoteControl.connect() takes the first snapshot"
        return self._now_of(snap)

    def _now_of(self, snap: Snapshot) -> float:
        # Connected: the server's steady clock advanced by ours since it answered; while
        # disconnected the mirror stays at the moment the socket went away.
        until = self._frozen_at if self._frozen_at is not None else time.monotonic()
        return snap.now + max(0.0, until - self._fetched_at)

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    def in_flight(self) -> frozenset[JobKey]:
        snap = self._snapshot
        return frozenset(v.key for v in snap.views if v.in_flight) if snap is not None else frozenset()

    def _store_is_files(self) -> bool:
        """The scheduler keeps receipts in its data dir, which this host can read; with a
        database store (cluster mode) they come with each snapshot instead."""
        return self._snapshot is None or self._snapshot.store.kind == "file"

    def recent_receipts(self, limit: int) -> Receipts:
        first, self._first_listing = self._first_listing, None
        if not self._store_is_files():
            return self._served[:limit]
        if first is not None and limit <= FIRST_RECEIPTS:
            return first[:limit]  # the same files, as the scheduler listed them a moment ago
        return self._receipts.recent(limit)

    def job_receipts(self, key: JobKey, limit: int) -> Receipts:
        if not self._store_is_files():
            mine: Receipts = [(p, r) for p, r in self._served
                              if isinstance(r, Receipt) and (r.namespace, r.cadence) == (key.namespace, key.cadence)]
            return mine[:limit]
        return self._receipts.for_job(key.namespace, key.cadence, limit)

    def namespace_config(self, namespace: str) -> Any:
        return self._namespaces.get(namespace)

    # ----- SchedulerControl: commands -------------------------------------------------------

    def force(self, key: JobKey) -> bool:
        views = {v.key: v for v in self.snapshot().views}
        if key not in views:
            raise KeyError(key)
        if views[key].in_flight or views[key].disabled:
            return False
        self._send("force", {"job": str(key)}, f"force {key}")
        return True

    def force_namespace(self, namespace: str) -> tuple[list[JobKey], list[JobKey]]:
        views = [v for v in self.snapshot().views if v.key.namespace == namespace]
        if not views:
            raise KeyError(namespace)
        forced = [v.key for v in views if not (v.in_flight or v.disabled)]
        skipped = [v.key for v in views if v.in_flight or v.disabled]
        if forced:
            self._send("force", {"namespace": namespace}, f"force {namespace}")
        return forced, skipped

    def pause(self) -> None:
        self._send("pause", None, "pause")

    def resume(self) -> None:
        self._send("resume", None, "resume")

    def _send(self, command: str, body: dict[str, Any] | None, what: str) -> None:
        task = asyncio.get_running_loop().create_task(self._command(command, body, what))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _command(self, command: str, body: dict[str, Any] | None, what: str) -> None:
        try:
            response = await self._client.request("POST", command, body)
        except (httpx.HTTPError, OSError) as exc:
            self._notice(f"{what}: not sent, the scheduler is not reachable ({exc or type(exc).__name__})")
            return
        if response.status_code >= 400:
            self._notice(f"{what}: refused: {error_text(response)}")
            return
        skipped = response.json().get("skipped") if command == "force" else None
        if skipped:
            self._notice(f"{what}: not forced: {', '.join(str(s) for s in skipped)}")

    def _notice(self, text: str) -> None:
        if self.on_notice is not None:
            self.on_notice(text)

    async def reload(self) -> ReloadResult:
        try:
            response = await self._client.request("POST", "reload")
        except (httpx.HTTPError, OSError) as exc:
            return ReloadResult(False, False, [f"the scheduler is not reachable: {exc or type(exc).__name__}"], "")
        if response.status_code >= 400:
            return ReloadResult(False, False, [error_text(response)], "")
        return wire.decode_reload_result(response.json())

    async def verify(self, path: str) -> VerifyResult:
        try:
            response = await self._client.request("POST", "verify", {"path": path})
        except (httpx.HTTPError, OSError) as exc:
            return VerifyResult(VerifyOutcome.CANNOT_CHECK, f"the scheduler is not reachable: {exc or type(exc).__name__}")
        if response.status_code >= 400:
            return VerifyResult(VerifyOutcome.CANNOT_CHECK, error_text(response))
        return wire.decode_verify_result(response.json())



def _parse_snapshot(content: bytes) -> tuple[dict[str, Any], Snapshot]:
    payload = json.loads(content)
    return payload, wire.decode_snapshot(payload["snapshot"])


def _served_receipt(item: dict[str, Any]) -> tuple[Path, Receipt | ReceiptError]:
    """One entry of a snapshot's `receipts`: (its name, the receipt or why it is unreadable)."""
    path = Path(str(item.get("path", "?")))
    if "receipt" not in item:
        return path, ReceiptInvalid(str(item.get("error", "unreadable")), path)
    try:
        return path, Receipt.from_json(item["receipt"])
    except ReceiptError as exc:
        return path, exc
