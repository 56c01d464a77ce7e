"""The engine's loop stays responsive during a big pass (issue 24, /livez): the outcomes of
one commit chunk are applied in slices with the loop free in between, the state file is
encoded on the writer thread, and a pass's log lines are written together."""

from __future__ import annotations

import asyncio
import io
import random
import threading

from core.backoff import BackoffPolicy
from core.clock import FakeClock
from core.engine import commit
from core.events import EventBus, ReceiptWritten
from core.observe.logs import JsonLineWriter, Log
from core.store.files.journal import IntentJournal
from core.store.files.state import StateStore
from tests.unit.test_engine import Harness


async def test_the_outcomes_of_one_commit_chunk_leave_the_loop_free_between_slices(tmp_path, monkeypatch):
    # 300 jobs: one chunk of the file store's commit (1,024 receipts). Each outcome is its
    # own slice here (a slice's time budget below zero), so the count is deterministic: a
    # task that runs at every turn of the loop sees the receipts arrive a few at a time,
    # not the whole chunk at once (what held /livez for 100 ms and more at 10,000 jobs).
    monkeypatch.setattr(commit, "APPLY_SLICE", -1.0, raising=False)
    n = 300
    h = Harness(tmp_path, {f"ns{i:04d}": i + 1 for i in range(n)})
    s = h.scheduler()
    seen: list[int] = []
    running = True

    async def another_task() -> None:
        while running:
            seen.append(len(h.of(ReceiptWritten)))
            await asyncio.sleep(0)

    other = asyncio.get_running_loop().create_task(another_task())
    await s.run_once()
    running = False
    await other
    assert len(h.of(ReceiptWritten)) == n
    assert len(h.backend.calls) == 1  # one aggregated anchor, one chunk
    partial = {count for count in seen if 0 < count < n}
    assert len(partial) >= n // 2, f"the loop ran only {len(partial)} times while {n} outcomes were applied"
    await s.stop()


class ThreadRecordingState(StateStore):
    """The real state file, noting the thread each save is encoded on."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.built_on: list[str] = []

    def save(self, states):
        self.built_on.append(threading.current_thread().name)
        return super().save(states)


async def test_the_state_file_is_encoded_on_the_writer_thread_and_accounts_for_every_anchor(tmp_path):
    from core.engine import Scheduler

    h = Harness(tmp_path, {f"ns{i}": i + 1 for i in range(20)})
    state = ThreadRecordingState(tmp_path / "data" / "state" / "scheduler.json")
    s = Scheduler(
        jobs=h.specs, clock=h.clock, bus=h.bus, backend_for=lambda target: h.backend,
        state_store=state,
        journal=IntentJournal(tmp_path / "data" / "journal"), receipts=h.receipts,
        policy=BackoffPolicy(base=5.0, max_level=7, jitter=0.0, rng=random.Random(1)),
    )
    await s.run_once()
    await s.stop()
    assert state.built_on and threading.main_thread().name not in state.built_on
    saved = StateStore(tmp_path / "data" / "state" / "scheduler.json").load()
    assert {str(k) for k, st in saved.items() if st.last_anchored_at is not None} == {f"ns{i}/fast" for i in range(20)}
    assert not list((tmp_path / "data" / "journal").glob("*.json"))  # every intent closed after the save


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_the_log_lines_of_one_loop_iteration_go_out_in_one_write():
    # Each write on the loop is a system call after which the loop waits for the GIL
    # behind the writer thread: 1,024 "anchored" lines written one by one stalled /livez.
    stream = CountingStream()
    bus = EventBus()
    writer = JsonLineWriter(stream)
    bus.subscribe(writer)
    log = Log(bus, FakeClock())
    for n in range(500):
        log.info("anchored", job=f"ns{n}/fast")
    await asyncio.sleep(0)
    assert stream.writes == 1
    assert [line.count("anchored") for line in stream.getvalue().splitlines()] == [1] * 500
    writer.close()
