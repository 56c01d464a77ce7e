"""Signals that arrive while the scheduler starts, before a run mode can act on them.

Loading the config, taking the lock and reading the state can take a while (100,000 jobs:
about a second); a run mode installs its own handlers only once its event loop runs.
Without a handler, SIGHUP in that window kills the process (exit 129) and SIGINT raises
KeyboardInterrupt mid-start. `StartupSignals` is installed at the very top of `main()`
and only records what arrives; the run mode then takes the record over: a stop request
stops it as soon as it can (releasing the lock, exit 0), a SIGHUP reloads the config once
the loop runs. What is left is the interpreter's own start-up (about 25 ms here), before
any of our code runs.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

HANDLED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
STOPPING = (signal.SIGTERM, signal.SIGINT)

# What signal.signal() returns and takes: a function, SIG_DFL / SIG_IGN, or None (not set from Python).
Handler = Callable[[int, FrameType | None], Any] | int | None


class StartupSignals:
    def __init__(self) -> None:
        self.received: list[signal.Signals] = []
        self._previous: dict[signal.Signals, Handler] = {}  # handlers to put back

    def install(self) -> StartupSignals:
        """Record HANDLED signals from now on (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in HANDLED:
            previous = signal.signal(sig, self._record)
            self._previous.setdefault(sig, previous)
        return self

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum))

    @property
    def stop(self) -> signal.Signals | None:
        """The first SIGTERM or SIGINT received, if any: the operator wants it stopped."""
        return next((sig for sig in self.received if sig in STOPPING), None)

    @property
    def reload(self) -> bool:
        """A SIGHUP arrived: reload the config once the run mode can."""
        return signal.SIGHUP in self.received

    def restore(self) -> None:
        """Put back the handlers that were there before `install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def replay(self) -> None:
        """Restore, then deliver what was recorded to the restored handlers: for commands
        that have no use for the record (check-config, verify behave as they always did)."""
        received, self.received = self.received, []
        self.restore()
        for sig in dict.fromkeys(received):
            signal.raise_signal(sig)
