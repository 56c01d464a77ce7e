"""After a burst of anchors the daemon gives its freed heap back (core/heap.py)."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from core.events import EventBus, ReceiptWritten, TickCompleted
from core.heap import TRIM_AFTER, HeapTrim, malloc_trim
from core.jobs import JobKey


def written(bus: EventBus, n: int) -> None:
    for i in range(n):
        bus.publish(ReceiptWritten(1.0, JobKey(f"ns{i}", "fast"), "local:dev", f"/r/{i}.json", "aa", "confirmed", 1.0))


async def test_the_heap_is_trimmed_once_a_burst_of_receipts_is_over_not_during_it() -> None:
    bus, calls, busy = EventBus(), [], [False]
    heap = HeapTrim(bus, lambda: busy[0], lambda pad: calls.append(pad) or 1)
    written(bus, TRIM_AFTER - 1)
    bus.publish(TickCompleted(1.0, 0.0, 0))
    assert not await heap.trim_if_idle() and calls == []  # a few receipts: nothing to give back
    written(bus, 1)
    busy[0] = True
    assert not await heap.trim_if_idle() and calls == []  # anchors in flight: the burst goes on
    busy[0] = False
    assert await heap.trim_if_idle() and calls == [0]
    assert not await heap.trim_if_idle() and calls == [0]  # once a burst, not every second after


async def test_run_trims_on_its_own_and_stops_when_asked() -> None:
    bus, calls, trimmed = EventBus(), [], threading.Event()

    def trim(pad: int) -> int:
        calls.append(pad)
        trimmed.set()
        return 1

    heap = HeapTrim(bus, lambda: False, trim)
    task = asyncio.create_task(heap.run(every=0.001))
    written(bus, TRIM_AFTER)
    assert await asyncio.to_thread(trimmed.wait, 10)
    heap.stop()
    await asyncio.wait_for(task, 5)
    assert calls == [0]
    written(bus, TRIM_AFTER)
    assert heap.written == 0  # unsubscribed once stopped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_glibc_malloc_trim_is_found_and_answers() -> None:
    trim = malloc_trim()
    assert trim is not None and trim(0) in (0, 1)
