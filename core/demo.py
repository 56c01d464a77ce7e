"""Seed demo batches for `make run`: every job's source folder gets batches if it has none.

The roots are derived from the namespace name and a sequence number, so a demo data
dir looks the same on every machine. Run as `python -m core.demo --config FILE --data-dir DIR`.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from core.config import ConfigError, load_config
from core.sources import write_batch


def demo_root(namespace: str, n: int) -> str:
    return "sha256:" + hashlib.sha256(f"{namespace}#{n}".encode()).hexdigest()


def seed(sources: dict[str, Path], count: int = 3) -> int:
    """Write `count` batches into each empty source folder; returns how many were written."""
    written = 0
    for namespace, folder in sources.items():
        if folder.is_dir() and any(p.suffix == ".json" for p in folder.iterdir()):
            continue
        for n in range(1, count + 1):
            write_batch(folder, f"{n:06d}", demo_root(namespace, n))
            written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.demo", description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("config.example.yaml"))
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args(argv)
    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    try:
        loaded = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    sources = {job.namespace: job.source for job in loaded.config.jobs()}
    written = seed(sources)
    if written:
        print(f"seeded {written} demo batches for {len(sources)} namespaces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
