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
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core import __version__, merkle
from core.anchors.base import Attestation, Backend
from core.backoff import BackoffPolicy
from core.clock import Clock, SteadyClock
from core.errors import AnchorError, ErrorKind, ValidationError, classify, describe
from core.events import (
    AnchorFailed,
    AnchorStarted,
    AnchorSucceeded,
    BackoffChanged,
    ConfigApplied,
    EventBus,
    JobDue,
    JobSkipped,
    Paused,
    ReceiptWritten,
    TickCompleted,
)
from core.jobs import JobKey, JobSpec
from core.observe.logs import Log
from core.receipts import ReceiptStore, build_receipt
from core.sources import Batch, latest_batch
from core.state import IntentJournal, JobState, StateStore
from core.status import JobStatus, job_status

BackendFor = Callable[[str], Backend]
# Returns the reason a target must not be used (e.g. chain id mismatch), or None.
TargetGuard = Callable[[str], "str | None"]


@dataclass(frozen=True, slots=True)
class JobView:
    """An immutable snapshot of one job for the dashboard, health and metrics."""

    spec: JobSpec
    state: JobState
    due_at: float | None
    in_flight: bool
    status: JobStatus  # core.status: ok | due | anchoring | backing_off | stale | paused | error

    @property
    def key(self) -> JobKey:
        return self.spec.key


@dataclass
class _Due:
    spec: JobSpec
    batch: Batch
    forced: bool


