"""The dashboard's terminal can vanish under it: an SSH connection drops, `tmux
kill-session` closes the pty, the controlling terminal is revoked. Nothing may then hold
the scheduler hostage.

What goes wrong without this module (Textual 8.2's Linux driver): every write to the dead
terminal fails with EIO and kills Textual's writer thread, whose queue then fills and
blocks the main thread for good in the next write (the app's own shutdown writes the
"restore the terminal" codes), so the engine never stops, the data-dir lock stays held and
SIGTERM is never acted on; meanwhile the input thread reads end-of-file from the hung-up
terminal and loops on it at 100 % CPU.

- `TerminalGuard` notices the loss from any side: a thread polls fds 0-2 for hang-up or
  error (a hung-up terminal, a closed pipe) without reading them; output that fails
  (EIO, EPIPE) and input that fails report it too. It then detaches the dead fds: stdin
  becomes a pipe nobody writes (Textual's input thread waits on it quietly instead of
  spinning at EOF) and dead outputs become /dev/null (pending and later writes, the
  app's restore codes included, complete at once instead of failing or blocking). A
  still-live output is kept, so a terminal that lost only its input is still restored.
- `guarded_driver(guard)` is Textual's Linux driver with its output replaced by
  `GuardedOutput`: writes through a non-blocking descriptor of their own, so a terminal
  that stops reading (an SSH connection stalled without closing) never blocks the app's
  loop and the engine on it (Textual's writer would block, then its full queue the
  loop, about 18 s into the stall); what a stalled terminal cannot take is dropped and
  the screen is drawn anew when it reads again. A failed write reports the loss, and an
  input thread ending on a read error reports it too instead of crashing the app.
- `ExitWatchdog` bounds the stop: once armed, it waits for the app to say the engine's
  state is saved, then gives the teardown a few moments; a process still alive then is
  ended with `os._exit`. If the save itself does not come in time, it saves the state
  from its own thread first. Exit 0 when the state was saved, 1 when it could not be.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from textual.drivers.linux_driver import LinuxDriver

EXIT_OK, EXIT_STATE_NOT_SAVED = 0, 1
# With the terminal gone the whole stop stays within 5 s: in-flight anchors get
# HANGUP_GRACE (those still running stay in the journal, resolved at the next start),
# Textual's teardown HANGUP_TEARDOWN after the state is saved; HANGUP_SAVE_MARGIN is what
# stopping the engine and saving may take beyond the grace on a loaded host.
HANGUP_GRACE = 2.5
HANGUP_SAVE_MARGIN = 1.0
HANGUP_TEARDOWN = 1.0
# The watchdog saves from its own thread while the loop may still be changing the state:
# a save that fails is tried again this many times, SAVE_RETRY_DELAY apart.
SAVE_ATTEMPTS = 3
SAVE_RETRY_DELAY = 0.05
# Any other stop (quit, SIGTERM): the engine's grace plus STOP_MARGIN to save the state,
# then TEARDOWN_LIMIT for Textual to restore a live terminal.
STOP_MARGIN = 5.0
TEARDOWN_LIMIT = 5.0
# A terminal that takes no output for this long is stalled: what it did not take is dropped.
STALL_SECONDS = 2.0
CANCEL = b"\x18"  # CAN: a terminal abandons the escape sequence it was reading
_DEAD = select.POLLHUP | select.POLLERR | select.POLLNVAL


_FD_NAMES = {0: "stdin", 1: "stdout", 2: "stderr"}


def fd_is_dead(fd: int) -> bool:
    """True if `fd` is hung up, in error or closed (a poll that asks for no event reports
    only those), without reading or writing it."""
    poller = select.poll()
    poller.register(fd, 0)
    return any(revents & _DEAD for _fd, revents in poller.poll(0))


class TerminalGuard:
    """Notices that the terminal is gone, detaches it, and says so once."""

    def __init__(self, input_fd: int = 0, output_fds: tuple[int, ...] = (1, 2)) -> None:
        self._input_fd = input_fd
        self._output_fds = output_fds
        self._lock = threading.Lock()
        self._lost_reason: str | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._wake_r, self._wake_w = os.pipe()
        self._idle_input_w: int | None = None  # kept open: the input then waits, never reads EOF
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> str | None:
        """Why the terminal was lost, or None while it is there."""
        return self._lost_reason

    def watch(self, on_lost: Callable[[str], None]) -> None:
        """Call `on_lost(reason)` once when the terminal is lost (from the thread that noticed;
        at once if it already was). Starts the polling thread on first use."""
        with self._lock:
            reason = self._lost_reason
            if reason is None:
                self._listeners.append(on_lost)
            if self._thread is None and reason is None:
                self._thread = threading.Thread(target=self._poll, name="vmsh-terminal-guard", daemon=True)
                self._thread.start()
        if reason is not None:
            on_lost(reason)

    def stop(self) -> None:
        """End the polling thread (the terminal stays as it is)."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)

    def _poll(self) -> None:
        poller = select.poll()
        for fd in (self._input_fd, *self._output_fds):
            poller.register(fd, 0)  # no events asked: only hang-up, error, closed are reported
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = poller.poll()
            if any(fd == self._wake_r for fd, _ in ready):
                return
            dead = [fd for fd, revents in ready if revents & _DEAD]
            if dead:
                names = ", ".join(_FD_NAMES.get(fd, f"fd {fd}") for fd in dead)
                self.report(f"terminal hung up ({names})")
                return

    def output_failed(self, exc: OSError) -> None:
        self.report(f"terminal write failed ({errno.errorcode.get(exc.errno or 0, exc)})", output_dead=True)

    def input_failed(self, exc: OSError) -> None:
        self.report(f"terminal read failed ({errno.errorcode.get(exc.errno or 0, exc)})")

    def report(self, reason: str, *, output_dead: bool = False) -> None:
        """The terminal is gone: detach it and tell the listeners (the first report wins)."""
        with self._lock:
            if self._lost_reason is not None:
                return
            self._lost_reason = reason
            self._detach(output_dead)
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener(reason)

    def _detach(self, output_dead: bool) -> None:
        """Point the dead fds somewhere harmless; the same fd numbers stay valid for every
        thread and file object that holds them."""
        # The input is always lost. Non-blocking: a reader told "readable" just before the
        # swap gets EAGAIN (which ends Textual's input thread) instead of waiting forever.
        idle_r, self._idle_input_w = os.pipe()
        os.set_blocking(idle_r, False)
        os.dup2(idle_r, self._input_fd)
        os.close(idle_r)
        null = os.open(os.devnull, os.O_RDWR)
        try:
            for fd in self._output_fds:
                if output_dead or fd_is_dead(fd):
                    os.dup2(null, fd)
        finally:
            os.close(null)


