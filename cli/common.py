"""What every subcommand shares: the options accepted before and after it, the overrides
they make, loading the configuration with them, printing its errors.

Imports nothing slow at module level (see cli/main.py): core.config is imported on use.
"""

from __future__ import annotations

import sys
from pathlib import Path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing before main() runs
if TYPE_CHECKING:
    import argparse
    from typing import TextIO

    from core.config import ConfigError, LoadedConfig


def add_common(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """Options accepted before and after the subcommand."""
    import argparse

    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--config", type=Path, metavar="FILE", default=default,
                        help="config file (default: VMSH_CONFIG, the VMSH_ROOT layout, ./config.yaml)")
    parser.add_argument("--data-dir", type=Path, metavar="DIR", default=default,
                        help="state, receipts and lock folder (overrides scheduler.data_dir)")
    parser.add_argument("--log-level", metavar="LEVEL", default=default,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"],
                        help="DEBUG, INFO, WARNING or ERROR")


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    return {
        "config": getattr(args, "file", None) or args.config,
        "data_dir": args.data_dir,
        "log_level": args.log_level.upper() if args.log_level else None,
        "theme": getattr(args, "theme", None),
    }


def load(args: argparse.Namespace) -> LoadedConfig:
    from core.config import load_config

    return load_config(overrides=overrides_from(args))


def print_errors(error: ConfigError, *, file: TextIO | None = None) -> None:
    from core.text import printable

    out = file or sys.stderr
    for issue in error.issues:
        print(printable(str(issue), lines=True), file=out)  # names and values come from the files
    n = len(error.issues)
    print(f"configuration invalid: {n} error{'s' if n != 1 else ''}", file=out)

