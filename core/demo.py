"""Seed demo batches for `make run`: a namespace that would read no batch gets some.

A namespace reads its own folder, else (without `source`) the shared batch folder
(core.config `batches_dir`, `batch_fallbacks`); when the folder it reads now holds no
batch file, its own folder (named exactly as the namespace) is seeded. Namespaces with
`source: examples/batches/...` (config.example.yaml) already have theirs. The roots are
derived from the namespace name and a sequence number, so a demo data dir looks the same
on every machine. Run as `python -m core.demo --config FILE --data-dir DIR`.

`--live` (make run, while the dashboard runs) then keeps writing: a new root for
`demo:live` every few seconds, and for `demo:flaky` too, except that now and then its
newest batch is broken for a few steps (a batch without a root: its job fails and backs
off) before a good one follows (it recovers). It stops when its parent process is gone.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import threading
from pathlib import Path

from core.config import ConfigError, load_config
from core.fsutil import atomic_write_json
from core.sources import has_batch_files, source_folder, write_batch

LIVE = "demo:live"  # a new root at every step
FLAKY = "demo:flaky"  # a new root at every step, but broken for BROKEN_STEPS of every CYCLE
CYCLE = 10
BROKEN_STEPS = 3
STEP_SECONDS = 3.0
KEEP = 50  # batch files kept in each live folder (the oldest go)


def demo_root(namespace: str, n: int) -> str:
    return "sha256:" + hashlib.sha256(f"{namespace}#{n}".encode()).hexdigest()


def seed(sources: dict[str, tuple[Path, tuple[Path, ...]]], count: int = 3) -> int:
    """Write `count` batches into the own folder of each namespace (name -> (own folder,
    fallbacks)) that reads no batch file now; returns how many were written."""
    written = 0
    for namespace, (folder, fallbacks) in sources.items():
        reads = source_folder(folder, fallbacks)
        if reads is not None and has_batch_files(reads):
            continue
        for n in range(1, count + 1):
            write_batch(folder, f"{n:06d}", demo_root(namespace, n))
            written += 1
    return written


def next_number(folder: Path) -> int:
    """One past the highest `<n>.json` in `folder` (1 for none): a restart goes on."""
    numbers = [int(m.group(1)) for p in folder.glob("*.json") if (m := re.fullmatch(r"(\d+)\.json", p.name))]
    return max(numbers, default=0) + 1


def broken(step: int) -> bool:
    """Whether the flaky namespace's batch at `step` (from 1) is a broken one."""
    return step % CYCLE >= CYCLE - BROKEN_STEPS


def live_step(folders: dict[str, Path], step: int) -> list[str]:
    """Step `step` of the live demo: a batch for each of LIVE and FLAKY that `folders`
    (namespace -> own folder) has; FLAKY's is broken (no root) when `broken(step)`.
    Returns what it wrote, as `namespace: file`."""
    wrote = []
    for namespace in (LIVE, FLAKY):
        folder = folders.get(namespace)
        if folder is None:
            continue
        n = next_number(folder)
        if namespace == FLAKY and broken(step):
            path = folder / f"{n:06d}.json"
            atomic_write_json(path, {"id": f"{n:06d}", "note": "a demo batch without a root: this job fails"})
        else:
            path = write_batch(folder, f"{n:06d}", demo_root(namespace, n))
        wrote.append(f"{namespace}: {path.name}")
        _prune(folder)
    return wrote


def _prune(folder: Path) -> None:
    """The oldest batch files of a live folder beyond KEEP removed (a demo left running)."""
    numbered = sorted((int(p.stem), p) for p in folder.glob("*.json") if p.stem.isdigit())
    for _, path in numbered[:-KEEP]:
        path.unlink(missing_ok=True)


def run_live(folders: dict[str, Path], stop: threading.Event, every: float = STEP_SECONDS) -> None:
    """live_step every `every` s until `stop` is set or the parent process is gone (the
    shell of `make run`, whose dashboard has exited)."""
    parent = os.getppid()
    step = 1
    while not stop.wait(every) and os.getppid() == parent:
        live_step(folders, step)
        step += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.demo", description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("config.example.yaml"))
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--live", action="store_true", help=f"keep writing batches for {LIVE} and {FLAKY}")
    args = parser.parse_args(argv)
    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    try:
        loaded = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    cfg = loaded.config
    sources = {name: (cfg.batches_dir(name), cfg.batch_fallbacks(name)) for name in cfg.namespaces}
    if args.live:
        folders = {name: folder for name, (folder, _) in sources.items() if name in (LIVE, FLAKY)}
        try:
            run_live(folders, threading.Event())
        except KeyboardInterrupt:
            pass
        return 0
    written = seed(sources)
    if written:
        print(f"seeded {written} demo batches for {len(sources)} namespaces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
