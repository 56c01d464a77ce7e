"""The Scheduler: a due-time heap over (namespace, cadence) jobs, anchoring what is due.

Rules (docs/architecture.md has the why):
- A job is due at `last_anchored + every`, or at `next_attempt` after a failure.
- The loop sleeps until the earliest due time (or `tick`, or a wake-up), never polls.
- A job in flight is never started again; a pass takes only what is due and idle.
- After a restart an overdue job is due once: its due time is in the past, it runs, and
  the next due time counts from that anchor.
- Jobs due in one pass for the same target go to the backend in one call, over the
  RFC 6962 tree of their roots; a group of one anchors the batch root itself.
- A one-at-a-time target (btc) has one group under way at most: jobs due meanwhile wait
  and are folded into its next group (core/engine/anchoring.py `launch`).
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

The parts (core/engine/): table.py (one JobRecord per job, the due heap, flight),
reads.py (the pass's batch folder reads), anchoring.py (one group: claim, intent,
backend call), leases.py (claims on a shared store), commit.py (attestation -> receipts
-> state), outcomes.py (success, failure, let go, disabled), persistence.py (state saves,
intents closed), recovery.py (the journal at start and a gone replica's intents),
looks.py (a job's view, status and stuck bound), all sharing one Context (context.py).
The Scheduler keeps the loop, the pass, the operator actions and reloads.
"""

from __future__ import annotations

import asyncio
import heapq
import importlib
import importlib.util
import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from core.backoff import BackoffPolicy
from core.clock import Clock, SteadyClock
from core.engine.anchoring import Anchoring
from core.engine.commit import Committer
from core.engine.context import BackendFor, Context
from core.engine.leases import Leases
from core.engine.looks import job_views, stuck_after
from core.engine.outcomes import Outcomes
from core.engine.persistence import Saves
from core.engine.reads import BATCH_READ_BUSY, BATCH_READ_MOST, BATCH_READ_WAIT, BatchReads
from core.engine.record import Due, not_after
from core.engine.recovery import Recovery
from core.engine.redundant import Redundancy
from core.engine.switch import PlannedJobs, TargetGuard, plan_jobs, switch_jobs
from core.engine.table import JobTable
from core.events import ConfigApplied, EventBus, JobSkipped, Paused, TickCompleted
from core.jobs import JobKey, JobSpec, JobState, targets_named
from core.observe.logs import Log
from core.readers import Patience
from core.sources import Batch, latest_batch, prefetch
from core.store import Claims, Intent, JournalRepo, ReceiptRepo, StateRepo
from core.store.files.claims import FileClaims
from core.views import JobView
from core.writer import DiskWriter

PASS_SLICE = 500  # due jobs looked at between two turns of the loop in a scheduling pass
READ_SLICE = 2000  # due jobs whose batch folder is named between two turns of the loop
PREPARE_CHUNK = 4000  # receipt folders made in one call of the store's prepare (a stop waits for one)
WALK_SHARE = 8  # a pruned walk of the heap stops past 1/WALK_SHARE of it: the C scan is cheaper
LOGGED_JOBS = 20  # jobs a "config applied" line names in each of its lists (`named_in_log`)


def _import_backend(scheme: str) -> None:
    """Import a scheme's backend module (core/anchors/<scheme>/backend.py), if it has one:
    off the loop, the build that follows on the loop finds it imported."""
    name = f"core.anchors.{scheme}.backend"
    try:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    except Exception:  # an unknown scheme, a broken install: the anchor that needs it reports it
        pass


async def warm_backends(ctx: Context) -> None:
    """Build each target's backend (a local TSA's key read or made) while the loop waits
    for the first pass's batch reads, not after them; its scheme's backend module is
    imported on a thread first (cryptography and the rest: 0.3-0.5 s of the loop). A
    target that cannot be built is left for the anchor that needs it to report."""
    targets = await asyncio.to_thread(targets_named, list(ctx.table.specs().values()))
    for scheme in sorted({target.partition(":")[0] for target in targets}):
        await asyncio.to_thread(_import_backend, scheme)
    for target in targets:
        await asyncio.sleep(0)
        try:
            ctx.backend_for(target)
        except Exception:  # reported by the anchor that needs it
            pass