class Scheduler:
    def __init__(
        self,
        *,
        jobs: Iterable[JobSpec],
        clock: Clock,
        bus: EventBus,
        backend_for: BackendFor,
        state_store: StateStore,
        journal: IntentJournal,
        receipts: ReceiptStore,
        policy: BackoffPolicy | None = None,
        concurrency: int = 8,
        tick: float = 60.0,
        stale_factor: float = 2.0,
        config_hash: str = "",
        target_guard: TargetGuard | None = None,
        read_batch: Callable[[Path], Batch] = latest_batch,
        log: Log | None = None,
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
        self._guard = target_guard or (lambda target: None)
        self._read_batch = read_batch
        self._concurrency = asyncio.Semaphore(max(1, concurrency))

        self._specs: dict[JobKey, JobSpec] = {}
        self._state: dict[JobKey, JobState] = state_store.load()
        self._due: dict[JobKey, float] = {}
        self._heap: list[tuple[float, int, JobKey]] = []
        self._seq = itertools.count()
        self._in_flight: set[JobKey] = set()
        self._forced: set[JobKey] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._closing: list[Any] = []  # intents to remove once state is saved
        self._save_task: asyncio.Task[None] | None = None
        self.paused = False
        self.started_at = clock.now()
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

    def _schedule(self, key: JobKey, when: float | None = None) -> None:
        due = self._natural_due(key) if when is None else when
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))
        self._wake.set()

    def next_due(self) -> float | None:
        """The earliest due time of an idle job (stale heap entries are dropped lazily)."""
        heap = self._heap
        while heap:
            due, _, key = heap[0]
            if self._due.get(key) == due and key not in self._in_flight:
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
        return frozenset(self._in_flight)

    # ----- operator actions ----------------------------------------------------------------

    def force(self, key: JobKey) -> bool:
        """Anchor `key` at the next pass, ignoring due time, backoff and unchanged roots."""
        if key not in self._specs:
            raise KeyError(f"no job {key}")
        if key in self._in_flight:
            self.log.info("force ignored: anchor already in flight", job=str(key))
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
        if key not in self._in_flight:
            self._schedule(key, self.clock.now())
        self._request_save()

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
        for key in added + changed:
            self._specs[key] = new[key]
            self._state.setdefault(key, JobState())
            if key not in self._in_flight:
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
            self.run_due()
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
        self.run_due()
        await self.settle()

    async def settle(self) -> None:
        while self._tasks:
            await asyncio.gather(*tuple(self._tasks), return_exceptions=True)
        if self._save_task is not None:
            await self._save_task

    def run_due(self) -> int:
        """Start anchoring every job that is due now; returns how many were started."""
        started_at = self.clock.now()
        now = started_at
        due: list[_Due] = []
        forced, self._forced = self._forced, set()
        for key in forced:
            if key in self._specs and key not in self._in_flight:
                self._take(key, now, forced=True, into=due)
        if not self.paused:
            heap = self._heap
            while heap and heap[0][0] <= now:
                when, _, key = heapq.heappop(heap)
                if self._due.get(key) != when or key in self._in_flight or key in forced:
                    continue
                self._take(key, now, forced=False, into=due)
        groups: dict[str, list[_Due]] = {}
        for item in due:
            groups.setdefault(item.spec.target, []).append(item)
        for target, items in groups.items():
            for item in items:
                self._in_flight.add(item.spec.key)
                self._due.pop(item.spec.key, None)
            task = asyncio.get_running_loop().create_task(self._anchor_group(target, items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.last_tick = now
        self.bus.publish(TickCompleted(at=now, duration=self.clock.now() - started_at, due=len(due)))
        return len(due)

    def _take(self, key: JobKey, now: float, *, forced: bool, into: list[_Due]) -> None:
        """Decide whether a due job anchors now; failures to read its batch are its alone."""
        spec, state = self._specs[key], self._state[key]
        self.bus.publish(JobDue(at=now, job=key, forced=forced))
        refusal = self._guard(spec.target)
        if refusal:
            self._fail(spec, ValidationError(refusal), duration=0.0)
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

    # ----- anchoring -------------------------------------------------------------------------

    async def _anchor_group(self, target: str, items: list[_Due]) -> None:
        async with self._concurrency:
            leaves = [bytes.fromhex(i.batch.root.removeprefix("sha256:")) for i in items]
            digest, proofs = _aggregate(leaves)
            keys = tuple(i.spec.key for i in items)
            started = self.clock.now()
            intent = self._journal.open(
                target,
                [
                    {"job": str(i.spec.key), "batch": {"id": i.batch.id, "root": i.batch.root}, "leaf_index": n}
                    for n, i in enumerate(items)
                ],
                digest.hex(),
                started,
            )
            self.bus.publish(AnchorStarted(at=started, target=target, jobs=keys, digest=digest.hex()))
            self.log.info(
                "anchor started", target=target, jobs=[str(k) for k in keys], digest=digest.hex()
            )
            try:
                backend = self._backend_for(target)
                attestation = await backend.anchor(digest, intent.note)
            except asyncio.CancelledError:
                # Shutdown mid-call: the intent stays in the journal for the next start.
                for key in keys:
                    self._in_flight.discard(key)
                raise
            except Exception as exc:
                intent.close()
                duration = self.clock.now() - started
                for item in items:
                    self._in_flight.discard(item.spec.key)
                    self._fail(item.spec, exc, duration=duration)
                self._wake.set()
                return
            intent.attested(attestation.data, attestation.status, attestation.confirmations)
            self._record(target, items, proofs, digest, attestation, started)
            self._closing.append(intent)
            self._request_save()
            self._wake.set()

    def _record(
        self,
        target: str,
        items: list[_Due],
        proofs: list[list[bytes]],
        digest: bytes,
        attestation: Attestation,
        started: float,
    ) -> None:
        """Write one receipt per job and move each job's state forward."""
        now = self.clock.now()
        for index, item in enumerate(items):
            path = self._write_receipt(target, item, index, proofs, digest, attestation, now)
            self._succeed(item.spec, item.batch, path, now, now - started, attestation.status)

    def _write_receipt(
        self,
        target: str,
        item: _Due,
        index: int,
        proofs: list[list[bytes]],
        digest: bytes,
        attestation: Attestation,
        now: float,
    ) -> Path:
        spec = item.spec
        receipt = build_receipt(
            namespace=spec.namespace,
            cadence=spec.cadence,
            target=target,
            batch_id=item.batch.id,
            batch_root=item.batch.root,
            anchored_root="sha256:" + digest.hex(),
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
        return self._receipts.write(receipt)

    def _succeed(
        self, spec: JobSpec, batch: Batch, path: Path, now: float, duration: float, status: str
    ) -> None:
        key = spec.key
        previous = self._state.get(key, JobState())
        self._state[key] = replace(
            previous,
            last_anchored_at=now,
            last_root=batch.root,
            failures=0,
            backoff_level=0,
            next_attempt=None,
            last_error_kind=None,
            last_error=None,
            last_receipt=str(path),
            last_attempt_at=now,
            current_at=now,
        )
        self._in_flight.discard(key)
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
        if previous.backoff_level:
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
        self.log.warning(
            "anchor failed", job=str(key), target=spec.target, kind=str(kind), error=message,
            backoff_level=level, retry_in=round(retry_at - now, 3),
        )
        if key in self._specs:
            self._schedule(key)
        self._request_save()

    # ----- durability -----------------------------------------------------------------------

    def _request_save(self) -> None:
        """Coalesce state writes: one save covers every change made before it runs."""
        if self._save_task is None or self._save_task.done():
            self._save_task = asyncio.get_running_loop().create_task(self._save_soon())

    async def _save_soon(self) -> None:
        await asyncio.sleep(0)
        self.flush()

    def flush(self) -> None:
        """Save state now, then drop the intents that the saved state accounts for."""
        closing, self._closing = self._closing, []
        self._state_store.save(self._state)
        for intent in closing:
            intent.close()

    async def recover(self) -> None:
        """Resolve intents left by a crash before anchoring anything new."""
        intents, warnings = self._journal.scan()
        for warning in warnings:
            self.log.warning(warning)
        for intent in intents:
            await self._resolve(intent)
        self.flush()

    async def _resolve(self, intent: Any) -> None:
        entries = intent.entries
        digest = bytes.fromhex(intent.digest)
        # Jobs removed from the config since the crash get no receipt: nobody asks for them.
        pairs: list[tuple[dict[str, Any], _Due]] = []
        for entry in entries:
            spec = self._specs.get(JobKey.parse(entry["job"]))
            if spec is not None:
                batch = Batch(id=entry["batch"]["id"], root=entry["batch"]["root"], path=spec.source)
                pairs.append((entry, _Due(spec, batch, forced=False)))
        attestation: Attestation | None = None
        if intent.attestation is not None:
            attestation = Attestation(intent.attestation, intent.status, intent.confirmations)
        else:
            try:
                attestation = await self._backend_for(intent.target).recover(digest, intent.notes)
            except Exception as exc:
                self.log.error(
                    "could not resolve an interrupted anchor; it stays in the journal",
                    target=intent.target, intent=intent.id, error=describe(exc),
                )
                return
        if attestation is None or not pairs:
            self.log.info(
                "interrupted anchor never landed; its jobs are due again",
                target=intent.target, jobs=[e["job"] for e in entries],
            )
            intent.close()
            return
        leaves = [bytes.fromhex(e["batch"]["root"].removeprefix("sha256:")) for e in entries]
        _, proofs = _aggregate(leaves)
        anchored_root = "sha256:" + digest.hex()
        now = self.clock.now()
        written = 0
        for entry, item in pairs:
            index = entry["leaf_index"]
            path = self._existing_receipt(item, anchored_root)
            if path is None:
                path = self._write_receipt(intent.target, item, index, proofs, digest, attestation, now)
                written += 1
            self._succeed(item.spec, item.batch, path, now, 0.0, attestation.status)
        self.log.info(
            "interrupted anchor recovered from the journal", target=intent.target,
            jobs=[str(item.spec.key) for _, item in pairs], receipts_written=written,
        )
        self._closing.append(intent)

    def _existing_receipt(self, item: _Due, anchored_root: str) -> Path | None:
        """A receipt already written for this job and anchored root before the crash."""
        for path, receipt in self._receipts.for_job(item.spec.namespace, item.spec.cadence, 10):
            if receipt.get("anchored_root") == anchored_root and receipt.get("batch", {}).get("root") == item.batch.root:
                return path
        return None

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the loop; let in-flight anchors finish within `grace`, journal the rest."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            done, pending = await asyncio.wait(tuple(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                self.log.warning("stopped with anchors in flight; they stay in the journal", count=len(pending))
        if self._save_task is not None:
            await asyncio.gather(self._save_task, return_exceptions=True)
        self.flush()

    # ----- views -------------------------------------------------------------------------------

    def view(self, key: JobKey, now: float | None = None) -> JobView:
        spec, state = self._specs[key], self._state[key]
        now = self.clock.now() if now is None else now
        in_flight = key in self._in_flight
        due_at = self._due.get(key)
        return JobView(spec, state, due_at, in_flight, self._status(spec, state, due_at, in_flight, now))

    def views(self, now: float | None = None) -> list[JobView]:
        now = self.clock.now() if now is None else now
        return [self.view(k, now) for k in self._specs]

    def _status(
        self, spec: JobSpec, state: JobState, due_at: float | None, in_flight: bool, now: float
    ) -> JobStatus:
        """The job's status by the one definition in core.status."""
        return job_status(
            in_flight=in_flight,
            failing=bool(state.failures),
            gave_up=state.last_error_kind == ErrorKind.VALIDATION and state.backoff_level >= self.policy.max_level,
            paused=self.paused,
            current_since=state.current_at or state.last_anchored_at or self.started_at,
            period=spec.every,
            stale_factor=self.stale_factor,
            due_at=due_at,
            now=now,
        )


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
