"""Hostile inputs: how fast they are refused and what a bad batch folder costs over time.

- The "billion laughs" YAML (600 bytes, 9**9 values once expanded) loaded as a config
  file: refused at its line before anything is expanded (the old reader froze 34 s and
  took 3.1 GB, or crashed).
- 990 nested YAML lists: a file:line error (was an uncaught RecursionError, exit 1).
- A batch file that stays invalid, read 100,000 times (the engine reads a due folder
  every pass): memory blocks still held afterwards (the old cache re-raised one exception
  object, whose traceback grew by about 10 blocks, 2.4 KB, a read).
- A 50 MB batch file: refused from its size, bytes read.
"""

from __future__ import annotations

import os
import sys
import tempfile
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
    return rows


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
