"""`vmsh-scheduler verify FILE|DIR...`: check receipts offline, print OK or FAIL with the reason.

A directory stands for every `*.json` below it (a data dir's `receipts/`, one namespace's
folder). With more than one receipt, a count goes to stderr at the end.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from core.anchors.registry import Backends
from core.clock import SystemClock
from core.receipts import load_receipt, verify_receipt

SettingsFor = Callable[[str], Any]


def data_dir_of(receipt_path: Path) -> Path:
    """Receipts live at <data_dir>/receipts/<namespace>/<file>.json."""
    resolved = receipt_path.resolve()
    if len(resolved.parents) >= 3 and resolved.parents[1].name == "receipts":
        return resolved.parents[2]
    return Path.cwd()


def expand(paths: list[Path]) -> list[tuple[Path, str | None]]:
    """Files as given; a directory becomes the receipts below it, or an error if none."""
    out: list[tuple[Path, str | None]] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*.json")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            out += [(p, None) for p in found] or [(path, "no receipt files (*.json) below this folder")]
        else:
            out.append((path, None))
    return out


async def verify_files(
    paths: list[Path],
    out: TextIO,
    *,
    data_dir: Path | None = None,
    settings_for: SettingsFor | None = None,
) -> int:
    """Verify each receipt; returns 0 if all passed, 1 if any failed."""
    clock = SystemClock()
    backends: dict[Path, Backends] = {}
    failed = 0
    items = expand(paths)
    for path, problem in items:
        if problem:
            failed += 1
            out.write(f"FAIL {path}: {problem}\n")
            continue
        root = data_dir or data_dir_of(path)
        registry = backends.setdefault(root, Backends(settings_for or (lambda target: None), root, clock))
        try:
            receipt = load_receipt(path)
            await verify_receipt(receipt, registry)
        except Exception as exc:  # ReceiptInvalid, unreadable file, or a backend we could not build
            failed += 1
            reason = str(exc)  # file errors name the file (and line:col) already
            out.write(f"FAIL {reason}\n" if reason.startswith(f"{path}:") else f"FAIL {path}: {reason}\n")
        else:
            out.write(f"OK {path}\n")
    for registry in backends.values():
        await registry.close()
    if len(items) > 1:
        sys.stderr.write(f"{len(items)} receipts: {len(items) - failed} OK, {failed} failed\n")
    return 1 if failed else 0


def run_verify(paths: list[Path], out: TextIO, **kw: Any) -> int:
    return asyncio.run(verify_files(paths, out, **kw))
