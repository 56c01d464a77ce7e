"""The Scheduler: a due-time heap over (namespace, cadence) jobs, anchoring what is due.

Rules (docs/architecture.md has the why):
- A job is due at `last_anchored + every`, or at `next_attempt` after a failure.
- The loop sleeps until the earliest due time (or `tick`, or a wake-up), never polls.
- A job in flight is never started again; a pass takes only what is due and idle.
- After a restart an overdue job is due once: its due time is in the past, it runs, and
  the next due time counts from that anchor.
- Jobs due in one pass for the same target go to the backend in one call, over the
  RFC 6962 tree of their roots; a group of one anchors the batch root itself.
- Order of durable writes per group: intent, backend call, attestation into the intent,
  receipts, state, intent removed. A crash anywhere is resolved at the next start.
- Those writes run on one writer thread (core.writer), never on the loop; receipts of a
  pass are committed in chunks (`Claims.commit_chunk`: the file store fsyncs one folder
  per chunk; PostgreSQL commits an anchor in one transaction).
- A failed write is a `storage` failure of the jobs concerned: logged, counted, backed
  off, retried; an attestation already obtained is kept and reused, never paid twice.
- A job whose target the guard refuses (a `btc:` target, a chain id mismatch) is
  *disabled*: never scheduled, never retried, no backoff; the guard is asked at start
  and at each `apply`, which enables it again once its target is accepted.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from core import __version__, merkle
from core.anchors.base import Attestation, Backend
from core.backoff import BackoffPolicy
from core.clock import Clock, SteadyClock
from core.errors import AnchorError, ErrorKind, StorageError, classify, describe
from core.events import (
    AnchorFailed,
    AnchorStarted,
    AnchorSucceeded,
    BackoffChanged,
    ConfigApplied,
    EventBus,
    JobSkipped,
    Paused,
    ReceiptWritten,
    StorageFailed,
    TickCompleted,
    TokenDiscarded,
)
from core.flight import Flight
from core.jobs import JobKey, JobSpec, JobState, Row, safe_name
from core.observe.logs import Log
from core.receipts import Receipt, build_receipt
from core.sources import Batch, SourceError, latest_batch, prefetch
from core.status import JobStatus, job_status
from core.store import Claims, Intent, JournalRepo, ReceiptRepo, StateRepo, Superseded, Written
from core.store.files.claims import FileClaims
from core.writer import DiskWriter

_T = TypeVar("_T")
BackendFor = Callable[[str], Backend]
WRITE_CHUNK = 128  # receipts per writer call: the loop runs between chunks of a big pass
PASS_SLICE = 500  # due jobs looked at between two turns of the loop in a scheduling pass
BATCH_READ_WAIT = 1.0  # seconds a pass waits for its batch folders to be read
BATCH_READ_STALL = 10.0  # seconds a folder may not answer before its jobs fail for it
# A job in flight longer than STUCK_TIMEOUTS x its backend's time limit is stuck.
STUCK_TIMEOUTS = 4
STUCK_MIN_SECONDS = 60.0
DEFAULT_BACKEND_TIMEOUT = 30.0
# Returns the reason a target must not be used (e.g. chain id mismatch), or None.
TargetGuard = Callable[[str], "str | None"]


@dataclass(frozen=True, slots=True)
class JobView:
    """An immutable snapshot of one job for the dashboard, health and metrics."""

    spec: JobSpec
    state: JobState
    due_at: float | None
    in_flight: bool
    status: JobStatus  # core.status: ok | due | anchoring | backing_off | stale | paused | error | disabled
    disabled: str | None = None  # why the job cannot run (its target is refused), else None

    @property
    def key(self) -> JobKey:
        return self.spec.key


@dataclass
class _Due:
    spec: JobSpec
    batch: Batch
    forced: bool


@dataclass(eq=False)
class _Held:
    """An attestation obtained whose receipts are not all written yet (storage failed)."""

    intent: Intent
    attestation: Attestation
    durable: bool  # the attestation is in the intent file on disk


def backend_timeout(backend: Backend) -> float:
    """The longest a backend says one call may take (its own settings), else a default."""
    for value in (
        getattr(backend, "call_timeout", None),
        getattr(backend, "receipt_timeout", None),
        getattr(getattr(backend, "settings", None), "timeout", None),
    ):
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return DEFAULT_BACKEND_TIMEOUT


def _journalled_note(intent: Intent) -> Callable[[dict[str, Any]], None]:
    """`intent.note` whose write failures are storage errors (the backend sent nothing yet)."""

    def note(facts: dict[str, Any]) -> None:
        try:
            intent.note(facts)
        except OSError as exc:
            raise StorageError("journal", str(intent.path), exc) from exc

    return note


def _chunks(items: list[_T], size: int) -> list[list[_T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Scheduler:
    def __init__(
        self,
        *,
        jobs: Iterable[JobSpec],
        clock: Clock,
        bus: EventBus,
        backend_for: BackendFor,
        state_store: StateRepo,
        journal: JournalRepo,
        receipts: ReceiptRepo,
        claims: Claims | None = None,  # default: a lone scheduler's (core/file_claims.py)
        lease: float = 15.0,
        policy: BackoffPolicy | None = None,
        concurrency: int = 8,
        tick: float = 60.0,
        stale_factor: float = 2.0,
        config_hash: str = "",
        target_guard: TargetGuard | None = None,
        read_batch: Callable[[Path], Batch] = latest_batch,
        log: Log | None = None,
        writer: DiskWriter | None = None,
    ) -> None:
        # Every time the engine keeps (due times, state, receipts, events) is on one steady
        # timeline: a wall-clock step while running moves no cadence and no staleness.
        self.clock = SteadyClock(clock)
        self.bus = bus
        self.log = log or Log(bus, clock)
        self.policy = policy or BackoffPolicy()
        self.tick = tick
        self.stale_factor = stale_factor
        self.config_hash = config_hash
        self._backend_for = backend_for
        self._state_store = state_store
        self._journal = journal
        self._receipts = receipts
        # Several schedulers on one store: a job is anchored only under this replica's lease
        # (claimed in _anchor_group), and its state comes from the store at claim time.
        self._claims: Claims = claims if claims is not None else FileClaims(receipts)
        self.lease = lease
        self._open: dict[str, Intent] = {}  # intents opened or adopted here, not yet closed
        self._store_cursor: Any = None  # refresh_from_store's position in the store's changes
        self._guard = target_guard or (lambda target: None)
        self._read_batch = read_batch
        self._concurrency = asyncio.Semaphore(max(1, concurrency))

        self._specs: dict[JobKey, JobSpec] = {}
        self._state: dict[JobKey, JobState] = state_store.load()
        self._due: dict[JobKey, float] = {}
        self._heap: list[tuple[float, int, JobKey]] = []
        self._seq = itertools.count()
        self._flight = Flight()  # the one way in and out of flight (core/flight.py)
        self._forced: set[JobKey] = set()
        self._prefetched: set[str] | None = None  # the batch folders read before this pass
        self._unanswered: dict[str, float] = {}  # of those, the ones that did not answer
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._closing: list[Intent] = []  # intents to remove once state is saved
        self._save_task: asyncio.Task[None] | None = None
        self._save_wanted = False
        self._save_retry: asyncio.TimerHandle | None = None
        self._save_failures = 0
        self._save_error: StorageError | None = None
        self._close_error: StorageError | None = None
        self._writer = writer or DiskWriter()
        self._held: dict[JobKey, _Held] = {}  # jobs whose attestation waits for its receipts
        self._storage_failing: dict[JobKey, str] = {}  # jobs whose last failure was storage
        self._disabled: dict[JobKey, str] = {}  # jobs whose target is refused: the reason
        self._enabled_at: dict[JobKey, float] = {}  # a reload added or enabled the job then
        # Why this replica must not claim jobs now (core/cluster.py: its clock is off the
        # database's, or the database cannot confirm a lease), else None.
        self.claim_refusal: str | None = None
        self.paused = False
        self.started_at = self.clock.now()
        self.last_tick: float | None = None
        self._install(list(jobs))

    # ----- job table -------------------------------------------------------------------

    def _install(self, specs: list[JobSpec]) -> None:
        now = self.clock.now()
        for key, state in self._state.items():
            self._state[key] = _not_after(state, now)
        for spec in specs:
            self._specs[spec.key] = spec
            self._state.setdefault(spec.key, JobState())
            self._set_disabled(spec.key, self._guard(spec.target))
            self._schedule(spec.key)
        # State of jobs that are no longer configured is dropped.
        for key in [k for k in self._state if k not in self._specs]:
            del self._state[key]

    def _natural_due(self, key: JobKey) -> float:
        spec, state = self._specs[key], self._state[key]
        if state.next_attempt is not None:
            return state.next_attempt
        if state.last_anchored_at is None:
            return self.clock.now()
        return state.last_anchored_at + spec.every

    def _set_disabled(self, key: JobKey, reason: str | None) -> bool:
        """Disable `key` for `reason` (its target is refused), or enable it when None.
        A disabled job has no due time and no backoff: it cannot run, so it is not failing.
        Returns True when the job was disabled and is enabled now (it needs scheduling)."""
        before = self._disabled.get(key)
        if not reason:
            if before is None:
                return False
            del self._disabled[key]
            self._enabled_at[key] = self.clock.now()  # its first chance to be current
            self.log.info("job enabled: its target is accepted now", job=str(key), target=self._specs[key].target)
            return True
        self._disabled[key] = reason
        self._due.pop(key, None)
        self._forced.discard(key)
        state = self._state.get(key)
        if state is not None and (state.failures or state.next_attempt is not None):
            self._state[key] = replace(state, failures=0, backoff_level=0, next_attempt=None)
            if state.backoff_level:
                self.bus.publish(
                    BackoffChanged(
                        at=self.clock.now(), job=key, level=0, max_level=self.policy.max_level, next_attempt=None
                    )
                )
        if before != reason:
            self.log.warning("job disabled", job=str(key), target=self._specs[key].target, reason=reason)
        return False

    @property
    def disabled(self) -> dict[JobKey, str]:
        """The disabled jobs and why (a copy)."""
        return dict(self._disabled)

    def _schedule(self, key: JobKey, when: float | None = None) -> None:
        if key in self._disabled:
            return  # never due: a reload that accepts its target schedules it
        due = self._natural_due(key) if when is None else when
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))
        self._wake.set()

    def next_due(self) -> float | None:
        """The earliest due time of an idle job (stale heap entries are dropped lazily)."""
        heap = self._heap
        while heap:
            due, _, key = heap[0]
            if self._due.get(key) == due and key not in self._flight:
                return due
            heapq.heappop(heap)
        return None

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def jobs(self) -> dict[JobKey, JobSpec]:
        return dict(self._specs)

    def in_flight(self) -> frozenset[JobKey]:
        return self._flight.keys()

    # ----- operator actions ----------------------------------------------------------------

    def force(self, key: JobKey) -> bool:
        """Anchor `key` at the next pass, ignoring due time, backoff and unchanged roots."""
        if key not in self._specs:
            raise KeyError(f"no job {key}")
        if key in self._flight:
            self.log.info("force ignored: anchor already in flight", job=str(key))
            return False
        if key in self._disabled:
            self.log.info("force ignored: job disabled", job=str(key), reason=self._disabled[key])
            return False
        self._forced.add(key)
        self._wake.set()
        return True

    def force_namespace(self, namespace: str) -> int:
        keys = [k for k in self._specs if k.namespace == namespace]
        if not keys:
            raise KeyError(f"no namespace {namespace!r}")
        return sum(self.force(k) for k in keys)

    def requeue(self, key: JobKey, reason: str) -> None:
        """Anchor `key` again as soon as possible (e.g. a reorg dropped its transaction)."""
        if key not in self._specs:
            return
        self._state[key] = replace(self._state[key], last_root=None, next_attempt=None)
        self.log.warning("job queued again", job=str(key), reason=reason)
        if key not in self._flight:
            self._schedule(key, self.clock.now())
        self._request_save()

    def set_claim_refusal(self, reason: str | None) -> None:
        """Shared store: stop claiming jobs for `reason` (None: claim again). Jobs due
        meanwhile are left to the other replicas; nothing in flight is touched."""
        if reason == self.claim_refusal:
            return
        self.claim_refusal = reason
        if reason is None:
            self.log.info("claiming jobs again")
            self._wake.set()
        else:
            self.log.warning("not claiming jobs", reason=reason)

    def pause(self) -> None:
        self._set_paused(True)

    def resume(self) -> None:
        self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        if self.paused != paused:
            self.paused = paused
            self.bus.publish(Paused(at=self.clock.now(), paused=paused))
            self.log.info("scheduling paused" if paused else "scheduling resumed")
            self._wake.set()

    def apply(
        self, specs: Iterable[JobSpec], config_hash: str, target_guard: TargetGuard | None = None
    ) -> ConfigApplied:
        """Switch to a new job table: unchanged jobs keep their state, new ones start fresh."""
        if target_guard is not None:
            self._guard = target_guard
        new = {s.key: s for s in specs}
        added = tuple(k for k in new if k not in self._specs)
        removed = tuple(k for k in self._specs if k not in new)
        changed = tuple(k for k in new if k in self._specs and self._specs[k] != new[k])
        for key in removed:
            del self._specs[key]
            self._due.pop(key, None)
            self._forced.discard(key)
            self._state.pop(key, None)
            self._held.pop(key, None)
            self._storage_failing.pop(key, None)
            self._disabled.pop(key, None)
            self._enabled_at.pop(key, None)
        for key in added + changed:
            self._specs[key] = new[key]
            self._state.setdefault(key, JobState())
        for key in added:
            self._enabled_at[key] = self.clock.now()  # stale counts from here, not the start
        # The guard is asked again for every job: a new config can accept or refuse a
        # target whose job did not change (e.g. a corrected chainId in the target settings).
        enabled = [key for key in new if self._set_disabled(key, self._guard(new[key].target))]
        for key in dict.fromkeys((*added, *changed, *enabled)):
            if key not in self._flight:
                self._schedule(key)
        self.config_hash = config_hash
        event = ConfigApplied(
            at=self.clock.now(), config_hash=config_hash, added=added, removed=removed, changed=changed
        )
        self.bus.publish(event)
        self.log.info(
            "config applied",
            config_hash=config_hash[:12],
            added=[str(k) for k in added],
            removed=[str(k) for k in removed],
            changed=[str(k) for k in changed],
        )
        self._request_save()
        return event

    # ----- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until stop(): recover interrupted anchors, then anchor what is due, forever."""
        await self.recover()
        while not self._stopping:
            self._wake.clear()
            await self._read_due_batches()
            await self._run_due_in_slices()
            now = self.clock.now()
            deadline = now + self.tick
            nxt = self.next_due()
            if nxt is not None and not self.paused:
                deadline = min(deadline, nxt)
            if self._forced and not self._stopping:
                continue
            await self.clock.sleep_until(deadline, self._wake)

    async def run_once(self) -> None:
        """One pass, waiting for every anchor it started (tests and `--once`)."""
        await self._read_due_batches()
        await self._run_due_in_slices()
        await self.settle()

    async def settle(self) -> None:
        while self._tasks:
            await asyncio.gather(*tuple(self._tasks), return_exceptions=True)
        if self._save_task is not None:
            await asyncio.gather(self._save_task, return_exceptions=True)

    async def _read_due_batches(self) -> None:
        """Read the batch files of the jobs due now on a worker thread (core.sources.prefetch):
        a large file or a slow disk must not stall the loop. `_take` then gets each result
        without I/O. A folder is named once per job that will read it (held and disabled
        jobs read nothing), so a folder shared by many namespaces is read once and every
        one of them gets the result; a job that became due meanwhile gets it too (a read on
        the loop takes a fresh prefetch's result), else `_take` reads by itself."""
        if self._read_batch is not latest_batch:
            return  # an injected reader (tests, benches) reads by itself
        now = self.clock.now()
        keys = [k for k in self._forced if k in self._specs and k not in self._flight]
        if not self.paused:
            heap = self._heap
            stack = [0] if heap else []
            while stack:  # the heap's entries due by now, without popping: a pruned walk
                i = stack.pop()
                when, _, key = heap[i]
                if when > now:
                    continue
                if self._due.get(key) == when and key in self._specs and key not in self._flight:
                    keys.append(key)
                stack.extend(c for c in (2 * i + 1, 2 * i + 2) if c < len(heap))
        folders = [
            self._specs[k].source
            for k in dict.fromkeys(keys)
            if k not in self._held and k not in self._disabled
        ]
        self._prefetched = {str(folder) for folder in folders}
        if folders:  # waits BATCH_READ_WAIT at most: a folder that does not answer is left
            self._unanswered = await asyncio.to_thread(prefetch, folders, BATCH_READ_WAIT)
        else:
            self._unanswered = {}
            prefetch(())  # no I/O: only ends the previous pass's hand-off

    def run_due(self) -> int:
        """Start anchoring every job that is due now; returns how many were started."""
        scan = self._due_pass()
        while True:
            try:
                next(scan)
            except StopIteration as done:
                return int(done.value)

    async def _run_due_in_slices(self) -> int:
        """run_due for the running loop: the pass lets the loop run (/livez, the dashboard)
        after every PASS_SLICE jobs, so 10,000 due jobs do not hold it for their whole pass."""
        scan = self._due_pass()
        while True:
            try:
                next(scan)
            except StopIteration as done:
                return int(done.value)
            await asyncio.sleep(0)

    def _due_pass(self) -> Generator[None, None, int]:
        """The pass itself; yields after every PASS_SLICE jobs looked at, returns how many
        were started. Aggregation still spans the whole pass: groups form at its end."""
        started_at = self.clock.now()
        now = started_at
        due: list[_Due] = []
        forced, self._forced = self._forced, set()
        looked = 0
        for key in forced:
            if key in self._specs and key not in self._flight:
                self._take(key, now, forced=True, into=due)
        if not self.paused:
            heap = self._heap
            taken: set[JobKey] = set()  # a job rescheduled at the same time has two entries
            while heap and heap[0][0] <= now:
                when, _, key = heapq.heappop(heap)
                if self._due.get(key) != when or key in self._flight or key in forced or key in taken:
                    continue
                taken.add(key)
                # A reload between slices may have removed it (apply drops its due time,
                # so the check above skips it) or made it in flight (a forced anchor).
                self._take(key, now, forced=False, into=due)
                looked += 1
                if looked % PASS_SLICE == 0:
                    yield
        if looked >= PASS_SLICE:  # the loop ran between slices: a reload may have changed jobs
            due = [d for d in due if self._specs.get(d.spec.key) is d.spec]
        # One backend call per (target, policy): a token is under one policy only.
        groups: dict[tuple[str, str | None], list[_Due]] = {}
        for item in due:
            groups.setdefault((item.spec.target, item.spec.policy_oid), []).append(item)
        for (target, _policy), items in groups.items():
            aboard = set(self._flight.board([item.spec.key for item in items], now))
            items = [item for item in items if item.spec.key in aboard]
            for item in items:
                self._due.pop(item.spec.key, None)
            task = asyncio.get_running_loop().create_task(self._anchor_group(target, items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._prefetched = None  # used by this pass
        self.last_tick = now
        self.bus.publish(TickCompleted(at=now, duration=self.clock.now() - started_at, due=len(due)))
        return len(due)

    def _take(self, key: JobKey, now: float, *, forced: bool, into: list[_Due]) -> None:
        """Decide whether a due job anchors now; failures to read its batch are its alone."""
        spec, state = self._specs[key], self._state[key]
        held = self._held.get(key)
        if held is not None:
            self._retry_held(held)  # its attestation exists: write the receipts, never re-anchor
            return
        if key in self._disabled:
            return  # its target is refused (set by _install / apply): not a failure
        if self._read_batch is latest_batch and self._unread(spec, now, forced=forced):
            return
        try:
            batch = self._read_batch(spec.source)
        except Exception as exc:
            self._fail(spec, exc, duration=0.0)
            return
        if not forced and not spec.anchor_unchanged and batch.root == state.last_root:
            # Nothing new to prove: look again one period from now.
            state.current_at = now
            self.bus.publish(JobSkipped(at=now, job=key, reason="root unchanged"))
            self.log.debug("skipped: root unchanged", job=str(key), root=batch.root)
            self._schedule(key, now + spec.every)
            return
        into.append(_Due(spec, batch, forced))

    def _unread(self, spec: JobSpec, now: float, *, forced: bool) -> bool:
        """Whether the job's batch folder was not read before this pass; if so, it is left
        for later and never read on the loop (a dead mount would stop everything). Named
        too late for the pass's read: the next pass reads it first. Named but not answering:
        looked at again in a second, and failed (backing off, naming the folder) once it
        has not answered for BATCH_READ_STALL seconds or when an operator forced it."""
        if self._prefetched is None:
            return False  # a pass without a read first (run_due): it reads by itself
        source = str(spec.source)
        waited = self._unanswered.get(source)
        if waited is None:
            if source in self._prefetched:
                return False
            if forced:
                self._forced.add(spec.key)
            else:
                self._schedule(spec.key, now)
            return True
        if forced or waited >= BATCH_READ_STALL:
            error = SourceError(
                f"batch folder {source} has not answered for {waited:.0f} s (a hung mount?); "
                "the other namespaces go on, this one is tried again as it backs off"
            )
            self._fail(spec, error, duration=0.0)
        else:
            self._schedule(spec.key, now + min(self.tick, 1.0))
        return True

    # ----- anchoring -------------------------------------------------------------------------
    #
    # Every exception on this path is caught per group: a job never stays in the in-flight
    # set (`_release` in a `finally`), and a failed write of our own files is a `storage`
    # failure like any other: logged as an ERROR naming the step, path and errno, counted,
    # backed off and retried. An attestation obtained but not yet turned into receipts is
    # never asked for again: its jobs are *held* with it and their retry writes the
    # receipts from it (as recovery at start does), so nothing is paid twice.

    async def _anchor_group(self, target: str, items: list[_Due]) -> None:
        owned = {item.spec.key for item in items}
        started = self.clock.now()
        try:
            items = await self._claim(items, owned, started)
            if not items:
                return
            async with self._concurrency:
                await self._anchor(target, items, owned, started)
        except asyncio.CancelledError:
            raise  # shutdown mid-call: the intent stays in the journal for the next start
        except Exception as exc:
            self.log.error(
                "anchoring failed unexpectedly", target=target, error=describe(exc),
                error_type=type(exc).__name__,
            )
            self._fail_owned(items, exc, owned, started)
        finally:
            self._release(owned)

    async def _claim(self, items: list[_Due], owned: set[JobKey], started: float) -> list[_Due]:
        """Lease these jobs; the ones to anchor. A job another replica holds is left to it; a
        claimed job takes the store's state (another replica may have anchored it since this
        one looked) and is anchored only if it is still due. The file store grants all."""
        if self.claim_refusal is not None:  # out of the claim rotation: the others take these
            for item in items:
                self._let_go(item.spec.key, owned, self._soon())
            return []
        forced = {item.spec.key: self._state[item.spec.key] for item in items if item.forced}
        due = {item.spec.key: self._state[item.spec.key] for item in items if not item.forced}
        try:
            got = {}
            if forced:  # an operator asked for these here: never left to another replica
                got.update(await self._write("claim", self._state_store.path, self._claims.claim, forced, self.lease))
            if due:  # when many are due at once, this replica's share of them (the others
                # take theirs, or this one its next pass): the work and its TSA calls spread
                claim = functools.partial(self._claims.claim, spread=True)
                got.update(await self._write("claim", self._state_store.path, claim, due, self.lease))
        except StorageError as exc:
            self._fail_owned(items, exc, owned, started)  # no lease, no anchor: backs off
            return []
        now = self.clock.now()
        kept: list[_Due] = []
        let_go: list[tuple[JobKey, int]] = []
        for item in items:
            key = item.spec.key
            state = got.get(key)
            if state is not None:
                # The store's state as this scheduler knew it (always, with the file store):
                # the decision to anchor stands. Changed by another replica: still due?
                known = state == self._state[key]
                self._state[key] = state
                if known:
                    kept.append(item)
                    continue
                # Another replica changed it since this one decided (it anchored it, maybe a
                # newer root than the batch read for this pass): decided again on the store's
                # state and the latest batch, never on the stale read.
                fresh = await self._reread(item, state, now)
                if fresh is not None:
                    kept.append(fresh)
                    continue
                if state.row is not None and state.row.fence is not None:
                    let_go.append((key, state.row.fence))
            # Held by another replica, or done by one, or left to one: look again at its (new)
            # due time, or soon.
            self._let_go(key, owned, None if state is not None else self._soon())
        if let_go:
            try:
                released = await self._write("claim", self._state_store.path, self._claims.release, let_go)
            except StorageError:
                released = []  # the lease expires on its own
            for key in released:
                state = self._state.get(key)
                if state is not None and state.row is not None:
                    state.row = Row(state.row.version)
        return kept

    async def _reread(self, item: _Due, state: JobState, now: float) -> _Due | None:
        """A claimed job whose store state another replica changed: to anchor (with its
        latest batch, read again) if that batch is not the one anchored and the job is due
        by the store's state (or forced); else None."""
        try:
            batch = await asyncio.to_thread(self._read_batch, item.spec.source)
        except Exception:
            return None  # the next pass reads it again and reports the failure
        if not item.spec.anchor_unchanged and batch.root == state.last_root:
            return None  # anchored by another replica
        if not item.forced and self._natural_due(item.spec.key) > now + 1.0:
            return None  # anchored elsewhere within its period: due later
        return _Due(item.spec, batch, item.forced)

    def _let_go(self, key: JobKey, owned: set[JobKey], when: float | None) -> None:
        """A job taken for this pass that is not anchored here after all: out of flight,
        scheduled at `when` (None: its natural due time) unless a reload removed it."""
        owned.discard(key)
        self._flight.land(key)
        if key in self._specs:
            self._schedule(key, when)

    def _soon(self) -> float:
        """When to look again at a job left to another replica: a third of a lease (a
        heartbeat) from now, or the tick if shorter."""
        return self.clock.now() + min(self.tick, self.lease / 3)

    def holding(self, closing: Sequence[Intent] = ()) -> frozenset[JobKey]:
        """Jobs whose outcome is not settled here yet: in flight, holding an attestation,
        or named by an intent still open (other than `closing`, which the state being saved
        accounts for). Their leases are renewed and never released."""
        jobs = set(self._flight) | set(self._held)
        settled = {intent.id for intent in closing}
        for intent in self._open.values():
            if intent.id not in settled:
                jobs.update(intent.jobs)
        return frozenset(jobs)

    def adopt(self, states: dict[JobKey, JobState]) -> int:
        """States another replica wrote (the shared store): taken over for jobs not
        settled here, and rescheduled from them. Returns how many were taken."""
        holding = self.holding()
        taken = 0
        for key, state in states.items():
            if key not in self._specs or key in holding:
                continue
            self._state[key] = state
            if key not in self._forced:
                self._schedule(key)
            taken += 1
        return taken

    async def renew_leases(self) -> int:
        """Shared store: extend the leases of every job not settled here (raises on a store
        failure: the caller, core/cluster.py, reports it)."""
        return await self._writer.run("claim", self._state_store.path, self._claims.renew, sorted(self.holding()), self.lease)

    async def refresh_from_store(self) -> int:
        """Shared store: take over the states other replicas wrote since the last call."""
        states, self._store_cursor = await self._writer.run(
            "claim", self._state_store.path, self._claims.changed_since, self._store_cursor
        )
        return self.adopt(states)

    async def _anchor(self, target: str, items: list[_Due], owned: set[JobKey], started: float) -> None:
        leaves = [bytes.fromhex(i.batch.root.removeprefix("sha256:")) for i in items]
        if len(leaves) > WRITE_CHUNK:  # 10,000 leaves: ~20 ms of hashing, not on the loop
            digest, proofs = await asyncio.to_thread(_aggregate, leaves)
        else:
            digest, proofs = _aggregate(leaves)
        keys = tuple(i.spec.key for i in items)
        policy = items[0].spec.policy_oid  # one per group (run_due)
        entries = [
            {"job": str(i.spec.key), "batch": {"id": i.batch.id, "root": i.batch.root}, "leaf_index": n}
            | ({"policy": policy} if policy else {})
            for n, i in enumerate(items)
        ]
        try:
            intent = await self._write(
                "journal", self._journal.folder, self._journal.open, target, entries, digest.hex(), started
            )
        except StorageError as exc:
            self._fail_owned(items, exc, owned, started)  # nothing was sent: a plain retry
            return
        self._open[intent.id] = intent
        self.bus.publish(AnchorStarted(at=started, target=target, jobs=keys, digest=digest.hex()))
        self.log.info("anchor started", target=target, jobs=[str(k) for k in keys], digest=digest.hex())
        try:
            backend = self._backend_for(target)
            attestation = await backend.anchor(digest, _journalled_note(intent), policy=policy)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._close_intents([intent])
            self._fail_owned(items, exc, owned, started)
            return
        held = _Held(intent, attestation, durable=False)
        await self._complete(held, list(enumerate(items)), proofs, owned, started)

    async def _complete(
        self,
        held: _Held,
        pairs: list[tuple[int, _Due]],
        proofs: list[list[bytes]],
        owned: set[JobKey],
        started: float,
        *,
        recovered: bool = False,
    ) -> None:
        """Attestation into the intent, then receipts, then the jobs' success.

        `pairs` are (leaf index, job). A job whose receipt cannot be written is held with
        the attestation (its retry resumes here) and fails with kind `storage`.
        `recovered`: receipts written before a crash or a failed write are reused.
        """
        intent, attestation = held.intent, held.attestation
        if not held.durable:
            try:
                await self._write(
                    "journal", intent.path, intent.attested,
                    attestation.data, attestation.status, attestation.confirmations,
                )
            except StorageError as exc:
                if isinstance(exc.__cause__, Superseded):  # another replica resolves it
                    self._superseded(held, pairs, owned, str(exc.__cause__))
                    return
                # Receipts only once the attestation is durable: a crash then still finds it.
                self._hold(held, pairs, exc, owned, started)
                return
            held.durable = True
        now = self.clock.now()
        done = 0
        try:
            for chunk in _chunks(pairs, self._claims.commit_chunk or max(1, len(pairs))):
                await self._commit(held, chunk, proofs, owned, started, now, recovered=recovered)
                done += len(chunk)
                await asyncio.sleep(0)  # let the loop breathe between chunks of a big pass
        except StorageError as exc:
            if isinstance(exc.__cause__, Superseded):
                self._superseded(held, pairs[done:], owned, str(exc.__cause__))
                return
            self._storage_failed(exc)
            self._hold(held, pairs[done:], exc, owned, started)
        if not any(h is held for h in self._held.values()):
            if self._claims.closes_intents:  # removed by the commit's own transaction
                intent.closed = True
                self._open.pop(intent.id, None)
            else:  # removed once the state that accounts for it is saved
                self._closing.append(intent)
        self._request_save()
        self._wake.set()

    async def _commit(
        self,
        held: _Held,
        pairs: list[tuple[int, _Due]],
        proofs: list[list[bytes]],
        owned: set[JobKey],
        started: float,
        now: float,
        *,
        recovered: bool,
    ) -> None:
        """One fenced commit (`Claims.commit`): each job's receipt, new state and lease
        release. A job whose lease passed to another replica gets nothing (the outcome is
        theirs); a job whose receipt alone could not be written is held with the
        attestation and fails with kind `storage`. A failure of the whole call raises."""
        intent, attestation = held.intent, held.attestation
        receipts = [self._receipt(intent, item, index, proofs, attestation, now) for index, item in pairs]
        previous = [self._state.get(item.spec.key, JobState()) for _, item in pairs]
        # A recovered token for a root older than one anchored since (another replica went
        # on while this intent waited): its receipt is written, the job's state stays.
        advance = [not (recovered and _anchored_since(state, intent)) for state in previous]
        states = [
            _succeeded(state, item.batch.root, None, now).to_dict() if moves else None
            for state, (_, item), moves in zip(previous, pairs, advance, strict=True)
        ]
        rows = [state.row for state in previous]
        commit = functools.partial(self._claims.commit, recovered=recovered)
        done = await self._writer.run("receipt", self._receipts.root, commit, receipts, states, rows, intent.id)
        duration = 0.0 if recovered else now - started
        lost: list[JobKey] = []
        failed: list[tuple[int, _Due]] = []
        error: StorageError | None = None
        for (index, item), result, moves in zip(pairs, done.paths, advance, strict=True):
            key = item.spec.key
            if isinstance(result, Path):
                self._held.pop(key, None)
                owned.discard(key)
                self._succeed(item.spec, item.batch, result, now, duration, attestation.status, advance=moves)
                self._state[key].row = done.rows.get(key)
            elif result is None:  # another replica claimed it since: the outcome is theirs
                self._held.pop(key, None)
                lost.append(key)
                self._let_go(key, owned, self._soon())
            else:
                failed.append((index, item))
                error = StorageError("receipt", str(self._receipts.root / safe_name(item.spec.namespace)), result)
        if error is not None:
            self._storage_failed(error)
            self._hold(held, failed, error, owned, started)
        if lost:
            self.log.warning(
                "lease lost before the commit (another replica claimed these jobs): their receipts "
                "are not written from this attestation", intent=intent.id, target=intent.target,
                jobs=[str(k) for k in lost],
            )
            if len(lost) == len(held.intent.entries):
                self._discarded(intent, "lease_lost", len(lost))

    def _discarded(self, intent: Intent, reason: str, jobs: int) -> None:
        """A paid attestation that ends in no receipt: logged and counted, never silent."""
        self.bus.publish(TokenDiscarded(at=self.clock.now(), target=intent.target, intent=intent.id, reason=reason, jobs=jobs))
        self.log.warning("attestation discarded", intent=intent.id, target=intent.target, reason=reason, jobs=jobs)

    def _superseded(self, held: _Held, pairs: list[tuple[int, _Due]], owned: set[JobKey], why: str) -> None:
        """Another replica took this anchor over while this one was unresponsive: its outcome
        is theirs to write. This attestation is dropped (never a second receipt) and the
        jobs go back to the schedule, with the store's state at the next claim."""
        self.log.warning(
            "anchor taken over by another replica (this one went a lease without a heartbeat); "
            "its attestation is not used", intent=held.intent.id, target=held.intent.target,
            jobs=len(pairs), reason=why,
        )
        held.intent.closed = True
        self._open.pop(held.intent.id, None)
        self._discarded(held.intent, "taken_over", len(pairs))
        for _, item in pairs:
            key = item.spec.key
            self._held.pop(key, None)
            if key in owned:
                self._let_go(key, owned, self._soon())
        self._wake.set()

    def _hold(
        self, held: _Held, pairs: list[tuple[int, _Due]], exc: StorageError, owned: set[JobKey], started: float
    ) -> None:
        """Keep the attestation for these jobs and fail them (kind storage): the retry
        writes their receipts from it instead of anchoring again."""
        if not pairs:
            return
        self.log.error(
            "attestation kept; receipts will be written from it once storage works again",
            intent=held.intent.id, target=held.intent.target, jobs=len(pairs),
            attestation_in_journal=held.durable, error=str(exc),
        )
        for _, item in pairs:
            key = item.spec.key
            self._held[key] = held
            if key in owned:
                owned.discard(key)
                self._flight.land(key)
                self._fail(item.spec, exc, duration=self.clock.now() - started)

    def _retry_held(self, held: _Held) -> None:
        """Start writing the receipts of a held attestation (its jobs are due again)."""
        keys = self._flight.board(
            [k for k, h in self._held.items() if h is held and k in self._specs], self.clock.now()
        )
        if not keys:
            return
        for key in keys:
            self._due.pop(key, None)
        task = asyncio.get_running_loop().create_task(self._finish_held(held, keys))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish_held(self, held: _Held, keys: list[JobKey]) -> None:
        owned = set(keys)
        started = self.clock.now()
        try:
            wanted = set(keys)
            pairs, proofs = await self._pairs(held.intent, wanted)
            await self._complete(held, pairs, proofs, owned, started, recovered=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.error(
                "writing the receipts of a kept attestation failed", intent=held.intent.id,
                error=describe(exc), error_type=type(exc).__name__,
            )
            for key in list(owned):
                spec = self._specs.get(key)
                if spec is not None:
                    owned.discard(key)
                    self._flight.land(key)
                    self._fail(spec, exc, duration=0.0)
        finally:
            self._release(owned)

    async def _pairs(
        self, intent: Intent, only: set[JobKey] | None = None
    ) -> tuple[list[tuple[int, _Due]], list[list[bytes]]]:
        """(leaf index, job) of an intent's configured jobs (or of `only`), and all proofs."""
        entries = intent.entries
        leaves = [bytes.fromhex(e["batch"]["root"].removeprefix("sha256:")) for e in entries]
        _, proofs = await asyncio.to_thread(_aggregate, leaves) if len(leaves) > WRITE_CHUNK else _aggregate(leaves)
        pairs: list[tuple[int, _Due]] = []
        for entry in entries:
            key = JobKey.parse(entry["job"])
            spec = self._specs.get(key)
            # Jobs removed from the config since get no receipt: nobody asks for them.
            if spec is not None and (only is None or key in only):
                batch = Batch(id=entry["batch"]["id"], root=entry["batch"]["root"], path=spec.source)
                pairs.append((entry["leaf_index"], _Due(spec, batch, forced=False)))
        return pairs, proofs

    def _fail_owned(self, items: list[_Due], exc: BaseException, owned: set[JobKey], started: float) -> None:
        duration = self.clock.now() - started
        for item in items:
            key = item.spec.key
            if key in owned:
                owned.discard(key)
                self._flight.land(key)
                self._fail(item.spec, exc, duration=duration)
        self._wake.set()

    def _release(self, owned: set[JobKey]) -> None:
        """Whatever happened, these jobs leave the in-flight set and have a due time."""
        for key in owned:
            self._flight.land(key)
            if key in self._specs and key not in self._due:
                self._schedule(key)
        owned.clear()
        self._wake.set()

    def _receipt(
        self,
        intent: Intent,
        item: _Due,
        index: int,
        proofs: list[list[bytes]],
        attestation: Attestation,
        now: float,
    ) -> Receipt:
        spec = item.spec
        return build_receipt(
            namespace=spec.namespace,
            cadence=spec.cadence,
            target=intent.target,
            # The policy the call requested (one per intent), from the journal: a reload since
            # may have changed the job's.
            policy=intent.entries[0].get("policy"),
            batch_id=item.batch.id,
            batch_root=item.batch.root,
            anchored_root="sha256:" + intent.digest,
            proof=proofs[index],
            leaf_index=index,
            tree_size=len(proofs),
            attestation=attestation.data,
            status=attestation.status,
            confirmations_required=spec.confirmations,
            confirmations_observed=attestation.confirmations,
            anchored_at=now,
            version=__version__,
            config_hash=self.config_hash,
        )

    def _succeed(
        self, spec: JobSpec, batch: Batch, path: Path, now: float, duration: float, status: str,
        *, advance: bool = True,
    ) -> None:
        """A receipt is written. `advance` False: it is of a root older than the job's last
        anchor (a recovered token), so the job's state stays as it is."""
        key = spec.key
        previous = self._state.get(key, JobState())
        if advance:
            self._state[key] = _succeeded(previous, batch.root, path, now)
        self._flight.land(key)
        self._storage_failing.pop(key, None)
        self.bus.publish(
            ReceiptWritten(
                at=now, job=key, target=spec.target, path=str(path), root=batch.root, status=status,
                anchored_at=now,
            )
        )
        self.bus.publish(
            AnchorSucceeded(
                at=now, job=key, target=spec.target, root=batch.root, duration=duration, status=status
            )
        )
        self.log.info(
            "anchored", job=str(key), target=spec.target, root=batch.root, batch=batch.id,
            receipt=str(path), status=status,
        )
        if advance and previous.backoff_level:
            self.bus.publish(
                BackoffChanged(at=now, job=key, level=0, max_level=self.policy.max_level, next_attempt=None)
            )
        if key in self._specs:
            self._schedule(key)

    def _fail(self, spec: JobSpec, exc: BaseException, *, duration: float) -> None:
        key = spec.key
        now = self.clock.now()
        kind = classify(exc)
        message = describe(exc)
        previous = self._state.get(key, JobState())
        failures = previous.failures + 1
        level = self.policy.level(failures)
        retry_at = now + self.policy.delay(level, kind)
        self._state[key] = replace(
            previous,
            failures=failures,
            backoff_level=level,
            next_attempt=retry_at,
            last_error_kind=str(kind),
            last_error=message,
            last_attempt_at=now,
        )
        self.bus.publish(
            AnchorFailed(at=now, job=key, target=spec.target, kind=str(kind), message=message, duration=duration)
        )
        self.bus.publish(
            BackoffChanged(
                at=now, job=key, level=level, max_level=self.policy.max_level, next_attempt=retry_at,
                kind=str(kind), message=message,
            )
        )
        fields: dict[str, Any] = {
            "job": str(key), "target": spec.target, "kind": str(kind), "error": message,
            "backoff_level": level, "retry_in": round(retry_at - now, 3),
        }
        if isinstance(exc, StorageError) and exc.kind is ErrorKind.STORAGE:
            self._storage_failing[key] = message
            self.log.error("anchor failed", **fields, op=exc.op, path=exc.path, errno=exc.errno)
        else:
            self._storage_failing.pop(key, None)
            self.log.warning("anchor failed", **fields)
        if key in self._specs:
            self._schedule(key)
        self._request_save()

    # ----- durability -----------------------------------------------------------------------

    async def _write(self, op: str, path: Any, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking write on the writer thread; a failure is reported once, then raised."""
        try:
            return await self._writer.run(op, path, fn, *args)
        except StorageError as exc:
            self._storage_failed(exc)
            raise

    def _storage_failed(self, exc: StorageError) -> None:
        self.bus.publish(
            StorageFailed(at=self.clock.now(), op=exc.op, path=exc.path, errno=exc.errno, message=str(exc))
        )
        self.log.error("storage write failed", op=exc.op, path=exc.path, errno=exc.errno, error=str(exc))

    @property
    def storage_problem(self) -> str | None:
        """Why our own files cannot be written right now (None when they can).

        Set by a failed state save or journal cleanup, or while any job's last failure is
        of kind `storage`; cleared when they succeed. /health is degraded and /readyz
        false meanwhile.
        """
        for error in (self._save_error, self._close_error):
            if error is not None:
                return str(error)
        if self._storage_failing:
            message = next(iter(self._storage_failing.values()))
            n = len(self._storage_failing)
            return message if n == 1 else f"{n} jobs cannot write their files; first: {message}"
        return None

    def stuck_after(self, key: JobKey) -> float:
        """Seconds in flight after which a job counts as stuck: a multiple of its backend's
        own time limit (STUCK_TIMEOUTS x), never under STUCK_MIN_SECONDS."""
        spec = self._specs.get(key)
        timeout = DEFAULT_BACKEND_TIMEOUT
        if spec is not None:
            try:
                timeout = backend_timeout(self._backend_for(spec.target))
            except Exception:
                pass
        return max(STUCK_TIMEOUTS * timeout, STUCK_MIN_SECONDS)

    def is_stuck(self, key: JobKey, now: float | None = None) -> bool:
        """In flight for longer than `stuck_after(key)`: a backend or a disk that hangs."""
        since = self._flight.since(key)
        if since is None:
            return False
        now = self.clock.now() if now is None else now
        return now - since > self.stuck_after(key)

    def stuck(self, now: float | None = None) -> frozenset[JobKey]:
        """Every job `is_stuck` now."""
        now = self.clock.now() if now is None else now
        return frozenset(key for key in self._flight if self.is_stuck(key, now))

    def _request_save(self) -> None:
        """Coalesce state writes: one save covers every change made before it runs."""
        self._save_wanted = True
        if self._save_task is None or self._save_task.done():
            self._save_task = asyncio.get_running_loop().create_task(self._save_soon())

    async def _save_soon(self) -> None:
        await asyncio.sleep(0)
        while self._save_wanted:
            self._save_wanted = False
            if not await self._save():
                return

    async def _save(self) -> bool:
        """Save state off the loop, then close the intents it accounts for; False on failure.

        The intents to close are taken only after the state is safely written, so a
        failed save loses none of them: they are closed after a later save.
        """
        closing = list(self._closing)
        holding = self.holding(closing)
        doc = self._state_store.snapshot(self._state, holding)
        try:
            written = await self._write("state", self._state_store.path, self._state_store.write, doc)
        except StorageError as exc:
            self._save_error = exc
            self._retry_save_later()
            return False
        if written is not None:
            self._saved(written)
        self._save_error = None
        self._save_failures = 0
        await self._close_intents(closing)
        return True

    def _saved(self, written: Written) -> None:
        """A shared store's answer to a save: the new rows of the states it wrote (for the
        states still built on the rows saved), and the store's state for the writes it
        refused: a state built on a row that is no longer current never overwrites a newer
        one; it is replaced by it."""
        based = written.based
        for key, row in written.rows.items():
            state = self._state.get(key)
            if state is not None and state.row is based.get(key):
                state.row = row
        busy = self.holding()
        for key, theirs in written.refused.items():
            state = self._state.get(key)
            if state is None or state.row is not based.get(key) or key in busy:
                continue
            was = based.get(key)
            self.log.warning(
                "stale state write refused by the store; taking the store's state", job=str(key),
                was_fenced=was is not None and was.fence is not None,
            )
            self._state[key] = theirs
            if key in self._specs and key not in self._forced:
                self._schedule(key)

    async def _close_intents(self, intents: list[Intent]) -> None:
        """Remove intents from the journal (one fsync); the ones that fail are retried."""
        if not intents:
            return
        done = {id(i) for i in intents}
        self._closing = [i for i in self._closing if id(i) not in done]
        for intent in intents:
            self._open.pop(intent.id, None)
        failed: Sequence[tuple[Intent, Exception]]
        try:
            failed = await self._write("journal", self._journal.folder, self._journal.close_many, intents)
        except StorageError as exc:
            failed = [(i, exc) for i in intents]
        else:
            if failed:
                intent, cause = failed[0]
                self._storage_failed(StorageError("journal", str(intent.path), cause))
        if failed:
            self._closing.extend(i for i, _ in failed)
            intent, cause = failed[0]
            self._close_error = cause if isinstance(cause, StorageError) else StorageError("journal", str(intent.path), cause)
            self._retry_save_later()
        else:
            self._close_error = None

    def _retry_save_later(self) -> None:
        """After a failed save, try again after a storage backoff (or at the next outcome)."""
        if self._stopping or (self._save_retry is not None and not self._save_retry.cancelled()
                              and self._save_retry.when() > asyncio.get_running_loop().time()):
            return
        self._save_failures += 1
        delay = self.policy.delay(self.policy.level(self._save_failures), ErrorKind.STORAGE)
        self._save_retry = asyncio.get_running_loop().call_later(delay, self._request_save)

    def flush(self) -> None:
        """Save state now (blocking), then drop the intents the saved state accounts for.

        For callers without a loop (the dashboard's last resort); raises StorageError.
        """
        closing = list(self._closing)
        self._writer.call("state", self._state_store.path, self._state_store.save, self._state)
        self._save_error = None
        done = {id(i) for i in closing}
        self._closing = [i for i in self._closing if id(i) not in done]
        failed = self._writer.call("journal", self._journal.folder, self._journal.close_many, closing)
        self._closing.extend(i for i, _ in failed)

    async def recover(self) -> None:
        """Resolve intents left by a crash before anchoring anything new.

        Temp files a kill -9 left are removed first. One intent that cannot be resolved
        never stops the start: it is moved to the journal's quarantine for an operator
        (or, when only our disk failed after its attestation, held and retried).
        """
        # A journal that cannot be read at all stops the start (StorageError naming it):
        # anchoring without knowing what is in flight could pay twice.
        removed, (intents, warnings) = await self._write("recover", self._journal.folder, self._scan)
        if removed:
            self.log.info(
                "removed temp files left by an interrupted write", count=len(removed),
                files=[str(p) for p in removed[:10]],
            )
        await self._resolve_all(intents, warnings)

    async def adopt_orphans(self) -> int:
        """Shared store: resolve the intents of replicas that are gone (their leases
        expired), as `recover` does at start; how many were taken over."""
        intents, warnings = await self._write("recover", self._journal.folder, self._journal.orphans)
        fresh = [i for i in intents if i.id not in self._open]
        if fresh:
            self.log.warning(
                "taking over anchors left by a replica that is gone", intents=[i.id for i in fresh],
                jobs=sorted({str(k) for i in fresh for k in i.jobs}),
            )
            await self._resolve_all(fresh, warnings)
        return len(fresh)

    async def _resolve_all(self, intents: list[Intent], warnings: list[str]) -> None:
        for warning in warnings:
            self.log.warning(warning)
        intents = [i for i in intents if i.id not in self._open]  # under way here: not interrupted
        for intent in intents:
            self._open[intent.id] = intent
            for key, state in intent.leased.items():  # a shared store's, under new fences
                if key in self._specs and key not in self._flight:
                    self._state[key] = state
        for intent in intents:
            # Its jobs are in flight while it is resolved: a pass meanwhile (a replica takes
            # intents over while it runs) must not anchor them a second time.
            # A job already in flight here for another anchor is not taken (Flight.board): it
            # gets nothing from this intent, which is resolved all the same (never left open
            # and adopted by nobody, for a replica that wakes to write its token into).
            keys = self._flight.board([k for k in intent.jobs if k in self._specs], self.clock.now())
            for key in keys:
                self._due.pop(key, None)
            try:
                # Its jobs under this scheduler's lease (a shared store leased them when the
                # intent was adopted; the file store's claims grant them here).
                unleased = {k: self._state[k] for k in keys if k not in intent.leased}
                if unleased:
                    granted = await self._write("claim", self._state_store.path, self._claims.claim, unleased, self.lease)
                    self._state.update(granted)
                await self._resolve(intent, set(keys))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._quarantine(intent, exc)
                self._open.pop(intent.id, None)
            finally:
                self._release(set(keys))
        await self._save()

    def _scan(self) -> tuple[list[Path], tuple[list[Intent], list[str]]]:
        removed = (
            self._state_store.remove_stale_temps()
            + self._journal.remove_stale_temps()
            + self._receipts.remove_stale_temps()
        )
        return removed, self._journal.scan()

    async def _quarantine(self, intent: Intent, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {describe(exc)}"
        try:
            aside = await self._write("journal", intent.path, self._journal.quarantine, intent, reason)
        except StorageError as move_exc:
            self.log.error(
                "an interrupted anchor could not be resolved nor moved aside; it stays in the journal",
                intent=intent.id, path=str(intent.path), error=reason, move_error=str(move_exc),
            )
            return
        self.log.error(
            "an interrupted anchor could not be resolved; moved to quarantine for an operator, "
            "its jobs are due again",
            intent=intent.id, path=str(aside), target=intent.target, error=reason,
        )

    async def _resolve(self, intent: Intent, aboard: set[JobKey]) -> None:
        """Resolve an interrupted intent for its jobs `aboard` (taken into flight for it); a
        job of it already in flight here for another anchor gets nothing from this one."""
        pairs, proofs = await self._pairs(intent, aboard)
        entries = intent.entries
        digest = intent.digest_bytes
        attestation: Attestation | None = None
        if intent.attestation is not None:
            # attested() sets all three; a journal edited to a null status is refused by
            # build_receipt as before ("" is no status either).
            attestation = Attestation(intent.attestation, intent.status or "", intent.confirmations or 0)
        else:
            try:
                attestation = await self._backend_for(intent.target).recover(digest, intent.notes)
            except Exception as exc:
                self.log.error(
                    "could not resolve an interrupted anchor; it stays in the journal",
                    target=intent.target, intent=intent.id, error=describe(exc),
                )
                return
        if attestation is not None and not pairs and any(k in self._specs for k in intent.jobs):
            self.log.warning(
                "an interrupted anchor's jobs were anchored again meanwhile; its attestation is not used",
                target=intent.target, intent=intent.id, jobs=[e["job"] for e in entries],
            )
            self._discarded(intent, "superseded", len(entries))
            await self._close_intents([intent])
            return
        if attestation is None or not pairs:
            self.log.info(
                "interrupted anchor never landed; its jobs are due again",
                target=intent.target, jobs=[e["job"] for e in entries],
            )
            if attestation is None:
                # Its call may have gone out and been paid (a TSA signs, then the process
                # died before journalling the token): nothing can get it back, so it counts.
                self._discarded(intent, "unrecovered", len(entries))
            await self._close_intents([intent])
            return
        held = _Held(intent, attestation, durable=intent.attestation is not None)
        owned = {item.spec.key for _, item in pairs}
        await self._complete(held, pairs, proofs, owned, self.clock.now(), recovered=True)
        written = [str(item.spec.key) for _, item in pairs if item.spec.key not in self._held]
        self.log.info(
            "interrupted anchor recovered from the journal", target=intent.target, jobs=written,
        )

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the loop; let in-flight anchors finish within `grace`, journal the rest."""
        self._stopping = True
        self._wake.set()
        if self._save_retry is not None:
            self._save_retry.cancel()
        if self._tasks:
            done, pending = await asyncio.wait(tuple(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                self.log.warning("stopped with anchors in flight; they stay in the journal", count=len(pending))
        if self._save_task is not None:
            await asyncio.gather(self._save_task, return_exceptions=True)
        await self._save()
        await self._keep_held_attestations()
        self._writer.close()

    async def _keep_held_attestations(self) -> None:
        """A last try to journal attestations whose write failed, so a restart finds them."""
        for held in {id(h): h for h in self._held.values()}.values():
            if held.durable:
                continue
            a = held.attestation
            try:
                await self._write("journal", held.intent.path, held.intent.attested, a.data, a.status, a.confirmations)
                held.durable = True
            except StorageError as exc:
                self.log.error(
                    "stopping with an attestation that could not be journalled: its jobs will be "
                    "anchored again at the next start", intent=held.intent.id, error=str(exc),
                )

    # ----- views -------------------------------------------------------------------------------

    def view(self, key: JobKey, now: float | None = None) -> JobView:
        """`now` is on the engine's own clock (`engine.clock.now()`, the default), like every
        time in the view: a wall-clock reading would be off by any step since the start."""
        spec, state = self._specs[key], self._state[key]
        now = self.clock.now() if now is None else now
        in_flight = key in self._flight
        due_at = self._due.get(key)
        disabled = self._disabled.get(key)
        status = self._status(spec, state, due_at, in_flight, now, disabled=disabled is not None)
        return JobView(spec, state, due_at, in_flight, status, disabled)

    def views(self, now: float | None = None) -> list[JobView]:
        now = self.clock.now() if now is None else now
        return [self.view(k, now) for k in self._specs]

    def _status(
        self, spec: JobSpec, state: JobState, due_at: float | None, in_flight: bool, now: float,
        *, disabled: bool = False,
    ) -> JobStatus:
        """The job's status by the one definition in core.status."""
        return job_status(
            in_flight=in_flight,
            stuck=in_flight and self.is_stuck(spec.key, now),
            disabled=disabled,
            failing=bool(state.failures),
            gave_up=state.last_error_kind == ErrorKind.VALIDATION and state.backoff_level >= self.policy.max_level,
            paused=self.paused,
            # Proven current last, else its first chance to be: the start, or a later reload
            # that added or enabled it (a job that could not run cannot have been current).
            current_since=max(
                state.current_at or state.last_anchored_at or self.started_at,
                self._enabled_at.get(spec.key, self.started_at),
            ),
            period=spec.every,
            stale_factor=self.stale_factor,
            due_at=due_at,
            now=now,
        )


def _succeeded(previous: JobState, root: str, receipt: Path | None, now: float) -> JobState:
    """A job's state once `root` is anchored at `now` with its receipt at `receipt`."""
    return replace(
        previous,
        last_anchored_at=now,
        last_root=root,
        failures=0,
        backoff_level=0,
        next_attempt=None,
        last_error_kind=None,
        last_error=None,
        last_receipt=None if receipt is None else str(receipt),
        last_attempt_at=now,
        current_at=now,
    )


def _anchored_since(state: JobState, intent: Intent) -> bool:
    """The job was anchored (by this replica or another) after `intent` was opened."""
    return state.last_anchored_at is not None and state.last_anchored_at > intent.opened_at


def _not_after(state: JobState, now: float) -> JobState:
    """A loaded state whose past lies in the future was saved before the wall clock went
    back: all its times move back by that much, so its next due time and its staleness do
    not wait for the wall clock to catch up."""
    past = [t for t in (state.last_anchored_at, state.last_attempt_at, state.current_at) if t is not None]
    ahead = max(past, default=now) - now
    if ahead <= 0:
        return state

    def back(t: float | None) -> float | None:
        return None if t is None else t - ahead

    return replace(
        state,
        last_anchored_at=back(state.last_anchored_at),
        last_attempt_at=back(state.last_attempt_at),
        current_at=back(state.current_at),
        next_attempt=back(state.next_attempt),
    )


def _aggregate(leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The digest to anchor and each leaf's audit path; a group of one anchors its root."""
    if len(leaves) == 1:
        return leaves[0], [[]]
    return merkle.tree_and_paths(leaves)


__all__ = ["Scheduler", "JobView", "AnchorError"]
