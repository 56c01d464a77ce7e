"""How often the dashboard may rebuild its tables from a full snapshot.

A full refresh reads every job's view and diffs every row: a few ms at 1,000 jobs, about
a second at 100,000, where a refresh every second (and after every event batch) would
keep the loop busy all the time and no keystroke would be answered. So once a refresh
costs more than SLOW_REFRESH of CPU, full refreshes are spaced to take at most
LOOP_SHARE of the time; between them the 1 s tick only moves the time the rows' ages and
countdowns are drawn at (tui/rows.py LiveCell), which costs the rows on screen, not the
jobs. Below SLOW_REFRESH (up to about 10,000 jobs) every refresh runs when asked, as
before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SLOW_REFRESH = 0.1  # CPU seconds of one full refresh above which refreshes are spaced
LOOP_SHARE = 0.1  # the share of the time spaced full refreshes may take


class RefreshPace:
    """The last full refresh's start and CPU cost -> when the next one may start."""

    def __init__(self) -> None:
        self.started_at: float | None = None  # monotonic seconds
        self.cost = 0.0  # CPU seconds

    def ran(self, started_at: float, cost: float) -> None:
        self.started_at, self.cost = started_at, cost

    @property
    def spaced(self) -> bool:
        return self.cost >= SLOW_REFRESH

    def wait(self, now: float) -> float:
        """Seconds from `now` (monotonic) until a full refresh may run; 0: at once."""
        if self.started_at is None or not self.spaced:
            return 0.0
        return max(0.0, self.started_at + self.cost / LOOP_SHARE - now)


class PacedRefresh:
    """A screen's full refresh at its pace. `run` refreshes now (and times it), `countdown`
    is the 1 s tick (a full refresh when the pace allows, else `show_time` only), `soon` is
    what a batch of events asks for (now, or once when the pace allows)."""

    def __init__(
        self, refresh: Callable[[], None], show_time: Callable[[], None], set_timer: Callable[..., object]
    ) -> None:
        self.pace = RefreshPace()
        self._refresh, self._show_time, self._set_timer = refresh, show_time, set_timer
        self._armed = False

    def run(self) -> None:
        started, cpu = time.monotonic(), time.process_time()
        self._refresh()
        self.pace.ran(started, time.process_time() - cpu)

    def countdown(self) -> None:
        if self.pace.wait(time.monotonic()) > 0:
            self._show_time()
        else:
            self.run()

    def soon(self) -> None:
        wait = self.pace.wait(time.monotonic())
        if wait <= 0:
            self.run()
        elif not self._armed:
            self._armed = True
            self._set_timer(wait, self.armed, name="paced refresh")

    def armed(self) -> None:
        """The armed timer's callback: the refresh that events asked for."""
        self._armed = False
        self.run()
