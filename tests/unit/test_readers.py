"""core.readers: a read that never returns holds one thread, never the others or the caller."""

from __future__ import annotations

import functools
import threading

from core.readers import Readers


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
