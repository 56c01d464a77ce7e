"""The job table: one `JobRecord` per configured job, the due-time heap, and flight.

A job is due at `record.due`; the heap holds (due, seq, key) entries, and an entry whose
time is no longer its job's `due` is stale and dropped lazily. The remains of jobs a
reload removed while their anchor was under way (`Remains`) are kept beside the records.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Iterable, Iterator

from core.clock import Clock
from core.engine.record import Held, JobRecord, Remains
from core.flight import Flight
from core.jobs import JobKey, JobSpec, JobState


class JobTable:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.records: dict[JobKey, JobRecord] = {}
        self.remains: dict[JobKey, Remains] = {}  # of jobs no longer configured
        # Indexes of the few jobs with a held attestation or a storage failure (kept by
        # set_held / set_storage_failing, in the order they began), so that asking for them
        # costs what they are, not the whole table.
        self._held_keys: dict[JobKey, None] = {}
        self._failing_keys: dict[JobKey, None] = {}
        self.heap: list[tuple[float, int, JobKey]] = []
        self._seq = itertools.count()
        self.flight = Flight()  # the one way in and out of flight (core/flight.py)
        self.forced: set[JobKey] = set()  # anchored at the next pass, whatever their due time
        self.wake = asyncio.Event()

    # ----- records -------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        return key in self.records

    def __iter__(self) -> Iterator[JobKey]:
        return iter(self.records)

    def __getitem__(self, key: JobKey) -> JobRecord:
        return self.records[key]

    def get(self, key: JobKey) -> JobRecord | None:
        return self.records.get(key)

    def specs(self) -> dict[JobKey, JobSpec]:
        return {key: record.spec for key, record in self.records.items()}

    def add(self, spec: JobSpec, state: JobState | None = None) -> JobRecord:
        """The job's record, created (with what an anchor left of it, if it was removed and
        is configured again, else with `state` or a fresh state) or given `spec`."""
        record = self.records.get(spec.key)
        if record is not None:
            record.spec = spec
            return record
        record = JobRecord(spec, JobState() if state is None else state)
        self._take_remains(record)
        self.records[spec.key] = record
        return record

    def adopt(self, records: Iterable[JobRecord]) -> None:
        """Take new jobs' records, made off the loop (`core.engine.switch.plan_jobs`), as
        `add` makes them: with what an anchor left of a job removed earlier."""
        table, remains = self.records, self.remains
        for record in records:
            if remains:
                self._take_remains(record)
            table[record.spec.key] = record

    def _take_remains(self, record: JobRecord) -> None:
        left = self.remains.pop(record.spec.key, None)
        if left is not None:
            if left.state is not None:
                record.state = left.state
            record.held = left.held
            record.storage_failing = left.storage_failing

    def remove(self, key: JobKey) -> None:
        """Forget a job a reload removed: its record, due time and force."""
        del self.records[key]
        self.forced.discard(key)
        self._held_keys.pop(key, None)
        self._failing_keys.pop(key, None)

    # ----- state, held attestations, storage failures (a removed job's remains too) --------

    def state_of(self, key: JobKey) -> JobState | None:
        record = self.records.get(key)
        if record is not None:
            return record.state
        left = self.remains.get(key)
        return None if left is None else left.state

    def state(self, key: JobKey) -> JobState:
        """`state_of` for a job that has a state (KeyError if it has none)."""
        state = self.state_of(key)
        if state is None:
            raise KeyError(key)
        return state

    def state_or_new(self, key: JobKey) -> JobState:
        """The job's state, or a fresh one (not stored) when it has none."""
        state = self.state_of(key)
        return JobState() if state is None else state

    def set_state(self, key: JobKey, state: JobState) -> None:
        record = self.records.get(key)
        if record is not None:
            record.state = state
        else:
            self.remains.setdefault(key, Remains()).state = state

    def states(self) -> dict[JobKey, JobState]:
        """Every state to save: the configured jobs', then the remains'."""
        states = {key: record.state for key, record in self.records.items()}
        states.update((key, left.state) for key, left in self.remains.items() if left.state is not None)
        return states

    def held_of(self, key: JobKey) -> Held | None:
        record = self.records.get(key)
        if record is not None:
            return record.held
        left = self.remains.get(key)
        return None if left is None else left.held

    def set_held(self, key: JobKey, held: Held | None) -> None:
        record = self.records.get(key)
        if record is not None:
            record.held = held
        elif held is not None:
            self.remains.setdefault(key, Remains()).held = held
        elif key in self.remains:
            self.remains[key].held = None
        if held is None:
            self._held_keys.pop(key, None)
        else:
            self._held_keys[key] = None

    def held_keys(self) -> list[JobKey]:
        """The jobs holding an attestation (a removed job's remains too), first held first."""
        return list(self._held_keys)

    def holds(self, held: Held) -> bool:
        """Some job still waits for its receipt from `held`."""
        return any(self.held_of(key) is held for key in self._held_keys)

    def held_all(self) -> list[Held]:
        """Every attestation held, once each."""
        found = (self.held_of(key) for key in self._held_keys)
        return list({id(h): h for h in found if h is not None}.values())

    def set_storage_failing(self, key: JobKey, message: str | None) -> None:
        entry: JobRecord | Remains | None = self.records.get(key)
        if entry is None:
            entry = self.remains.setdefault(key, Remains()) if message is not None else self.remains.get(key)
        if entry is None:
            return
        entry.storage_failing = message
        if message is None:
            self._failing_keys.pop(key, None)
        else:
            self._failing_keys[key] = None

    def storage_failing(self) -> list[str]:
        """The messages of the jobs whose last failure was storage, first failing first."""
        messages: list[str] = []
        for key in self._failing_keys:
            entry: JobRecord | Remains | None = self.records.get(key) or self.remains.get(key)
            if entry is not None and entry.storage_failing is not None:
                messages.append(entry.storage_failing)
        return messages

    # ----- due times ----------------------------------------------------------------------

    def due_at(self, key: JobKey) -> float | None:
        record = self.records.get(key)
        return None if record is None else record.due

    def unschedule(self, key: JobKey) -> None:
        record = self.records.get(key)
        if record is not None:
            record.due = None

    def natural_due(self, key: JobKey, now: float | None = None) -> float:
        """When `key` is due by its state: its retry, a cadence after its last anchor, or
        now (`now`, when the caller read the clock already) for a job never anchored."""
        record = self.records[key]
        spec, state = record.spec, record.state
        if state.next_attempt is not None:
            return state.next_attempt
        if state.last_anchored_at is None:
            return self.clock.now() if now is None else now
        return state.last_anchored_at + spec.every

    def schedule(self, key: JobKey, when: float | None = None, *, now: float | None = None) -> None:
        """`key` due at `when`, else at its `natural_due` (`now`: the clock, read already)."""
        record = self.records[key]
        if record.disabled is not None:
            return  # never due: a reload that accepts its target schedules it
        due = self.natural_due(key, now) if when is None else when
        record.due = due
        heapq.heappush(self.heap, (due, next(self._seq), key))
        self.wake.set()

    def schedule_all(self, keys: Iterable[JobKey], now: float) -> None:
        """`schedule(key, now=now)` for each of `keys`, the heap ordered once after (a
        reload adding 10,000 jobs: one heapify, not 10,000 pushes)."""
        records, heap, seq = self.records, self.heap, self._seq
        before = len(heap)
        for key in keys:
            record = records[key]
            if record.disabled is None:
                record.due = due = self.natural_due(key, now)
                heap.append((due, next(seq), key))
        if len(heap) > before:
            heapq.heapify(heap)
            self.wake.set()

    def next_due(self) -> float | None:
        """The earliest due time of an idle job (stale heap entries are dropped lazily)."""
        heap = self.heap
        while heap:
            due, _, key = heap[0]
            if self.due_at(key) == due and key not in self.flight:
                return due
            heapq.heappop(heap)
        return None