async def prepare_receipts(ctx: Context) -> None:
    """Make the configured namespaces' receipt folders that are not there yet, on a thread,
    PREPARE_CHUNK at a time (a stop waits for one chunk at most), while the first pass
    reads its batches: its receipts then cost the disk a file each, not a folder and a
    file, and are written once this ended (`Context.folders_made`). The folders are made
    by mkdir(1) child processes (core/fsutil.py make_folders): made on a thread of this
    process beside the reads, both went 2-3 times slower (two threads of short system
    calls hand the GIL over at each call). Each chunk ends with a flush of the file system
    (the folders' metadata written out while the reads go on; their names are made durable
    by the receipts' own flush all the same). A folder that could not be made here, or a
    chunk whose flush failed, is made by the receipt's own write, which reports the failure."""
    namespaces = sorted({key.namespace for key in ctx.table.records})
    for start in range(0, len(namespaces), PREPARE_CHUNK):
        if ctx.stopping:  # a stop does not wait for 100,000 folders
            return
        try:
            await asyncio.to_thread(ctx.receipts.prepare, namespaces[start : start + PREPARE_CHUNK])
        except OSError:
            return


def named_in_log(keys: tuple[JobKey, ...]) -> list[str]:
    """The jobs a "config applied" line names: all of them, or the first LOGGED_JOBS and how
    many more (a reload of 10,000 namespaces made a line of 10,000 names, formatted on the
    loop and sent to every `ctl tail`; the ConfigApplied event has them all)."""
    named = [str(k) for k in keys[:LOGGED_JOBS]]
    if len(keys) > LOGGED_JOBS:
        named.append(f"... and {len(keys) - LOGGED_JOBS:,} more")
    return named


