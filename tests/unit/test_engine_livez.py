"""The engine's loop stays responsive during a big pass (issue 24, /livez): the outcomes of
one commit chunk are applied in slices with the loop free in between (its receipts
announced first, all at once), the state file is encoded on the writer thread, a pass's
log lines are written together, and the engine leaves the process's GIL switch interval
alone (cli/main.py sets it)."""

from __future__ import annotations

import asyncio
import io
import random
import threading

from core.backoff import BackoffPolicy
from core.clock import FakeClock
from core.engine import commit
from core.events import AnchorSucceeded, EventBus, ReceiptWritten
from core.observe.logs import JsonLineWriter, Log
from core.store.files.journal import IntentJournal
from core.store.files.state import StateStore
from core.writer import DiskWriter
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
            seen.append(len(h.of(AnchorSucceeded)))
            await asyncio.sleep(0)

    other = asyncio.get_running_loop().create_task(another_task())
    await s.run_once()
    running = False
    await other
    assert len(h.of(AnchorSucceeded)) == n
    assert len(h.backend.calls) == 1  # one aggregated anchor, one chunk
    partial = {count for count in seen if 0 < count < n}
    assert len(partial) >= n // 2, f"the loop ran only {len(partial)} times while {n} outcomes were applied"
    await s.stop()


async def test_a_commit_chunks_receipts_are_announced_as_soon_as_they_are_durable(tmp_path, monkeypatch):
    # Event latency at 1,000 receipts/s (issue 24): every receipt of a chunk is announced
    # when its commit ends, before the outcomes are applied in slices (the last job of a
    # chunk of 1,024 used to be announced only when the slices reached it); and the
    # event's time is when its receipt became durable, the anchor's time in anchored_at.
    monkeypatch.setattr(commit, "APPLY_SLICE", -1.0, raising=False)
    n = 200
    h = Harness(tmp_path, {f"ns{i:04d}": i + 1 for i in range(n)})

    loop = asyncio.get_running_loop()

    def slow_disk(op: str) -> None:  # on the writer thread
        if op == "receipt":  # the chunk's write takes 7 s on the engine's clock (moved on the loop)
            moved = threading.Event()
            loop.call_soon_threadsafe(lambda: (h.clock.advance(7.0), moved.set()))
            assert moved.wait(10)

    s = h.scheduler(writer=DiskWriter(fault=slow_disk))
    anchored_at = h.clock.now()
    seen: list[tuple[int, int]] = []
    running = True

    async def a_client() -> None:
        while running:
            seen.append((len(h.of(ReceiptWritten)), len(h.of(AnchorSucceeded))))
            await asyncio.sleep(0)

    other = asyncio.get_running_loop().create_task(a_client())
    await s.run_once()
    running = False
    await other
    await s.stop()
    written = h.of(ReceiptWritten)
    assert len(written) == n and len(h.of(AnchorSucceeded)) == n
    assert any(0 < applied < n for _, applied in seen)  # the outcomes did come in slices
    assert all(announced == n for announced, applied in seen if applied), "a receipt announced late"
    assert {e.anchored_at for e in written} == {anchored_at}
    assert {e.at for e in written} == {anchored_at + 7.0}  # when the chunk was durable


async def test_the_engine_leaves_the_process_gil_switch_interval_alone(tmp_path):
    # It is process-wide: an engine that set it while it ran and restored it when it
    # stopped undid it for another engine of the same process still running, and left its
    # own value behind once both had stopped. The program sets it at its entry.
    import sys

    before = sys.getswitchinterval()
    sys.setswitchinterval(0.004)
    try:
        a = Harness(tmp_path / "a", {"a": 1}).scheduler()
        b = Harness(tmp_path / "b", {"b": 1}).scheduler()
        runs = [asyncio.get_running_loop().create_task(x.run()) for x in (a, b)]
        await asyncio.sleep(0)  # both running
        assert sys.getswitchinterval() == 0.004
        await a.stop()
        await runs[0]
        assert sys.getswitchinterval() == 0.004  # b still running
        await b.stop()
        await runs[1]
        assert sys.getswitchinterval() == 0.004
    finally:
        sys.setswitchinterval(before)


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


def test_the_program_that_runs_a_scheduler_sets_the_gil_switch_interval_at_its_entry(tmp_path, monkeypatch):
    # The headless run (and the dashboard's, the same path) starts with the 1 ms switch
    # interval (cli/main.py GIL_SWITCH): after each system call the engine's loop waits for
    # the GIL behind the writer thread, 5 ms at most by Python's default.
    import sys

    import cli.main

    config = tmp_path / "config.yaml"
    config.write_text(
        f"scheduler:\n  data_dir: {tmp_path / 'data'}\ntargets:\n  local:\n    dev: {{}}\nnamespaces:\n"
        f'  "a":\n    source: {tmp_path / "batches" / "a"}\n    cadence:\n      fast:\n'
        '        target: "local:dev"\n        every: "1m"\n'
    )
    seen: list[float] = []

    def serve(loaded, args, startup) -> int:  # where the real run would start
        seen.append(sys.getswitchinterval())
        return 0

    monkeypatch.setattr(cli.main, "run_headless", serve)
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        assert cli.main.main(["--no-ui", "--config", str(config)]) == 0
    finally:
        sys.setswitchinterval(before)
    assert seen == [0.001]


async def test_a_big_groups_journal_entries_are_built_off_the_loop_with_its_tree(tmp_path, monkeypatch):
    # 10,000 jobs: the intent's entries (and the log line's job list) took a 56 ms turn of
    # the loop; they are built on the thread that builds the Merkle tree.
    from core.engine import anchoring

    monkeypatch.setattr(anchoring, "WRITE_CHUNK", 10)
    built_on: list[str] = []
    real = anchoring.journal_entries

    def recording(*args):
        built_on.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(anchoring, "journal_entries", recording)
    h = Harness(tmp_path, {f"ns{i}": i + 1 for i in range(20)})
    s = h.scheduler()
    await s.run_once()
    await s.stop()
    assert built_on and threading.main_thread().name not in built_on
    assert len(h.of(AnchorSucceeded)) == 20
