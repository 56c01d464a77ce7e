"""`make bench`: every benchmark, one table.

    .venv/bin/python bench/run.py             # all of them (about five minutes)
    .venv/bin/python bench/run.py engine tui  # only some

Each module in SUITES has `run() -> [(what, figure, target or note)]`.
BENCH_IDLE_SECONDS shortens the headless idle window (default 60).
"""

from __future__ import annotations

import compileall
import importlib
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The scale suite's first passes create a folder and files per namespace: on a file system
# that pays for recent deletions at each create (ext4 without a journal, bench/scale_bench.py
# `disk_rows`), run after the suites that remove what they made (engine, anchor and receipts
# remove 100,000 receipts and more) they found the disk at 97 us of kernel CPU a create
# instead of 23-50, and the 10,000 pass at 2.17 s instead of 1.86-1.97. So it runs first
# after costs, which loads the reply check's libraries into this process as before (pages
# another process maps too are not counted in a scheduler's USS).
SUITES = {
    "costs": "bench.costs_bench",
    "scale": "bench.scale_bench",
    "engine": "bench.engine_bench",
    "anchor": "bench.anchor_bench",
    "receipts": "bench.receipts_bench",
    "inputs": "bench.inputs_bench",
    "headless": "bench.headless_bench",
    "livez": "bench.livez_bench",
    "tui": "bench.tui_bench",
    "terminal": "bench.terminal_bench",
    "control": "bench.control_bench",
    "cluster": "bench.cluster",
    "host_attacks": "bench.host_attacks_bench",
    "btc": "bench.btc_bench",
    "redundancy": "bench.redundancy_bench",
}


def table(rows: list[tuple[str, str, str]]) -> str:
    header = ("measure", "figure", "target / note")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]

    def line(r: tuple[str, str, str]) -> str:
        return f"| {r[0]:<{widths[0]}} | {r[1]:>{widths[1]}} | {r[2]:<{widths[2]}} |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def interpreter_row() -> tuple[str, str, str]:
    """The interpreter that runs the benches and the schedulers they spawn (sys.executable):
    every figure moves with its build. A distribution's CPython is built with PGO and LTO,
    libpython linked in; a default pyenv build has neither, and ran the same first pass of
    10,000 namespaces 8 % slower (docs/architecture.md)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    linked = "libpython a shared library" if "libpython" in maps else "libpython linked in"
    return (
        "reference: the interpreter of the benches and of the schedulers they start",
        f"{platform.python_implementation()} {platform.python_version()}",
        f"{os.path.realpath(sys.executable)}, {linked}",
    )


def main(argv: list[str]) -> int:
    names = argv or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        print(f"unknown suite(s): {', '.join(unknown)}; choose from {', '.join(SUITES)}", file=sys.stderr)
        return 2
    # The schedulers the benches spawn start from bytecode, as an installed one does (an
    # install compiles it): with PYTHONDONTWRITEBYTECODE set, each spawn would compile
    # core/ again (about 0.25 s of every start timed).
    for package in ("core", "cli", "tui"):
        compileall.compile_dir(ROOT / package, quiet=1)
    rows: list[tuple[str, str, str]] = [interpreter_row()]
    failed = False
    for name in names:
        started = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            rows += importlib.import_module(SUITES[name]).run()
        except Exception as exc:  # one broken suite must not hide the others' figures
            failed = True
            rows.append((f"{name}: FAILED", type(exc).__name__, str(exc)[:80]))
        print(f"  {name} took {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    print(table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
