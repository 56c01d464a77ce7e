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


# A program whose threads all allocate at once, then list the malloc arenas they made:
# glibc maps each thread arena as a heap of its own, aligned to HEAP_MAX (64 MiB).
ARENAS_PROGRAM = r"""
import re, sys, threading
from core.heap import one_malloc_arena
print(one_malloc_arena({} if sys.argv[1] == "one" else {"MALLOC_ARENA_MAX": "8"}))
start, kept = threading.Barrier(6), []
def allocate():
    start.wait()
    for _ in range(2000):
        kept.append(bytearray(4096))
threads = [threading.Thread(target=allocate) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
heaps = set()
for line in open("/proc/self/maps"):
    begin = int(line.split("-")[0], 16)
    if begin % (64 << 20) == 0 and len(line.split()) == 5:  # anonymous, at a heap's alignment
        heaps.add(begin)
print(len(heaps))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or malloc_trim() is None, reason="glibc on Linux")
def test_the_scheduler_threads_share_one_malloc_arena(tmp_path) -> None:
    """What a thread frees stays in its arena: the daemon's threads (reads, writes, the
    executor) share one, unless MALLOC_ARENA_MAX says otherwise (issue 24's idle USS)."""
    import os
    import subprocess

    def arenas(mode: str) -> tuple[str, int]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        env.pop("MALLOC_ARENA_MAX", None)
        out = subprocess.run([sys.executable, "-c", ARENAS_PROGRAM, mode], capture_output=True, text=True, env=env, check=True)
        told, count = out.stdout.split()
        return told, int(count)

    assert arenas("one") == ("True", 0)
    told, count = arenas("left")  # MALLOC_ARENA_MAX given: glibc's own arenas, one a thread
    assert told == "False" and count >= 1
