"""Memory a burst of anchors freed, given back to the system once the scheduler is idle.

A pass over 10,000 jobs builds its receipts, proofs and states, writes them and frees
them; glibc keeps the freed heap for reuse, so an idle daemon's USS stayed well above what
it holds (measured with malloc_trim by hand: 118.5 -> 103.1 MiB at 10,000 namespaces, 52.5
-> 47.6 MiB at 1,000). `HeapTrim` counts the receipts written; once TRIM_AFTER have
been written since the last trim and no anchor is in flight, it calls glibc's
`malloc_trim(0)` on a thread (ctypes lets go of the GIL, so the loop runs on). Where the C
library is not glibc it does nothing.

`one_malloc_arena()`: glibc's malloc keeps one arena for every thread, as
MALLOC_ARENA_MAX=1 does. By default each thread that allocates while another holds the
arena gets its own (up to 8 a core): the read, write and executor threads of a pass each
kept theirs, with what was freed in it (idle at 10,000 namespaces, the USS less the
mapped files' pages: 84.8-89.9 MiB with them, 76.4-77.8 with one, CPU per anchor the same:
bench/scale_bench.py). Python allocates its small objects under the GIL from its own
pools, so the threads rarely meet in malloc.

`no_collection()`: a block without cyclic collections (the headless start, the
dashboard's diffs and sorts of many rows).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from core.events import Event, EventBus, ReceiptWritten

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
TRIM_AFTER = 500  # receipts written since the last trim: a burst worth giving back
CHECK_EVERY = 1.0  # seconds between looks at whether the burst is over


@contextmanager
def no_collection() -> Iterator[None]:
    """No cyclic collection inside the block; the collector as it was after it (a block
    inside another leaves it off). What the block makes and drops is not counted towards
    the next collection; what it keeps is, as if made after it."""
    was_collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_collecting:
            gc.enable()


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (musl, macOS: nothing to call). Looked up among the
    process's own symbols: ctypes.util.find_library would run ldconfig at every start."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def one_malloc_arena(environ: Mapping[str, str] = os.environ) -> bool:
    """One malloc arena for all the threads started from now on (glibc's mallopt; called
    before the scheduler starts any), unless MALLOC_ARENA_MAX is set: then glibc does as
    it says. Whether it was set here (False: another C library, or left to the variable)."""
    if "MALLOC_ARENA_MAX" in environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, 1))


class HeapTrim:
    """Counts the receipts written (a bus subscriber); `run` trims after each burst."""

    def __init__(self, bus: EventBus, busy: Callable[[], bool], trim: Callable[[int], int] | None) -> None:
        self._busy = busy
        self._trim = trim
        self.written = 0  # receipts since the last trim
        self.trims = 0
        self._stop = asyncio.Event()
        self._unsubscribe = bus.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, ReceiptWritten):
            self.written += 1

    async def run(self, every: float = CHECK_EVERY) -> None:
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=every)
                except TimeoutError:
                    await self.trim_if_idle()
        finally:
            self._unsubscribe()

    async def trim_if_idle(self) -> bool:
        """Trim now if a burst is over (TRIM_AFTER receipts, nothing in flight)."""
        if self._trim is None or self.written < TRIM_AFTER or self._busy():
            return False
        self.written = 0
        await asyncio.to_thread(self._trim, 0)
        self.trims += 1
        return True

    def stop(self) -> None:
        self._stop.set()
