"""Clocks. The engine never calls time.* directly, so tests can drive whole schedules."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall clock, used for receipts and state)."""

    async def sleep_until(self, deadline: float, wake: asyncio.Event) -> None:
        """Return at `deadline` or as soon as `wake` is set, whichever comes first."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float, wake: asyncio.Event) -> None:
        delay = deadline - time.time()
        if delay <= 0:
            return
        try:
            await asyncio.wait_for(wake.wait(), timeout=delay)
        except TimeoutError:
            pass


class FakeClock:
    """A clock that moves only when a test says so; sleepers wake when it passes their deadline."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = start
        self._moved: asyncio.Event | None = None

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    def set(self, when: float) -> None:
        self._now = when
        if self._moved is not None:
            self._moved.set()

    async def sleep_until(self, deadline: float, wake: asyncio.Event) -> None:
        while self._now < deadline and not wake.is_set():
            self._moved = moved = asyncio.Event()
            waiters = [asyncio.ensure_future(moved.wait()), asyncio.ensure_future(wake.wait())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()


def iso_utc(epoch: float) -> str:
    """UTC ISO 8601 with a Z suffix and millisecond precision."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )
