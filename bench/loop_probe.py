"""Where the engine's loop stalls: run the real program with every long loop iteration timed.

    LOOP_PROBE_OUT=/tmp/probe.json .venv/bin/python bench/loop_probe.py --no-ui --config C

runs `python -m cli` with its arguments, and at exit writes to LOOP_PROBE_OUT:
- "iterations": each turn of the loop whose callbacks ran longer than LOOP_PROBE_MS
  (default 12 ms): its duration, wall time, how many callbacks, the longest of them
  (a task's coroutine and line, or the callback's name), and the loop thread's CPU time
  in it (ms): a turn far longer than its CPU time waited (for the GIL, or for a core on a
  busy machine), one as long did work;
- "callbacks": each callback longer than LOOP_PROBE_MS, with the stacks a sampler thread
  saw the loop's thread in while it ran (every 2 ms);
- "gc": collections over 5 ms (generation, thread).
Use it as bench/control_bench.py's CLI to see what a /livez figure is made of (this is
how issue 24's stalls were found). Not a bench row: the probe itself costs some time.
"""

from __future__ import annotations

import asyncio.events
import atexit
import collections
import gc
import json
import os
import runpy
import selectors
import sys
import threading
import time
import traceback
from typing import Any

LIMIT = float(os.environ.get("LOOP_PROBE_MS", "12")) / 1000
_found: dict[str, list[Any]] = {"iterations": [], "callbacks": [], "gc": []}
_running: list[Any] = [None, 0.0]  # the callback running, since when
_ran: list[tuple[float, str]] = []  # this iteration's callbacks
_seen: list[str] = []  # stacks sampled during the running callback
_main = threading.get_ident()


def _name(handle: asyncio.events.Handle) -> str:
    callback = handle._callback  # noqa: SLF001 - a probe looks inside
    task = getattr(callback, "__self__", None)
    if task is not None and hasattr(task, "get_coro"):
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        return getattr(coro, "__qualname__", "?") + (f":{frame.f_lineno}" if frame is not None else "")
    return str(getattr(callback, "__qualname__", repr(callback)))[:80]


def _install() -> None:
    run = asyncio.events.Handle._run

    def timed(self: asyncio.events.Handle) -> None:
        started = time.perf_counter()
        _running[0], _running[1] = self, started
        try:
            run(self)
        finally:
            _running[0] = None
            took = time.perf_counter() - started
            _ran.append((round(took * 1000, 1), _name(self)))
            if took > LIMIT:
                stacks = collections.Counter(_seen).most_common(3)
                _found["callbacks"].append((round(took * 1000, 1), time.time(), stacks))
            _seen.clear()

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]
    select = selectors.EpollSelector.select
    last: list[float | None] = [None]
    cpu: list[float] = [0.0]

    def timed_select(self: selectors.EpollSelector, timeout: float | None = None) -> Any:
        now = time.perf_counter()
        if last[0] is not None and now - last[0] > LIMIT:
            _found["iterations"].append((round((now - last[0]) * 1000, 1), time.time(), len(_ran), max(_ran, default=None),
                                         round((time.thread_time() - cpu[0]) * 1000, 1)))
        _ran.clear()
        try:
            return select(self, timeout)
        finally:
            last[0] = time.perf_counter()
            cpu[0] = time.thread_time()

    selectors.EpollSelector.select = timed_select  # type: ignore[method-assign]
    gc_started = [0.0]

    def collected(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        elif (took := time.perf_counter() - gc_started[0]) > 0.005:
            _found["gc"].append((round(took * 1000, 1), info["generation"], time.time(), threading.current_thread().name))

    gc.callbacks.append(collected)
    threading.Thread(target=_sample, daemon=True).start()
    atexit.register(_write)


def _sample() -> None:
    while True:
        time.sleep(0.002)
        if _running[0] is None or time.perf_counter() - _running[1] < LIMIT / 2:
            continue
        frame = sys._current_frames().get(_main)  # noqa: SLF001
        if frame is not None:
            stack = traceback.extract_stack(frame)[-10:]
            _seen.append(" <- ".join(f"{os.path.basename(f.filename)}:{f.name}:{f.lineno}" for f in reversed(stack)))


def _write() -> None:
    with open(os.environ["LOOP_PROBE_OUT"], "w", encoding="utf-8") as out:
        json.dump(_found, out, indent=1)


if __name__ == "__main__":
    if "--no-ui" in sys.argv and os.environ.get("LOOP_PROBE_OUT"):  # the daemon, not a `ctl` client
        _install()
    sys.argv = ["cli", *sys.argv[1:]]
    runpy.run_module("cli", run_name="__main__")