def due_entries(heap: list[tuple[float, int, JobKey]], now: float) -> list[tuple[float, int, JobKey]]:
    """The entries of a due heap whose time is `now` or earlier, in no particular order. A
    few due among 100,000: a walk down the heap that stops at each entry not due (the
    entries below one not due are not due either), O(due); once that walk has found more
    than 1/WALK_SHARE of the heap, one scan of it in C instead (a first pass: all are due)."""
    most = len(heap) // WALK_SHARE
    found: list[tuple[float, int, JobKey]] = []
    size, stack = len(heap), [0] if heap else []
    while stack:
        at = stack.pop()
        entry = heap[at]
        if entry[0] > now:
            continue
        found.append(entry)
        if len(found) > most:
            return [entry for entry in heap if entry[0] <= now]
        child = 2 * at + 1
        if child < size:
            stack.append(child)
            if child + 1 < size:
                stack.append(child + 1)
    return found


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
        self.stale_factor = stale_factor
        self._backend_for = backend_for
        self._guard = target_guard or (lambda target: None)
        self._read_batch = read_batch
        self._jobs = JobTable(self.clock)  # one JobRecord per job (core/engine/table.py)
        self._flight = self._jobs.flight  # the one way in and out of flight (core/flight.py)
        self._wake = self._jobs.wake
        self._writer = writer or DiskWriter()
        self._ctx = Context(
            clock=self.clock, bus=bus, log=self.log, policy=self.policy, writer=self._writer,
            table=self._jobs, backend_for=backend_for, state_store=state_store, journal=journal,
            receipts=receipts, claims=claims if claims is not None else FileClaims(receipts),
            read_batch=read_batch, lease=lease, tick=tick, config_hash=config_hash,
        )
        self._saves = Saves(self._ctx)
        self._outcomes = Outcomes(self._ctx, self._saves)
        self._committer = Committer(self._ctx, self._saves, self._outcomes)
        self._recovery = Recovery(self._ctx, self._saves, self._outcomes, self._committer)
        self._leases = Leases(self._ctx, self._outcomes)
        self._reads = BatchReads(self._ctx, self._outcomes)  # the pass's batch folder reads
        self._quit_reads = threading.Event()  # set by stop: a pass's read wait ends (an exit waits for it)
        self.redundancy = Redundancy(self._ctx)  # per-target state of redundant jobs
        self._anchoring = Anchoring(
            self._ctx, self._saves, self._outcomes, self._committer, self._leases, concurrency, self.redundancy
        )
        loaded = state_store.load()
        self.paused = False
        self.started_at = self.clock.now()
        self.last_tick: float | None = None
        self._install(list(jobs), loaded)

    # ----- settings the parts share ------------------------------------------------------

    @property
    def tick(self) -> float:
        return self._ctx.tick

    @tick.setter
    def tick(self, value: float) -> None:
        self._ctx.tick = value

    @property
    def lease(self) -> float:
        return self._ctx.lease

    @lease.setter
    def lease(self, value: float) -> None:
        self._ctx.lease = value

    @property
    def claim_refusal(self) -> str | None:
        """Why this replica must not claim jobs now (core/cluster.py: its clock is off the
        database's, or the database cannot confirm a lease), else None."""
        return self._ctx.claim_refusal

    @property
    def config_hash(self) -> str:
        return self._ctx.config_hash

    @config_hash.setter
    def config_hash(self, value: str) -> None:
        self._ctx.config_hash = value

    # ----- job table -------------------------------------------------------------------

    def _install(self, specs: list[JobSpec], loaded: dict[JobKey, JobState]) -> None:
        now = self.clock.now()
        for spec in specs:
            state = loaded.get(spec.key)
            self._jobs.add(spec, None if state is None else not_after(state, now))
            self._outcomes.set_disabled(spec.key, self._guard(spec.target))
        self._jobs.schedule_all((spec.key for spec in specs), now)  # one heapify, as a reload's
        # State of jobs that are no longer configured is dropped (never added).

    @property
    def disabled(self) -> dict[JobKey, str]:
        """The disabled jobs and why (a copy)."""
        return {key: r.disabled for key, r in self._jobs.records.items() if r.disabled is not None}

    def next_due(self) -> float | None:
        """The earliest due time of an idle job (stale heap entries are dropped lazily)."""
        return self._jobs.next_due()

    @property
    def stopping(self) -> bool:
        return self._ctx.stopping

    @property
    def jobs(self) -> dict[JobKey, JobSpec]:
        return self._jobs.specs()

    def in_flight(self) -> frozenset[JobKey]:
        return self._flight.keys()

    # ----- operator actions ----------------------------------------------------------------

    def force(self, key: JobKey) -> bool:
        """Anchor `key` at the next pass, ignoring due time, backoff and unchanged roots."""
        if key not in self._jobs:
            raise KeyError(f"no job {key}")
        if key in self._flight:
            self.log.info("force ignored: anchor already in flight", job=str(key))
            return False
        disabled = self._jobs[key].disabled
        if disabled is not None:
            self.log.info("force ignored: job disabled", job=str(key), reason=disabled)
            return False
        self._jobs.forced.add(key)
        self._wake.set()
        return True

    def force_namespace(self, namespace: str) -> int:
        keys = [k for k in self._jobs if k.namespace == namespace]
        if not keys:
            raise KeyError(f"no namespace {namespace!r}")
        return sum(self.force(k) for k in keys)

    def requeue(self, key: JobKey, reason: str) -> None:
        """Anchor `key` again as soon as possible (e.g. a reorg dropped its transaction)."""
        record = self._jobs.get(key)
        if record is None:
            return
        record.state = replace(record.state, last_root=None, next_attempt=None)
        self.log.warning("job queued again", job=str(key), reason=reason)
        if key not in self._flight:
            self._jobs.schedule(key, self.clock.now())
        self._saves.request()

    def set_claim_refusal(self, reason: str | None) -> None:
        """Shared store: stop claiming jobs for `reason` (None: claim again). Jobs due
        meanwhile are left to the other replicas; nothing in flight is touched."""
        if reason == self.claim_refusal:
            return
        self._ctx.claim_refusal = reason
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
        self, jobs: Iterable[JobSpec] | PlannedJobs, config_hash: str, target_guard: TargetGuard | None = None
    ) -> ConfigApplied:
        """Switch to a new job table (`jobs`: its specs, or their plan: core/engine/switch.py):
        unchanged jobs keep their state, new ones start fresh."""
        if target_guard is not None:
            self._guard = target_guard
        planned = jobs if isinstance(jobs, PlannedJobs) else plan_jobs(jobs)
        now = self.clock.now()  # read once: 10,000 jobs added read it 20,000 times on the loop
        switched = switch_jobs(self._jobs, self._outcomes, planned, self._guard, now)
        added, removed, changed = switched.added, switched.removed, switched.changed
        self.config_hash = config_hash
        event = ConfigApplied(at=now, config_hash=config_hash, added=added, removed=removed, changed=changed)
        self.bus.publish(event)
        self.log.info(
            "config applied",
            config_hash=config_hash[:12],
            added=named_in_log(added),
            removed=named_in_log(removed),
            changed=named_in_log(changed),
        )
        self._saves.request()
        return event

    # ----- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until stop(): recover interrupted anchors, then anchor what is due, forever.
        (The GIL switch interval is the program's, set at its entry: cli/main.py.)"""
        warming = self._ctx.spawn(warm_backends(self._ctx))
        self._ctx.receipt_folders = self._ctx.spawn(prepare_receipts(self._ctx))
        await self.recover()
        while not self.stopping:
            self._wake.clear()
            await self._read_due_batches()
            if self.stopping:  # stop came during the reads: nothing new is started
                break
            if not warming.done():  # the first pass: its backends' modules imported off the loop first
                await asyncio.wait([warming])
            await self._run_due_in_slices()
            now = self.clock.now()
            deadline = now + self.tick
            nxt = self.next_due()
            if nxt is not None and not self.paused:
                deadline = min(deadline, nxt)
            if self._jobs.forced and not self.stopping:
                continue
            await self.clock.sleep_until(deadline, self._wake)

    async def run_once(self) -> None:
        """One pass, waiting for every anchor it started (tests and `--once`)."""
        await self._read_due_batches()
        await self._run_due_in_slices()
        await self.settle()

    async def settle(self) -> None:
        while self._ctx.tasks:
            await asyncio.gather(*tuple(self._ctx.tasks), return_exceptions=True)
        await self._saves.wait()

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
        jobs = self._jobs
        due: list[tuple[float | None, JobKey]] = [(None, k) for k in jobs.forced]
        heap = jobs.heap
        if not self.paused and heap and heap[0][0] <= now:  # its entries due by now, without popping
            due += [(when, key) for when, _, key in due_entries(heap, now)]
        named: dict[JobKey, Path] = {}  # one per job that will read it
        records, flight = jobs.records, self._flight
        for start in range(0, len(due), READ_SLICE):  # the loop turns between slices
            if start:
                await asyncio.sleep(0)
            for when, key in due[start:start + READ_SLICE]:
                record = records.get(key)
                if (record is None or key in flight or key in named or (when is not None and record.due != when)
                        or record.held is not None or record.disabled is not None):
                    continue
                named[key] = record.spec.source
        folders = list(named.values())
        self._reads.prefetched = {str(folder) for folder in folders}
        if folders:  # waits while the reads progress: a folder that does not answer is left
            # Until BATCH_READ_WAIT passes without a folder answering, or `most` in all, or stop.
            most = BATCH_READ_BUSY if len(self._flight) else BATCH_READ_MOST  # see core/engine/reads.py
            waited = Patience(BATCH_READ_WAIT, most, self._quit_reads)
            self._reads.unanswered = await asyncio.to_thread(prefetch, folders, waited)
        else:
            self._reads.unanswered = {}
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
        jobs = self._jobs
        due: list[Due] = []
        forced, jobs.forced = jobs.forced, set()
        looked = 0
        for key in forced:
            if key in jobs and key not in self._flight:
                self._take(key, now, forced=True, into=due)
        if not self.paused:
            heap = jobs.heap
            taken: set[JobKey] = set()  # a job rescheduled at the same time has two entries
            while heap and heap[0][0] <= now:
                when, _, key = heapq.heappop(heap)
                if jobs.due_at(key) != when or key in self._flight or key in forced or key in taken:
                    continue
                taken.add(key)
                # A reload between slices may have removed it (apply drops its due time,
                # so the check above skips it) or made it in flight (a forced anchor).
                self._take(key, now, forced=False, into=due)
                looked += 1
                if looked % PASS_SLICE == 0:
                    yield
        if looked >= PASS_SLICE:  # the loop ran between slices: a reload may have changed jobs
            due = [d for d in due if d.spec.key in jobs and jobs[d.spec.key].spec is d.spec]
        # One backend call per (target, policy): a token is under one policy only.
        groups: dict[tuple[str, str | None], list[Due]] = {}
        for item in due:
            groups.setdefault((item.spec.target, item.spec.policy_oid), []).append(item)
        for (target, _policy), items in groups.items():
            self._anchoring.launch(target, items, now)  # or left waiting: folded into the next
        self._reads.pass_done(now)
        self.last_tick = now
        self.bus.publish(TickCompleted(at=now, duration=self.clock.now() - started_at, due=len(due)))
        return len(due)

    def _take(self, key: JobKey, now: float, *, forced: bool, into: list[Due]) -> None:
        """Decide whether a due job anchors now; failures to read its batch are its alone."""
        record = self._jobs[key]
        spec, state = record.spec, record.state
        held = record.held
        if held is not None:
            self._committer.retry_held(held)  # its attestation exists: write the receipts, never re-anchor
            return
        if record.disabled is not None:
            return  # its target is refused (set by _install / apply): not a failure
        if self._read_batch is latest_batch and self._reads.unread(spec, now, forced=forced):
            return
        try:
            batch = self._read_batch(spec.source)
        except Exception as exc:
            self._outcomes.fail(spec, exc, duration=0.0)
            return
        if not forced and not spec.anchor_unchanged and batch.root == state.last_root:
            # Nothing new to prove: look again one period from now.
            state.current_at = now
            self.bus.publish(JobSkipped(at=now, job=key, reason="root unchanged"))
            self.log.debug("skipped: root unchanged", job=str(key), root=batch.root)
            self._jobs.schedule(key, now + spec.every)
            return
        into.append(Due(spec, batch, forced))

    # ----- shared store (core/engine/leases.py) -------------------------------------------

    def holding(self, closing: Sequence[Intent] = ()) -> frozenset[JobKey]:
        """Jobs whose outcome is not settled here yet: in flight, holding an attestation,
        or named by an intent still open (other than `closing`, which the state being saved
        accounts for). Their leases are renewed and never released."""
        return self._ctx.holding(closing)

    def adopt(self, states: dict[JobKey, JobState]) -> int:
        """States another replica wrote (the shared store): taken over for jobs not
        settled here, and rescheduled from them. Returns how many were taken."""
        return self._leases.adopt(states)

    async def renew_leases(self) -> int:
        """Shared store: extend the leases of every job not settled here (raises on a store
        failure: the caller, core/cluster.py, reports it)."""
        return await self._leases.renew()

    async def refresh_from_store(self) -> int:
        """Shared store: take over the states other replicas wrote since the last call."""
        return await self._leases.refresh()

    # ----- durability -----------------------------------------------------------------------

    @property
    def storage_problem(self) -> str | None:
        """Why our own files cannot be written right now (None when they can).

        Set by a failed state save or journal cleanup, or while any job's last failure is
        of kind `storage`; cleared when they succeed. /health is degraded and /readyz
        false meanwhile.
        """
        problem = self._saves.problem()
        if problem is not None:
            return problem
        failing = self._jobs.storage_failing()
        if failing:
            message = failing[0]
            n = len(failing)
            return message if n == 1 else f"{n} jobs cannot write their files; first: {message}"
        return None

    def stuck_after(self, key: JobKey) -> float:
        """Seconds in flight after which a job counts as stuck (core/engine/looks.py)."""
        return stuck_after(self._backend_for, self._jobs.get(key))

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

    def flush(self) -> None:
        """Save state now (blocking), then drop the intents the saved state accounts for.

        For callers without a loop (the dashboard's last resort); raises StorageError.
        """
        self._saves.flush()

    async def recover(self) -> None:
        """Resolve intents left by a crash before anchoring anything new (core/engine/recovery.py)."""
        await self._recovery.recover()

    async def adopt_orphans(self) -> int:
        """Shared store: resolve the intents of replicas that are gone (their leases
        expired), as `recover` does at start; how many were taken over."""
        return await self._recovery.adopt_orphans()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the loop; let in-flight anchors finish within `grace`, journal the rest."""
        self._ctx.stopping = True
        self._quit_reads.set()
        self._wake.set()
        self._saves.cancel_retry()
        tasks = self._ctx.tasks
        if tasks:
            done, pending = await asyncio.wait(tuple(tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                self.log.warning("stopped with anchors in flight; they stay in the journal", count=len(pending))
        await self._saves.wait()
        await self._saves.save(whole=True)  # the state file alone holds every state after a stop
        await self._recovery.keep_held_attestations()
        self._writer.close()

    # ----- views -------------------------------------------------------------------------------

    def view(self, key: JobKey, now: float | None = None) -> JobView:
        """`now` is on the engine's own clock (`engine.clock.now()`, the default), like every
        time in the view: a wall-clock reading would be off by any step since the start."""
        found = self.views(now, (key,))
        if not found:
            raise KeyError(key)
        return found[0]

    def records(self) -> list[tuple[JobSpec, JobState, str | None]]:
        """Every job's spec, state and why it is disabled (None: enabled), without the
        status a view works out (the metrics' seed: 10,000 jobs in a fifth of the time)."""
        return [(r.spec, r.state, r.disabled) for r in self._jobs.records.values()]

    def job_keys(self) -> list[JobKey]:  # in the table's order
        return list(self._jobs.records)

    def views(self, now: float | None = None, keys: Iterable[JobKey] | None = None) -> list[JobView]:
        """Every job's view (a refresh), or those of `keys` still configured, in their order."""
        now = self.clock.now() if now is None else now
        table = self._jobs.records
        records = table if keys is None else {key: table[key] for key in keys if key in table}
        return job_views(
            records, in_flight=self._flight, stuck=lambda key: self.is_stuck(key, now),
            targets_of=self.redundancy.views, paused=self.paused, started_at=self.started_at,
            max_level=self.policy.max_level, stale_factor=self.stale_factor, now=now,
        )


__all__ = ["Scheduler", "PASS_SLICE"]