class GuardedOutput:
    """What Textual's writer thread writes to, in place of the terminal's stream.

    Writes go out through a non-blocking descriptor of their own for the terminal, so a
    terminal that stops reading (an SSH connection that stalls without closing: sshd
    stops reading the pty) never blocks the writer thread, then the app's loop, and with
    it the engine. What the terminal has not taken after `stall_seconds` is dropped, and
    so is everything while it stays full; when it takes output again, the next text goes
    out after a CAN (ending any escape sequence cut short) and `on_resume` asks the app
    for a full repaint. A failed write (EIO, EPIPE) reports the loss to the guard; from
    then on everything is dropped.
    """

    def __init__(
        self,
        stream: IO[str],
        guard: TerminalGuard,
        *,
        on_resume: Callable[[], None] = lambda: None,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        self._stream = stream
        self._guard = guard
        self.on_resume = on_resume
        self._stall_seconds = stall_seconds
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        self._errors = getattr(stream, "errors", None) or "strict"
        self._fd = _nonblocking_twin(stream.fileno())
        self.stalled = False
        self.failed = False
        self.dropped = 0  # bytes the terminal never got

    def write(self, text: str) -> int:
        if not self.failed:
            if self._fd is None:
                self._write_blocking(text)
            else:
                self._send(text.encode(self._encoding, self._errors))
        return len(text)

    def _send(self, data: bytes) -> None:
        fd = self._fd
        assert fd is not None
        if self.stalled:
            if not _writable(fd, 0):
                self.dropped += len(data)
                return
            self.stalled = False
            data = CANCEL + data
            self.on_resume()
        view = memoryview(data)
        deadline = time.monotonic() + self._stall_seconds
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                pass
            except OSError as exc:
                self._failed_with(exc)
                return
            if view and not _writable(fd, deadline - time.monotonic()):
                self.stalled = True
                self.dropped += len(view)
                return

    def _write_blocking(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except OSError as exc:
            self._failed_with(exc)

    def _failed_with(self, exc: OSError) -> None:
        self.failed = True
        self._guard.output_failed(exc)

    def flush(self) -> None:
        """Nothing to do: every write goes out (or is dropped) at once."""

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()


def _nonblocking_twin(fd: int) -> int | None:
    """A second open file description of what `fd` leads to, non-blocking. (O_NONBLOCK set
    on `fd` itself would hold for every process sharing it: the operator's shell after
    us.) None where /proc cannot give one: writes then block as Textual's do."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None


def _writable(fd: int, timeout: float) -> bool:
    """True once `fd` takes output (or is in error, so the next write says so)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def guarded_driver(guard: TerminalGuard) -> type[LinuxDriver]:
    """Textual's Linux driver, reporting a lost terminal to `guard` instead of hanging,
    and never blocked by a terminal that stops reading."""

    class GuardedLinuxDriver(LinuxDriver):
        def __init__(self, app: Any, **kwargs: Any) -> None:
            super().__init__(app, **kwargs)
            # Textual types _file as sys.__stderr__'s TextIOWrapper; ours writes to it.
            self._guarded_output = GuardedOutput(self._file, guard)  # type: ignore[arg-type]
            self._file = self._guarded_output  # type: ignore[assignment]

        def start_application_mode(self) -> None:
            loop = asyncio.get_running_loop()
            app = self._app
            context = contextvars.copy_context()  # the app's (active_app): see tui/host.py
            # From the writer thread: the terminal takes output again, draw it all anew.
            def redraw() -> None:
                loop.call_soon_threadsafe(app.refresh, context=context)

            self._guarded_output.on_resume = redraw
            super().start_application_mode()

        def run_input_thread(self) -> None:
            try:
                super().run_input_thread()
            except OSError as exc:  # without this, Textual shows a traceback and exits 1
                guard.input_failed(exc)
                self.exit_event.wait()

    return GuardedLinuxDriver


class ExitWatchdog:
    """Ends the process if an orderly stop cannot finish in time (see the module doc)."""

    def __init__(
        self,
        *,
        save_state: Callable[[], None],
        release: Callable[[], None],
        say: Callable[[str], None] | None = None,
        exit: Callable[[int], Any] = os._exit,
    ) -> None:
        self._save_state = save_state
        self._release = release
        self._say = say or _say_on_stderr
        self._exit = exit
        self._saved = threading.Event()

    def state_saved(self) -> None:
        """The app stopped the engine and saved its state: from now on only teardown is left."""
        self._saved.set()

    def arm(self, *, save_within: float, teardown_within: float, code: int = EXIT_OK) -> None:
        """Start a deadline: the state saved within `save_within` seconds, the process gone
        `teardown_within` seconds after that. Each call adds a deadline; the first one due wins."""
        thread = threading.Thread(
            target=self._run, args=(save_within, teardown_within, code), name="vmsh-exit-watchdog", daemon=True
        )
        thread.start()

    def _run(self, save_within: float, teardown_within: float, code: int) -> None:
        if not self._saved.wait(save_within):
            error = self._save_with_retries()
            if error is None:
                self._say(f"the engine did not stop within {save_within:g} s; state saved from the watchdog")
            else:  # state cannot be saved: say so, exit non-zero
                self._say(f"the engine did not stop within {save_within:g} s; could not save state: {error}")
                code = EXIT_STATE_NOT_SAVED
        else:
            time.sleep(teardown_within)
            self._say(f"the dashboard's teardown did not finish within {teardown_within:g} s; exiting")
        try:
            self._release()
        finally:
            self._exit(code)


    def _save_with_retries(self) -> Exception | None:
        """Save the state; a failure (the loop changed the job table mid-save, a busy
        writer) is tried again. Returns the last error, or None once saved."""
        error: Exception | None = None
        for attempt in range(SAVE_ATTEMPTS):
            if attempt:
                time.sleep(SAVE_RETRY_DELAY)
            try:
                self._save_state()
                return None
            except Exception as exc:
                error = exc
        return error


def _say_on_stderr(text: str) -> None:
    try:
        print(f"vmsh-scheduler: {text}", file=sys.__stderr__, flush=True)
    except (OSError, ValueError):
        pass
