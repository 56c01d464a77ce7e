"""Durable file writes: the one place that writes state, receipts, journal entries and batches.

`atomic_write_bytes` writes a temp file in the destination's folder, fsyncs it, renames it
over the destination with `os.replace` and fsyncs the folder. A kill -9 at any instant
leaves either the old file or the new one under the final name, never a torn one. A crash
can leave a temp file behind; temp files are named `.<name>.<random>.tmp` (hidden, `.tmp`)
so readers that list folders skip them (see `is_temp_name`).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def is_temp_name(name: str) -> bool:
    """True for names that are never final files: hidden or left over temp files."""
    return name.startswith(".") or name.endswith(TEMP_SUFFIX)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """fsync a folder so a rename or unlink in it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(folder: Path, name: str, data: bytes, mode: int) -> Path:
    """Write and fsync a hidden temp file beside the destination; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not change the requested mode
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically and durably; creates parent folders."""
    path = Path(path)
    tmp = _write_temp(path.parent, path.name, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def dumps_json(obj: Any, *, compact: bool = False) -> bytes:
    """UTF-8 JSON with a trailing newline; `compact` uses the fast C encoder (no indent)."""
    if compact:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(obj, ensure_ascii=False, indent=2)
    return (text + "\n").encode()


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, mode: int = 0o644, *, compact: bool = False
) -> None:
    """`atomic_write_bytes` of `obj` as UTF-8 JSON (indented unless `compact`)."""
    atomic_write_bytes(path, dumps_json(obj, compact=compact), mode)


def atomic_create_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> bool:
    """Durably create `path` with `data` only if no file has that name; False if one had.

    Like `atomic_write_bytes`, but the final step is `os.link`, which fails when the name
    exists, so an existing file is never overwritten, even by a racing writer. On file
    systems without hard links it falls back to an existence check and `os.replace`.
    """
    path = Path(path)
    tmp = _write_temp(path.parent, path.name, data, mode)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            if os.path.lexists(path):
                return False
            os.replace(tmp, path)
    finally:
        _unlink_quietly(tmp)
    fsync_dir(path.parent)
    return True
