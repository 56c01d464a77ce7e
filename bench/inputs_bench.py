"""Hostile inputs: how fast they are refused and what a bad batch folder costs over time.

- The "billion laughs" YAML (600 bytes, 9**9 values once expanded) loaded as a config
  file: refused at its line before anything is expanded (the old reader froze 34 s and
  took 3.1 GB, or crashed).
- 990 nested YAML lists: a file:line error (was an uncaught RecursionError, exit 1).
- A batch file that stays invalid, read 100,000 times (the engine reads a due folder
  every pass): memory blocks still held afterwards (the old cache re-raised one exception
  object, whose traceback grew by about 10 blocks, 2.4 KB, a read).
- A 50 MB batch file: refused from its size, bytes read.
- 50 namespaces falling back to one shared folder of 10,000 files, a writer adding a file
  before each pass and one more while it runs: listings of the folder per change (counted
  by wrapping os.scandir), and a pass's time on the event loop (the 50 `latest_batch`
  calls `_take` makes after the worker's prefetch) and on the worker thread. Before the
  shared hand-off (measured): 89 listings per change, 45 of them on the loop; 2.0 s a
  pass on the loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from core import sources
from core.config import ConfigError, load_config

GOOD = 'namespaces:\n  a:\n    cadence:\n      fast: {target: "local:dev", every: "10s"}\n'
BILLION_LAUGHS = "\n".join(
    ["lol1: &lol1 [" + ", ".join(['"lol"'] * 9) + "]"]
    + [f"lol{n}: &lol{n} [" + ", ".join([f"*lol{n - 1}"] * 9) + "]" for n in range(2, 10)]
) + "\n"
NESTED = "namespaces:\n" + "\n".join(" " * i + "-" for i in range(990)) + " x\n"
READS = 100_000
SHARED_NAMESPACES = 50
SHARED_FILES = 10_000
SHARED_CHANGES = 20


def refusal_ms(folder: Path, text: str) -> tuple[float, str]:
    path = folder / "config.yaml"
    path.write_text(text)
    best, message = float("inf"), ""
    for _ in range(5):
        started = time.perf_counter()
        try:
            load_config(path, env={}, cwd=folder)
        except ConfigError as exc:
            message = str(exc.issues[0])
        best = min(best, time.perf_counter() - started)
    return best * 1000, message


def _batch_text(n: int) -> str:
    return f'{{"id": "{n:06d}", "root": "sha256:{n:064x}"}}'


def shared_folder(tmp: Path) -> list[tuple[str, str, str]]:
    """50 namespaces on one 10,000-file folder with files being added (see the docstring)."""
    shared = tmp / "shared"
    shared.mkdir()
    for n in range(SHARED_FILES):
        (shared / f"{n:06d}.json").write_text(_batch_text(n))
    own = [shared / f"ns{n}" for n in range(SHARED_NAMESPACES)]
    sources.configure({f: sources.BatchLimits(fallbacks=(shared,)) for f in own})
    listings = {"loop": 0, "worker": 0}
    loop_thread = threading.current_thread()
    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str]) -> os.ScandirIterator[str]:
        if str(path) == str(shared):
            listings["loop" if threading.current_thread() is loop_thread else "worker"] += 1
        return real_scandir(path)

    async def passes() -> tuple[list[float], list[float]]:
        loop_s: list[float] = []
        worker_s: list[float] = []
        n = SHARED_FILES
        for _ in range(SHARED_CHANGES):
            (shared / f"{n:06d}.json").write_text(_batch_text(n))  # the writer
            started = time.perf_counter()
            await asyncio.to_thread(sources.prefetch, own)  # the engine's worker read
            worker_s.append(time.perf_counter() - started)
            (shared / f"{n + 1:06d}.json").write_text(_batch_text(n + 1))  # ... still writing
            started = time.perf_counter()
            for folder in own:  # each namespace's _take, on the loop
                sources.latest_batch(folder)
            loop_s.append(time.perf_counter() - started)
            n += 2
        return loop_s, worker_s

    os.scandir = scandir  # type: ignore[assignment]
    try:
        loop_s, worker_s = asyncio.run(passes())
    finally:
        os.scandir = real_scandir
        sources.configure({})
    per_change = (listings["loop"] + listings["worker"]) / SHARED_CHANGES
    return [
        (f"{SHARED_NAMESPACES} namespaces on a {SHARED_FILES:,}-file folder: listings per change",
         f"{per_change:g}", f"{listings['loop'] / SHARED_CHANGES:g} on the loop (before: 89, 45 on the loop)"),
        (f"{SHARED_NAMESPACES} namespaces on a {SHARED_FILES:,}-file folder: pass time on the loop",
         f"{max(loop_s) * 1000:.1f} ms", f"max of {SHARED_CHANGES} passes; median {sorted(loop_s)[len(loop_s) // 2] * 1000:.2f} ms"),
        (f"{SHARED_NAMESPACES} namespaces on a {SHARED_FILES:,}-file folder: prefetch (worker thread)",
         f"{sorted(worker_s)[len(worker_s) // 2] * 1000:.1f} ms", "median a pass"),
    ]


def run() -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="vmsh-inputs-bench-") as name:
        tmp = Path(name)
        ms, message = refusal_ms(tmp, GOOD + BILLION_LAUGHS)
        rows.append(("alias bomb (billion laughs) refused", f"{ms:.1f} ms", message.split(": ")[0]))
        ms, message = refusal_ms(tmp, NESTED)
        rows.append(("990 nested YAML lists refused", f"{ms:.1f} ms", message.split(": ")[0]))

        bad = tmp / "bad"
        bad.mkdir()
        (bad / "000001.json").write_text("{broken")
        old = time.time() - 60
        os.utime(bad / "000001.json", (old, old))
        os.utime(bad, (old, old))
        sources.clear_cache()
        for _ in range(1000):  # warm up: the cache entry, interned strings
            try:
                sources.latest_batch(bad)
            except sources.SourceError:
                pass
        blocks = sys.getallocatedblocks()
        started = time.perf_counter()
        for _ in range(READS):
            try:
                sources.latest_batch(bad)
            except sources.SourceError:
                pass
        seconds = time.perf_counter() - started
        grown = sys.getallocatedblocks() - blocks
        rows.append((f"bad batch read {READS:,} times: memory blocks kept", f"{grown}", "flat (old: ~10 a read)"))
        rows.append((f"bad batch read {READS:,} times", f"{seconds:.2f} s", f"{seconds / READS * 1e6:.1f} us a read"))

        huge = tmp / "huge"
        huge.mkdir()
        with open(huge / "000001.json", "wb") as f:
            f.truncate(50_000_000)
        started = time.perf_counter()
        try:
            sources.latest_batch(huge)
        except sources.SourceError:
            pass
        rows.append(("50 MB batch file refused unread", f"{(time.perf_counter() - started) * 1000:.2f} ms",
                     "limit scheduler.max_batch_bytes"))
        sources.clear_cache()
        rows.extend(shared_folder(tmp))
    return rows


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
