"""tui.terminal on real file descriptors (pipes stand in for the terminal's fds) and real
threads: what the dashboard's process sees when its terminal goes away."""

from __future__ import annotations

import os
import select
import threading
import time

import pytest

from tui.terminal import ExitWatchdog, GuardedOutput, TerminalGuard


@pytest.fixture
def fds():
    """A closed-at-the-far-end input (reads end-of-file) and an output nobody reads (EPIPE)."""
    opened: list[int] = []

    def pipe() -> tuple[int, int]:
        r, w = os.pipe()
        opened.extend((r, w))
        return r, w

    yield pipe
    for fd in opened:
        try:
            os.close(fd)
        except OSError:
            pass


def test_a_failed_write_detaches_the_terminal_once_and_output_is_dropped(fds):
    keys_r, keys_w = fds()
    screen_r, screen_w = fds()
    os.close(screen_r)  # nobody reads the screen any more: writes fail with EPIPE
    guard = TerminalGuard(input_fd=keys_r, output_fds=(screen_w,))
    out = GuardedOutput(open(screen_w, "w", buffering=1, closefd=False), guard)  # as sys.__stderr__
    out.write("\x1b[?1049l\n")  # would raise BrokenPipeError on the bare stream
    out.write("more\n")
    out.flush()
    reasons: list[str] = []
    guard.watch(reasons.append)  # (watched only now, so that its poll cannot notice first)
    guard.stop()
    assert reasons == ["terminal write failed (EPIPE)"]
    assert guard.lost == "terminal write failed (EPIPE)"
    assert os.write(screen_w, b"x") == 1  # the fd now leads to /dev/null: writes complete
    os.close(keys_w)  # the input reaches end-of-file ...
    ready, _, _ = select.select([keys_r], [], [], 0.2)
    assert ready == []  # ... but a reader of the detached fd waits instead of spinning on it
    assert not os.get_blocking(keys_r)
    with pytest.raises(BlockingIOError):  # and one told "readable" just before gets EAGAIN
        os.read(keys_r, 10)


def test_a_hung_up_input_is_noticed_without_reading_it(fds):
    keys_r, keys_w = fds()
    _screen_r, screen_w = fds()
    guard = TerminalGuard(input_fd=keys_r, output_fds=(screen_w,))
    lost = threading.Event()
    reasons: list[str] = []
    def on_lost(reason: str) -> None:
        reasons.append(reason)
        lost.set()

    guard.watch(on_lost)
    os.write(keys_w, b"q")
    os.close(keys_w)  # hang-up: the guard's poll sees it, the pending key is not consumed by it
    assert lost.wait(5)
    guard.stop()
    assert reasons == [f"terminal hung up (fd {keys_r})"]
    assert select.select([keys_r], [], [], 0.2)[0] == []  # no end-of-file left to spin on
    assert os.write(screen_w, b"still here") == 10  # a live output is kept as it was
    late: list[str] = []
    guard.watch(late.append)
    assert late == reasons  # a listener added after the loss hears it at once


class Exits:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.done = threading.Event()

    def save(self) -> None:
        self.calls.append(("save", None))

    def release(self) -> None:
        self.calls.append(("release", None))

    def exit(self, code: int) -> None:
        self.calls.append(("exit", code))
        self.done.set()


def test_watchdog_saves_state_itself_when_the_stop_does_not_come():
    exits = Exits()
    said: list[str] = []
    dog = ExitWatchdog(save_state=exits.save, release=exits.release, say=said.append, exit=exits.exit)
    dog.arm(save_within=0.05, teardown_within=60)
    assert exits.done.wait(5)
    assert exits.calls == [("save", None), ("release", None), ("exit", 0)]
    assert "state saved from the watchdog" in said[-1]


def test_watchdog_exits_1_when_state_cannot_be_saved():
    exits = Exits()

    def broken() -> None:
        raise OSError(28, "No space left on device")

    dog = ExitWatchdog(save_state=broken, release=exits.release, say=lambda _: None, exit=exits.exit)
    dog.arm(save_within=0.05, teardown_within=60)
    assert exits.done.wait(5)
    assert exits.calls == [("release", None), ("exit", 1)]


def test_watchdog_tries_a_failed_save_again_before_giving_up():
    # The loop may still be changing the job table while the watchdog saves from its thread
    # ("dictionary changed size during iteration"): one failed attempt is not a lost state.
    exits = Exits()
    attempts: list[int] = []

    def racing() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("dictionary changed size during iteration")
        exits.save()

    said: list[str] = []
    dog = ExitWatchdog(save_state=racing, release=exits.release, say=said.append, exit=exits.exit)
    dog.arm(save_within=0.05, teardown_within=60)
    assert exits.done.wait(5)
    assert len(attempts) == 2
    assert exits.calls == [("save", None), ("release", None), ("exit", 0)]
    assert "state saved from the watchdog" in said[-1]


def test_watchdog_after_the_save_only_bounds_the_teardown():
    exits = Exits()
    dog = ExitWatchdog(save_state=exits.save, release=exits.release, say=lambda _: None, exit=exits.exit)
    dog.state_saved()
    dog.arm(save_within=60, teardown_within=0.05)
    assert exits.done.wait(5)
    assert exits.calls == [("release", None), ("exit", 0)]  # the state is not saved twice


def test_a_terminal_that_stops_reading_never_blocks_the_writer(fds):
    screen_r, screen_w = fds()
    keys_r, _keys_w = fds()
    resumed: list[bool] = []
    out = GuardedOutput(open(screen_w, "w", closefd=False), TerminalGuard(input_fd=keys_r, output_fds=(screen_w,)),
                        on_resume=lambda: resumed.append(True), stall_seconds=0.1)
    frame = "x" * 100_000  # more than a pipe holds
    started = time.monotonic()
    out.write(frame)
    out.write(frame)  # while stalled: dropped at once
    assert time.monotonic() - started < 2
    assert out.stalled and out.dropped > 100_000 and not resumed
    os.set_blocking(screen_r, False)
    while True:  # the terminal reads again
        try:
            if not os.read(screen_r, 1 << 20):
                break
        except BlockingIOError:
            break
    out.write("\x1b[1;1Hagain")
    assert resumed == [True] and not out.stalled
    assert os.read(screen_r, 100) == b"\x18\x1b[1;1Hagain"  # CAN ends a sequence cut short
