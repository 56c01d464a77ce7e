"""core.readers: a read that never returns holds one thread, never the others or the caller."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

from core.readers import Patience, Readers


def test_a_hung_read_holds_one_thread_and_the_other_keys_are_still_read() -> None:
    readers = Readers(live=2, most=8, stuck_after=0.05)
    gate = threading.Event()
    try:
        hung = [readers.submit(f"hung{i}", gate.wait) for i in range(3)]  # more than `live`
        assert not readers.wait(hung, 0.2)  # the deadline, not the read, ends the wait
        others = [readers.submit(f"ok{i}", functools.partial(int.__mul__, i, 2)) for i in range(5)]
        assert readers.wait(others, 5.0), "a hung read starved the others"
        assert [r.value for r in others] == [0, 2, 4, 6, 8]
        # Asked again while it hangs: the same read, no second thread on the dead folder.
        assert readers.submit("hung0", gate.wait) is hung[0]
        assert readers.threads() <= 8
    finally:
        gate.set()
    assert readers.wait(hung, 5.0)
    assert readers.pending("hung0") is None  # ended: the next submit reads afresh


def test_an_error_is_handed_to_the_waiter() -> None:
    readers = Readers()

    def boom() -> int:
        raise OSError(5, "Input/output error")

    read = readers.submit("x", boom)
    assert readers.wait([read], 5.0)
    assert isinstance(read.error, OSError) and read.value is None


def test_a_patient_wait_lasts_while_reads_end_and_stops_at_a_stall() -> None:
    """A patient wait lasts while the pool's reads keep ending, past any fixed timeout (a
    pass of 100,000 folders is read whole, not a second's worth of it), and ends `stall`
    seconds after the last read ended when one hangs (a dead mount holds it no longer)."""
    readers = Readers(live=1, most=2, stuck_after=60.0)  # one thread: the reads end one by one
    gate = threading.Event()
    try:
        slow = [readers.submit(f"slow{i}", functools.partial(time.sleep, 0.03)) for i in range(20)]
        hung = readers.submit("hung", gate.wait)
        started = time.monotonic()
        assert not readers.wait([*slow, hung], Patience(stall=0.3, most=30.0))  # type: ignore[arg-type]  # reads of two types
        waited = time.monotonic() - started
        assert all(read.done.is_set() for read in slow), "gave up while the reads still progressed"
        assert not hung.done.is_set()
        assert 0.6 + 0.3 - 0.05 <= waited < 5.0, waited  # 20 reads of 30 ms, then the stall
        # A timeout in seconds rules as before.
        started = time.monotonic()
        assert not readers.wait([hung], 0.1)
        assert time.monotonic() - started < 1.0
    finally:
        gate.set()


def test_a_patient_wait_ends_at_its_most() -> None:
    readers = Readers(live=1, most=2, stuck_after=60.0)
    reads = [readers.submit(f"r{i}", functools.partial(time.sleep, 0.05)) for i in range(100)]
    started = time.monotonic()
    assert not readers.wait(reads, Patience(stall=5.0, most=0.3))
    assert time.monotonic() - started < 2.0
    assert readers.wait(reads, 30.0)


def test_a_patient_wait_ends_when_its_caller_quits() -> None:
    """The engine's stop ends a pass's wait for its reads at once (an exit waits for it)."""
    readers = Readers(live=1, most=2, stuck_after=60.0)
    reads = [readers.submit(f"q{i}", functools.partial(time.sleep, 0.05)) for i in range(100)]
    quit = threading.Event()
    threading.Timer(0.2, quit.set).start()
    started = time.monotonic()
    assert not readers.wait(reads, Patience(stall=5.0, most=30.0, quit=quit))
    assert time.monotonic() - started < 1.5


def test_a_read_that_hangs_in_a_chunk_does_not_hold_the_rest_of_its_chunk() -> None:
    """Reads handed to a thread many at a time (100,000 batch folders): the thread stuck on
    a dead folder gives the rest of its chunk back, and another thread reads them."""
    readers = Readers(live=1, most=4, stuck_after=0.1)
    gate = threading.Event()
    try:
        jobs: list[tuple[str, Callable[[], object]]] = [
            ("hung", gate.wait), *((f"ok{i}", functools.partial(int.__mul__, i, 3)) for i in range(30))
        ]
        reads = readers.submit_many(jobs, chunk=64)
        others = [reads[f"ok{i}"][0] for i in range(30)]
        assert readers.wait(others, 5.0), "the reads behind a hung one in its chunk were never read"
        assert [r.value for r in others] == [3 * i for i in range(30)]
        assert not reads["hung"][0].done.is_set()
        assert readers.submit("hung", gate.wait) is reads["hung"][0]  # not started again while it hangs
    finally:
        gate.set()
    assert readers.wait([reads["hung"][0]], 5.0)
    assert readers.pending("hung") is None


def test_chunks_read_every_key_once_and_hand_each_its_own_result() -> None:
    readers = Readers(live=2)
    calls: list[int] = []
    reads = readers.submit_many(
        ((f"k{i}", functools.partial(lambda i: calls.append(i) or i * i, i)) for i in range(200)), chunk=16
    )
    assert readers.wait([read for read, _ in reads.values()], 5.0)
    assert sorted(calls) == list(range(200))
    assert all(reads[f"k{i}"][0].value == i * i for i in range(200))


def test_the_tables_of_a_pass_are_let_go_of_once_its_reads_and_fences_end(tmp_path) -> None:
    """After a pass of 5,000 jobs, the idle daemon keeps no table sized for them (issue 24's
    idle memory): the reads pending and the fences held are empty and small again, and the
    next pass is read and fenced as before."""
    import sys

    from core.jobs import JobKey, JobState
    from core.store.files.claims import FileClaims
    from core.store.files.receipts import ReceiptStore

    empty = sys.getsizeof({})
    readers = Readers(live=4, most=4)
    reads = readers.submit_many([(f"k{i}", functools.partial(int, i)) for i in range(5000)], chunk=64)
    assert readers.wait([read for read, _ in reads.values()], 30.0)
    assert sys.getsizeof(readers._pending) == empty
    assert readers.wait([readers.submit("again", functools.partial(int, 7))], 5.0)
    claims = FileClaims(ReceiptStore(tmp_path / "receipts"))
    keys = {JobKey(f"ns{i}", "fast"): JobState() for i in range(5000)}
    granted = claims.claim(keys, 60.0)
    leases = [(key, state.row.fence) for key, state in granted.items() if state.row is not None and state.row.fence is not None]
    assert len(leases) == len(keys) and claims.release(leases) == list(keys)
    assert sys.getsizeof(claims._fences) == empty
    again = claims.claim({JobKey("ns0", "fast"): JobState()}, 60.0)
    assert claims.renew(list(again), 60.0) == 1


def _reads_on(readers: Readers, count: int, seconds: float) -> set[int]:
    """The threads that ran `count` reads of `seconds` each, handed over one at a time."""
    threads: set[int] = set()

    def read() -> None:
        threads.add(threading.get_ident())
        time.sleep(seconds)

    reads = readers.submit_many([(f"r{i}", read) for i in range(count)], chunk=1)
    assert readers.wait([read for read, _ in reads.values()], 30.0)
    return threads


def test_quick_reads_take_one_thread_and_slow_ones_up_to_live() -> None:
    """A local disk's reads are quick, and threads only pass the GIL back and forth: one
    reads them all (10,000 batch folders: 0.31 s on one thread, 0.77 s on four). Reads
    that wait on their storage (a network mount's latency) are read `live` at once."""
    quick = Readers(live=3, most=8, slow_after=0.05)
    assert len(_reads_on(quick, 150, 0.001)) == 1  # 0.15 s of reads: waits polled them
    slow = Readers(live=3, most=8, slow_after=0.005)
    started = time.monotonic()
    assert len(_reads_on(slow, 60, 0.02)) == 3
    assert time.monotonic() - started < 60 * 0.02 * 0.8  # read at once, not one by one
    # Quick again: back to one thread (the others end at their next quick chunk, or idle).
    _reads_on(slow, 150, 0.0)
    deadline = time.monotonic() + 10.0
    while slow.threads() > 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # a thread ending, not a schedule
    assert slow.threads() == 1
