"""Clocks. The engine never calls time.* directly, so tests can drive whole schedules.

Two kinds of time: the wall clock (`now()`: epoch seconds, what receipts, logs and state
say) and a monotonic clock (`monotonic()`: never steps). A wall clock can be stepped at
any moment (an NTP correction, `date -s`, a VM restored from a snapshot); anything that
measures an interval (a cadence, a backoff, staleness, a stuck loop) must not follow it.
The engine therefore runs on a `SteadyClock`: the wall time read once at start, advanced
by monotonic time, so within one run its times never jump.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from typing import Protocol

# CLOCK_BOOTTIME never steps and, unlike CLOCK_MONOTONIC, keeps counting while the machine
# is suspended, so a job due during a suspend is due at resume, not a suspend later.
_STEADY_CLOCK_ID = getattr(time, "CLOCK_BOOTTIME", None)


def _steady_seconds() -> float:
    if _STEADY_CLOCK_ID is not None:
        return time.clock_gettime(_STEADY_CLOCK_ID)
    return time.monotonic()


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall clock, used for receipts and state)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never steps (any origin): only differences mean anything."""

    async def sleep_until(self, deadline: float, wake: asyncio.Event) -> None:
        """Return at `deadline` (on the `now()` timeline) or as soon as `wake` is set.

        The time left is read once, at the call, and waited on monotonic time: a step of
        the wall clock during the wait neither shortens nor lengthens it."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return _steady_seconds()

    async def sleep_until(self, deadline: float, wake: asyncio.Event) -> None:
        delay = deadline - time.time()
        if delay <= 0:
            return
        try:
            await asyncio.wait_for(wake.wait(), timeout=delay)
        except TimeoutError:
            pass


class SteadyClock:
    """Wall time as read when this clock was made, advanced by `inner`'s monotonic time.

    It never steps: a wall-clock step after the start changes none of its readings, so
    due times, staleness and durations measured on it keep their length. It is re-based
    on the wall clock only when a new one is made (at the next start)."""

    def __init__(self, inner: Clock) -> None:
        self.inner = inner
        self._offset = inner.now() - inner.monotonic()

    def now(self) -> float:
        return self.inner.monotonic() + self._offset

    def monotonic(self) -> float:
        return self.inner.monotonic()

    def wall_step(self) -> float:
        """How far the wall clock has been stepped since this clock was made (seconds)."""
        return self.inner.now() - self.now()

    async def sleep_until(self, deadline: float, wake: asyncio.Event) -> None:
        # The inner clock measures what is left on its own monotonic time.
        await self.inner.sleep_until(self.inner.now() + (deadline - self.now()), wake)


class FakeClock:
    """A clock that moves only when a test says so; sleepers wake when it passes their deadline.

    `advance`/`set` are time passing (wall and monotonic move together); `step_wall` is
    the wall clock being stepped while no time passes (monotonic time stays put)."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        # Monotonic time starts at the same reading as the wall, so until the wall is
        # stepped both read exactly the same float (no rounding between the two).
        self._mono = start
        self._wall_offset = 0.0
        self._moved: asyncio.Event | None = None

    def now(self) -> float:
        return self._mono + self._wall_offset

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._woken()

    def set(self, when: float) -> None:
        """Let time pass (or rewind it) until the wall clock reads `when`."""
        self._mono = when - self._wall_offset
        self._woken()

    def step_wall(self, seconds: float) -> None:
        """Step the wall clock by `seconds` (either sign) while monotonic time stands still."""
        self._wall_offset += seconds
        self._woken()

    def _woken(self) -> None:
        if self._moved is not None:
            self._moved.set()

    async def sleep_until(self, deadline: float, wake: asyncio.Event) -> None:
        until = self._mono + (deadline - self.now())  # on monotonic time, like SystemClock
        while self._mono < until and not wake.is_set():
            self._moved = moved = asyncio.Event()
            waiters = [asyncio.ensure_future(moved.wait()), asyncio.ensure_future(wake.wait())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()


# The second last written out ("2026-01-01T00:00:00"): the log lines of a pass share it
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def iso_utc(epoch: float) -> str:
    """UTC ISO 8601 with a Z suffix and millisecond precision: what
    `datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")` writes (its
    microseconds rounded half to even, then cut to milliseconds), the date and time of its
    second made once for every time within that second (a log line's: 2 us of its 5)."""
    global _last_second
    fraction, whole = math.modf(epoch)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        micro -= 1_000_000
        whole += 1.0
    elif micro < 0:
        micro += 1_000_000
        whole -= 1.0
    second = int(whole)
    known, text = _last_second
    if known != second:
        text = datetime.fromtimestamp(second, UTC).isoformat()[:19]
        _last_second = (second, text)
    return f"{text}.{micro // 1000:03d}Z"
