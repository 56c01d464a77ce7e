"""`vmsh-scheduler verify FILE...`: check receipts offline, print OK or FAIL with the reason."""

from __future__ import annotations

import asyncio
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


async def verify_files(
    paths: list[Path], out: TextIO, *, data_dir: Path | None = None, settings_for: SettingsFor | None = None
) -> int:
    """Verify each receipt; returns 0 if all passed, 1 if any failed."""
    clock = SystemClock()
    backends: dict[Path, Backends] = {}
    failed = 0
    for path in paths:
        root = data_dir or data_dir_of(path)
        registry = backends.setdefault(root, Backends(settings_for or (lambda target: None), root, clock))
        try:
            receipt = load_receipt(path)
            await verify_receipt(receipt, registry)
        except Exception as exc:  # ReceiptInvalid, unreadable file, or a backend we could not build
            failed += 1
            out.write(f"FAIL {path}: {exc}\n")
        else:
            out.write(f"OK {path}\n")
    for registry in backends.values():
        await registry.close()
    return 1 if failed else 0


def run_verify(paths: list[Path], out: TextIO, **kw: Any) -> int:
    return asyncio.run(verify_files(paths, out, **kw))
