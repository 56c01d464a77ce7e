"""Seed demo batches for `make run`: a namespace that would read no batch gets some.

A namespace reads its own folder, else (without `source`) the shared batch folder
(core.config `batches_dir`, `batch_fallbacks`); when the folder it reads now holds no
batch file, its own folder (named exactly as the namespace) is seeded. Namespaces with
`source: examples/batches/...` (config.example.yaml) already have theirs. The roots are
derived from the namespace name and a sequence number, so a demo data dir looks the same
on every machine. Run as `python -m core.demo --config FILE --data-dir DIR`.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from core.config import ConfigError, load_config
from core.sources import has_batch_files, source_folder, write_batch


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
    cfg = loaded.config
    sources = {name: (cfg.batches_dir(name), cfg.batch_fallbacks(name)) for name in cfg.namespaces}
    written = seed(sources)
    if written:
        print(f"seeded {written} demo batches for {len(sources)} namespaces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
