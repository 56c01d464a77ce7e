"""Job views for the control socket at scale (issue 24): built in slices, sent as changes.

The server side (`JobFeed`, owned by core/control_server.py):

- A snapshot's views are computed and encoded CHUNK jobs at a time, the loop free in
  between (10,000 jobs once took 0.6 s of the loop in one go, and /livez with it). Jobs
  that change meanwhile (the bus names them: `jobs_of`) are taken again at the end, in
  one go with the header, the health and the `seq`, so the snapshot is the state at that
  `seq` and `/v1/events?after=seq` loses nothing.
- Clients that follow `/v1/events?views=1` (attached dashboards) get, besides the events,
  `{"seq", "type": "views", "views": [...], "removed": [...], "snapshot": {...}}` lines:
  the views of the jobs the events since the last line changed (at most LINE_VIEWS a
  line), the removed jobs, and the snapshot's other fields (its `views` empty, its
  `counts` zero: the client counts its mirror). `seq` is the last event they cover. Each
  line is encoded once for all clients. A job whose status changes with time alone (due,
  stale, stuck) is found by a sweep every SWEEP seconds (views compared, not encoded).
- Clients apply them to their mirror with `apply_update` (core/remote_control.py): the
  mirror then equals a fresh snapshot's views, without taking one.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import wire
from core.control import Receipts, Snapshot
from core.events import ConfigApplied, Event, LogRecord, Paused, ReceiptWritten
from core.jobs import JobKey
from core.status import Counts, JobStatus
from core.views import JobView

if TYPE_CHECKING:
    from core.runtime_control import RuntimeControl

CHUNK = 250  # views computed and encoded per slice of the loop
LINE_VIEWS = 1000  # views per `views` line (a line is one item of a client's bounded queue)
FLUSH_DELAY = 0.02  # seconds events are gathered before their views line is built
SWEEP = 2.0  # seconds between sweeps for statuses that change with time alone
MAX_RETRIES = 2  # snapshot builds restarted by a pause or reload before one is done at once
FEATURES = ("views", "status", "compact", "log_lines")  # what this server's snapshot says it offers


Encoder = Callable[[JobView, float], bytes]  # a job's JSON in a built table


def jobs_of(event: Event) -> set[JobKey] | None:
    """The jobs whose view `event` may change; None: every job (a pause, a reload).
    ReceiptWritten changes none: the engine announces a commit chunk's receipts before it
    applies their outcomes (core/engine/commit.py), and each job's view changes with the
    AnchorSucceeded that follows (noting both built each view twice, one of them stale)."""
    if isinstance(event, (Paused, ConfigApplied)):
        return None
    if isinstance(event, ReceiptWritten):
        return set()
    job = getattr(event, "job", None)
    if isinstance(job, JobKey):
        return {job}
    jobs = getattr(event, "jobs", None)
    if isinstance(jobs, tuple):
        return {k for k in jobs if isinstance(k, JobKey)}
    return set()


# One encoder each, not one a call as json.dumps makes them with these arguments (a
# snapshot or a status encodes every job's row: 10,000 a request).
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_PRINTED = json.JSONEncoder(ensure_ascii=False)


def dumps(doc: Any) -> bytes:
    return _COMPACT.encode(doc).encode()


class Changes:
    """The jobs changed since some moment: a set of keys, or every job."""

    __slots__ = ("keys", "every")

    def __init__(self) -> None:
        self.keys: set[JobKey] = set()
        self.every = False

    def add(self, keys: set[JobKey] | None) -> None:
        if keys is None:
            self.every = True
            self.keys.clear()
        elif not self.every:
            self.keys |= keys

    def take(self) -> tuple[set[JobKey], bool]:
        keys, every = self.keys, self.every
        self.keys, self.every = set(), False
        return keys, every

    def __bool__(self) -> bool:
        return self.every or bool(self.keys)


def _shown(view: JobView) -> tuple[Any, ...]:
    """What a sweep compares: the parts of a view that change with time alone."""
    return (view.status, view.due_at, view.in_flight)


@dataclass(frozen=True, slots=True)
class Built:
    """A snapshot's job table, built in slices: each view's JSON, in the engine's order."""

    now: float
    views: list[JobView]
    encoded: list[bytes]
    counts: Counts


def counts_of(views: Iterable[JobView]) -> Counts:
    by_status: dict[JobStatus, int] = {}
    in_backoff = total = 0
    for v in views:
        total += 1
        by_status[v.status] = by_status.get(v.status, 0) + 1
        in_backoff += v.state.backoff_level > 0
    return Counts(by_status, in_backoff, total)


class JobFeed:
    """The server side (see the module doc)."""

    def __init__(self, control: RuntimeControl) -> None:
        self.control = control
        self._pending = Changes()  # for the next views line
        self._header = False  # an event changed the snapshot's other fields
        self._watchers: list[Changes] = []  # snapshot builds under way
        self._shown: dict[JobKey, tuple[Any, ...]] = {}  # what the last line or snapshot showed
        self._wake = asyncio.Event()

    # ----- the bus side ------------------------------------------------------------------

    def note(self, event: Event) -> None:
        """On the bus callback: remember which jobs `event` changes (cheap, never waits)."""
        if isinstance(event, LogRecord):
            return
        keys = jobs_of(event)
        for changes in self._watchers:
            changes.add(keys)
        self._pending.add(keys)
        self._header = True
        self._wake.set()

    # ----- views in slices ---------------------------------------------------------------

    async def _views(self, keys: list[JobKey], now: float, encode: Encoder | None = None,
                     limit: int | None = None) -> tuple[list[JobView], list[bytes]]:
        views: list[JobView] = []
        encoded: list[bytes] = []
        for start in range(0, len(keys), CHUNK):
            self._encode(self.control.views_of(keys[start:start + CHUNK], now), now, views, encoded, encode, limit)
            await asyncio.sleep(0)  # the loop serves everything else between slices
        return views, encoded

    def _encode(self, views: list[JobView], now: float, into: list[JobView], encoded: list[bytes],
                encode: Encoder | None = None, limit: int | None = None) -> None:
        """Append `views` to `into` and (the first `limit` of `into` only) their JSON to `encoded`."""
        for view in views:
            into.append(view)
            if limit is None or len(encoded) < limit:
                encoded.append(encode(view, now) if encode is not None else dumps(wire.encode_job_view(view)))
                self._shown[view.key] = _shown(view)

    async def build(self, encode: Encoder | None = None, limit: int | None = None) -> Built:
        """Every job's view at one `now`, in slices; the jobs that changed meanwhile again
        at the end. The caller reads `seq` and the rest without awaiting in between.
        `encode(view, now)`: each job's JSON (default: `wire.encode_job_view`); `limit`:
        only the first that many are encoded (every view is counted all the same)."""
        for attempt in range(MAX_RETRIES + 1):
            changes = Changes()
            self._watchers.append(changes)
            try:
                keys = self.control.job_keys()
                now = self.control.now()
                views, encoded = await self._views(keys, now, encode, limit)
                if changes.every and attempt < MAX_RETRIES:
                    continue  # paused or reloaded meanwhile: every view again
                current = self.control.job_keys()
                if changes.every or current != keys:  # at once: the rare last try, or a reload
                    views, encoded = [], []
                    self._encode(self.control.views_of(current, now), now, views, encoded, encode, limit)
                else:
                    index = {v.key: i for i, v in enumerate(views)}
                    again: list[JobView] = []
                    more: list[bytes] = []
                    self._encode(self.control.views_of(changes.keys, now), now, again, more, encode)
                    for view, data in zip(again, more, strict=True):
                        i = index[view.key]
                        views[i] = view
                        if i < len(encoded):
                            encoded[i] = data
                return Built(now, views, encoded, counts_of(views))
            finally:
                self._watchers.remove(changes)
        raise AssertionError("unreachable")

    # ----- the views lines ---------------------------------------------------------------

    async def serve(self, wanted: Callable[[], bool], seq: Callable[[], int], send: Callable[[bytes], None]) -> None:
        """Build and `send` the views lines while the server runs (its task)."""
        loop = asyncio.get_running_loop()
        swept = loop.time()
        while True:
            try:
                async with asyncio.timeout(SWEEP):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if not wanted():  # no client follows views: nothing to keep
                self._pending.take()
                self._header = False
                continue
            await asyncio.sleep(FLUSH_DELAY)  # gather what comes with it
            if loop.time() - swept >= SWEEP:
                swept = loop.time()
                await self._sweep()
            await self._lines(seq, send)

    async def _sweep(self) -> None:
        keys = self.control.job_keys()
        now = self.control.now()
        for start in range(0, len(keys), CHUNK):
            changed = {v.key for v in self.control.views_of(keys[start:start + CHUNK], now)
                       if self._shown.get(v.key) != _shown(v)}
            if changed:
                self._pending.add(changed)
            await asyncio.sleep(0)

    async def _lines(self, seq: Callable[[], int], send: Callable[[bytes], None]) -> None:
        if not self._pending and not self._header:
            return
        covered = seq()  # the events up to here are in what follows
        keys, every = self._pending.take()
        self._header = False
        current = self.control.job_keys()
        configured = set(current)
        wanted = current if every else [k for k in keys if k in configured]
        removed = [k for k in (self._shown if every else keys) if k not in configured]
        for key in removed:
            self._shown.pop(key, None)
        now = self.control.now()
        _, encoded = await self._views(wanted, now)
        header = self.control.header(now, (), Counts({}, 0, 0))
        parts = [encoded[i:i + LINE_VIEWS] for i in range(0, len(encoded), LINE_VIEWS)] or [[]]
        for i, part in enumerate(parts):
            send(wire.views_line(covered, part, removed if i == len(parts) - 1 else [], header))


