"""The one way the dashboard reaches the scheduler: a snapshot, events, commands.

`SchedulerControl` is the narrow interface every pane and dashboard action uses; no part
of tui/ outside the in-process host (tui/host.py) touches `runtime.engine`. Two classes
implement it: core/runtime_control.py RuntimeControl in process over a Runtime, and
core/remote_control.py RemoteControl over the control socket, so everything here is plain
data (views, counts, strings, a ReloadResult) or an awaitable.

Times in a `Snapshot` (`now`, the views' times, `started_at`, `last_tick`) are all on the
engine's steady clock (core/clock.py SteadyClock): ages and countdowns are differences
between them, never with a wall-clock reading. The replicas' heartbeat times are the
store's wall clock; the steady clock reads wall time as of the engine's start, so their
ages against `now` are right to within any wall-clock step since then.

`store_status(engine, cluster)` is the one rule for whether the store answers: the
snapshot, `/health` and `/readyz` all use it. `clock_status(cluster)` says whether this
replica's clock agrees with the store's (cluster mode); the snapshot carries it in this
replica's row of `replicas` (`clock_offset`, `refusal`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from core.events import Event
from core.jobs import JobKey
from core.replicas import ClusterView, ReplicaInfo
from core.status import Counts
from core.store import Listing
from core.text import printable, redact_urls

if TYPE_CHECKING:
    from core.views import JobView

Receipts = Listing  # (file, its Receipt or the ReceiptError that reading it raised)


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """Where the scheduler keeps its state and receipts, and whether it answers now."""

    kind: str  # "file" | "postgresql"
    ok: bool
    error: str | None = None  # why not ok; never a URL's credentials


FILE_STORE = StoreStatus("file", True)


def store_status(engine: Any, cluster: ClusterView | None) -> StoreStatus:
    """The store's status: with the file store (`cluster` None) the engine's own storage
    problem, else the cluster's (`cluster.kind`, `cluster.store_problem`). The error is
    made printable and any URL in it cut to its origin (a driver's message may quote one)."""
    if cluster is None:
        kind, problem = "file", getattr(engine, "storage_problem", None)
    else:
        kind, problem = str(cluster.kind), cluster.store_problem
    if problem is None:
        return StoreStatus(kind, True)
    return StoreStatus(kind, False, printable(redact_urls(str(problem))))


def side_problems(store: StoreStatus, *, storage: str | None = None, clock: str | None = None) -> tuple[str, ...]:
    """What makes a scheduler degraded though no job shows it (core.status.overall's
    `also`), in the order told: its store does not answer, its own files cannot be written
    (`storage`, the engine's storage problem), its clock is off the store's so it claims
    nothing (`clock`). `/health` passes what it reads of the engine and the cluster; the
    dashboard passes the same from a Snapshot (`snapshot_problems`), so they agree."""
    out = []
    if not store.ok:
        out.append(f"{store.kind} store unreachable: {store.error or 'no reason given'}")
    if storage:
        out.append(f"storage: {storage}")
    if clock:
        out.append(f"claims nothing: {clock}")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ClockStatus:
    """This replica's wall clock against the store's (cluster mode, core/cluster.py)."""

    ok: bool  # False: its clock is off by more than the bound, so it claims no jobs
    offset: float | None = None  # ours minus the database's at the last heartbeat, s (None: not read yet)
    uncertainty: float | None = None  # the reading is good to +/- this, s
    error: str | None = None  # why not ok


def clock_status(cluster: ClusterView | None) -> ClockStatus | None:
    """The clock's status in cluster mode (None with the file store: alone, nothing to agree
    with); `/health` uses it."""
    if cluster is None:
        return None
    reading = getattr(cluster, "clock", None)
    problem = getattr(cluster, "clock_problem", None)
    return ClockStatus(
        ok=problem is None,
        offset=None if reading is None else round(float(reading.offset), 3),
        uncertainty=None if reading is None else round(float(reading.uncertainty), 3),
        error=None if problem is None else printable(str(problem)),
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The job table at one instant, with what the header shows beside it."""

    now: float  # on the engine's steady clock, like every time below
    views: tuple[JobView, ...]
    counts: Counts
    paused: bool
    config_hash: str
    started_at: float
    last_tick: float | None
    tick: float
    max_level: int  # the backoff policy's maximum level
    replicas: tuple[ReplicaInfo, ...] = ()  # the cluster's registry; () with the file store
    store: StoreStatus = FILE_STORE
    storage: str | None = None  # the engine's own files cannot be written: why


def snapshot_problems(snap: Snapshot) -> tuple[str, ...]:
    """`side_problems` as a snapshot tells them: the store, the engine's files, and why the
    replica this snapshot is from claims nothing (its clock; its store is told first)."""
    refusal = next((r.refusal for r in snap.replicas if r.this and r.refusal), None)
    return side_problems(snap.store, storage=snap.storage, clock=refusal)


class ReloadResult:
    """What a reload did: applied (the new config is live) or rejected (`errors`, the old
    one stays), whether anything changed, and the one-line summary shown to the operator."""

    def __init__(self, applied: bool, changed: bool, errors: list[str], summary: str) -> None:
        self.applied = applied
        self.changed = changed
        self.errors = errors
        self.summary = summary

    def __repr__(self) -> str:
        return f"ReloadResult(applied={self.applied}, changed={self.changed}, summary={self.summary!r})"


class VerifyOutcome(StrEnum):
    OK = "OK"
    FAIL = "FAIL"  # the receipt does not prove what it claims, or cannot be read
    CANNOT_CHECK = "CANNOT CHECK"  # something it needs (a trust bundle, a node) is missing here
    PENDING = "PENDING"  # genuine, not final yet (core/verify.py's outcomes)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    outcome: VerifyOutcome
    message: str  # why (FAIL, CANNOT CHECK), or what checked out (OK)
    job: str | None = None  # namespace/cadence the receipt names, when it could be read


class SchedulerControl(Protocol):
    """What the dashboard may read from and ask of a scheduler."""

    def snapshot(self) -> Snapshot: ...

    def now(self) -> float:
        """The scheduler's clock: what a snapshot taken now would give as its `now`."""
        ...

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback` with every event from now on; returns the unsubscribe."""
        ...

    def in_flight(self) -> frozenset[JobKey]: ...

    def force(self, key: JobKey) -> bool:
        """Anchor `key` at the next pass; False when already in flight (or disabled).
        KeyError when `key` is not configured."""
        ...

    def force_namespace(self, namespace: str) -> tuple[list[JobKey], list[JobKey]]:
        """Anchor every job of `namespace` at the next pass, as ONE command (one request
        over the control socket): (forced, skipped: in flight or disabled). KeyError when
        no job of it is configured."""
        ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    async def reload(self) -> ReloadResult:
        """Load the config again (read off the loop); the old one stays on errors."""
        ...

    async def verify(self, path: str) -> VerifyResult: ...

    def recent_receipts(self, limit: int) -> Receipts:
        """The newest `limit` receipts, newest first: (path, parsed file)."""
        ...

    def job_receipts(self, key: JobKey, limit: int) -> Receipts: ...

    def namespace_config(self, namespace: str) -> Any:
        """The namespace's config section (core.config.Namespace), None if unknown."""
        ...
