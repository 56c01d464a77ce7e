"""Clocks: a wall-clock step moves `now()` only; anything measured on monotonic time keeps its length."""

from __future__ import annotations

import asyncio

from core.clock import FakeClock, SteadyClock, SystemClock

HOUR = 3600.0
DAY = 86400.0


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_fake_clock_steps_the_wall_without_moving_monotonic_time():
    clock = FakeClock()
    wall, mono = clock.now(), clock.monotonic()
    clock.step_wall(-HOUR)
    assert (clock.now(), clock.monotonic()) == (wall - HOUR, mono)
    clock.advance(10)
    assert (clock.now(), clock.monotonic()) == (wall - HOUR + 10, mono + 10)
    clock.set(wall)  # time passes until the wall reads `wall` again
    assert clock.monotonic() == mono + HOUR


async def test_fake_sleeper_is_not_woken_by_a_wall_step_and_not_held_back_by_one():
    clock = FakeClock()
    for step in (+DAY, -HOUR):
        woke = asyncio.Event()

        async def sleeper(woke: asyncio.Event = woke) -> None:
            await clock.sleep_until(clock.now() + 60, asyncio.Event())
            woke.set()

        task = asyncio.create_task(sleeper())
        await settle()
        clock.step_wall(step)
        await settle()
        assert not woke.is_set(), f"a {step:+.0f} s wall step woke a 60 s sleeper"
        clock.advance(60)
        await settle()
        assert woke.is_set(), f"after a {step:+.0f} s wall step the sleeper overslept its 60 s"
        await task


async def test_steady_clock_ignores_wall_steps_and_follows_elapsed_time():
    inner = FakeClock()
    steady = SteadyClock(inner)
    start = steady.now()
    assert start == inner.now()
    inner.step_wall(-HOUR)
    inner.advance(5)
    inner.step_wall(+DAY)
    assert steady.now() == start + 5
    assert steady.wall_step() == DAY - HOUR
    woke = asyncio.Event()

    async def sleeper() -> None:
        await steady.sleep_until(start + 65, asyncio.Event())
        woke.set()

    task = asyncio.create_task(sleeper())
    await settle()
    inner.step_wall(-2 * DAY)
    inner.advance(59.5)
    await settle()
    assert not woke.is_set()
    inner.advance(0.5)
    await settle()
    assert woke.is_set()
    await task


def test_system_clock_monotonic_time_moves_forward():
    clock = SystemClock()
    first = clock.monotonic()
    assert clock.monotonic() >= first
    steady = SteadyClock(clock)
    assert abs(steady.now() - clock.now()) < 1.0


def test_a_time_is_written_as_datetime_writes_it_to_the_millisecond():
    # the log lines' and events' time: datetime.fromtimestamp(t, UTC).isoformat(timespec=
    # "milliseconds") with "Z", whatever t: microseconds rounded half to even before the
    # milliseconds are cut, a carry into the next second, before 1970, one second after another
    import random
    from datetime import UTC, datetime

    from core.clock import iso_utc

    def written(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    rng = random.Random(3)
    times = [0.0, 1e-7, -1e-7, 0.9999995, 0.99999949999, 1.0000005, -1.5e-6, 1767225600.1239,
             1767225600.9999995, 1767225599.9999996, -86400.0000004, 253402300799.9994]
    times += [rng.randrange(-10**9, 4 * 10**9) + rng.randrange(10**6) / 1e6 + rng.choice([0, 5e-7, -5e-7])
              for _ in range(20000)]
    times += sorted(1767225600 + rng.random() * 5 for _ in range(2000))
    assert [iso_utc(t) for t in times] == [written(t) for t in times]
    assert iso_utc(1767225600.123) == "2026-01-01T00:00:00.123Z"