class RecentReceipts:
    """A snapshot's newest receipts without listing the store each time (10,000 namespace
    folders: 0.2 s): listed once, then kept up to date from ReceiptWritten (each new file
    read once). `read` runs in a thread. With a shared store (`each_time`: cluster mode)
    other replicas write too: listed every time (an indexed query there)."""

    def __init__(self, control: RuntimeControl, limit: int, *, each_time: bool) -> None:
        self.control = control
        self.limit = limit
        self.each_time = each_time
        self._lock = threading.Lock()
        self._items: Receipts | None = None
        self._new: list[str] = []  # receipts written since the last read, oldest first

    def note(self, event: Event) -> None:
        """On the bus callback."""
        if isinstance(event, ReceiptWritten) and not self.each_time:
            self._new.append(event.path)
            if len(self._new) > 2 * self.limit:
                del self._new[: -self.limit]

    def read(self, limit: int) -> Receipts:
        with self._lock:
            new, self._new = self._new, []
            if self._items is None or self.each_time:
                self._items = self.control.recent_receipts(self.limit)
            elif new:
                fresh = [(Path(p), self.control.receipt(p)) for p in reversed(new[-self.limit:])]
                known = {p for p, _ in fresh}
                self._items = (fresh + [item for item in self._items if item[0] not in known])[: self.limit]
            return self._items[:limit]

    def read_json(self, limit: int) -> list[dict[str, Any]]:
        """A snapshot's `receipts`: [{"path", "receipt"} | {"path", "error"}], newest first."""
        return [{"path": str(path), "error": str(item)} if isinstance(item, Exception)
                else {"path": str(path), "receipt": item.to_json()}
                for path, item in (self.read(limit) if limit else ())]


def snapshot_json(doc: dict[str, Any], header: Snapshot, encoded: list[bytes]) -> bytes:
    """`doc` with its "snapshot": `header` (views and counts aside) with the views spliced in
    as they were encoded, `{"views":[...],"now":...}`, so they are never encoded twice."""
    head = dumps(wire.encode_snapshot(header))  # {"now":N,"views":[],...}
    table = b'{"views":[' + b",".join(encoded) + b"]," + head[1:].replace(b'"views":[],', b"", 1)
    return dumps(doc)[:-1] + b',"snapshot":' + table + b"}\n"


def printed(doc: Any) -> bytes:
    """`doc` as `ctl status --json` prints it (json.dumps' default separators)."""
    return _PRINTED.encode(doc).encode()


async def status_json(feed: JobFeed, ident: dict[str, Any]) -> bytes:
    """`GET /v1/status`: what `ctl status --json` prints, byte for byte, from each job's
    status row (not its whole view: a third of the snapshot's bytes), built in slices;
    `ident`: pid, host, version."""
    built = await feed.build(lambda view, now: printed(wire.encode_status_job(view, now)))
    status, health_body = feed.control.health(built.now, built.views)
    snap = feed.control.header(built.now, (), built.counts)
    doc = {**ident, "paused": snap.paused, "config_hash": snap.config_hash,
           "counts": wire.encode_status_counts(built.counts), "health": {"code": status, **health_body}}
    return await asyncio.to_thread(lambda: printed(doc)[:-1] + b', "jobs": [' + b", ".join(built.encoded) + b"]}\n")


# ----- the client side ---------------------------------------------------------------------


class Mirror:
    """A client's job table: a snapshot, then views lines applied to it."""

    def __init__(self, snap: Snapshot) -> None:
        self._views: dict[JobKey, JobView] = {v.key: v for v in snap.views}
        self._header = snap
        self._snapshot: Snapshot | None = snap

    def apply(self, update: wire.ViewsUpdate) -> None:
        for key in update.removed:
            self._views.pop(key, None)
        for view in update.views:
            self._views[view.key] = view
        self._header = update.header
        self._snapshot = None

    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            views = tuple(self._views.values())
            self._snapshot = replace(self._header, views=views, counts=counts_of(views))
        return self._snapshot


__all__ = ["JobFeed", "Built", "Changes", "Mirror", "RecentReceipts", "snapshot_json", "status_json", "printed", "jobs_of", "counts_of", "FEATURES", "dumps"]
