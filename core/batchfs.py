"""A slice of a group commit's files staged, then published, in one pass of system calls.

Python 3.11 hands the GIL to a waiting thread at each system call, and a thread back from
its call waits up to the switch interval (1 ms) to take it again. The receipt writer makes
five calls a file (open, write, close, link, unlink) while the engine's loop applies the
chunk before: each call handed the loop the GIL, so the two ran one after the other,
never together (issue 24). `core._fsbatch`, a C extension built at install, makes a
slice's calls with the GIL released once: the kernel's part of the writes runs on one core
while the loop runs Python on the other. Where it was not built (no compiler), the same
calls are made here one by one, with the same results.

Each file's outcome is its own: one that cannot be written or linked does not stop the
others.
"""

from __future__ import annotations

import errno
from types import ModuleType

from core.fsutil import FILE_MODE, publish, stage_in, staged_name, umask


def _native() -> ModuleType | None:
    try:
        from core import _fsbatch
    except ImportError:
        return None
    return _fsbatch


NATIVE = _native()  # None: the calls are made one by one from Python


def stage_all(files: list[tuple[str, str, bytes, int]], mode: int = FILE_MODE) -> list[str | OSError]:
    """`stage_in(folder, name, data, token, mode)` of each (folder, name, data, token): its
    temp file's path, or the error that kept it from being written (nothing then left of
    it). Nothing is fsynced."""
    if NATIVE is None:
        return [_stage(*file, mode) for file in files]
    paths = [staged_name(folder, name, token) for folder, name, _, token in files]
    codes = NATIVE.stage_many(paths, [data for _, _, data, _ in files], mode, bool(umask() & mode))
    return [
        # any error: stage_in's own way (a leftover temp file of that name: a random one)
        path if code == 0 else _stage(*file, mode)
        for file, path, code in zip(files, paths, codes, strict=True)
    ]


def _stage(folder: str, name: str, data: bytes, token: int, mode: int) -> str | OSError:
    try:
        return stage_in(folder, name, data, token, mode)
    except OSError as exc:
        return exc


def publish_all(pairs: list[tuple[str, str]]) -> list[bool | OSError]:
    """`publish(tmp, path)` of each (tmp, path): True when linked, False when a file had that
    name (the temp file removed either way), or the error `publish` raised."""
    if NATIVE is None:
        return [_publish(tmp, path) for tmp, path in pairs]
    codes = NATIVE.link_many([tmp for tmp, _ in pairs], [path for _, path in pairs])
    return [
        # any other error: publish's own way (a file system without hard links renames)
        True if code == 0 else False if code == errno.EEXIST else _publish(tmp, path)
        for (tmp, path), code in zip(pairs, codes, strict=True)
    ]


def _publish(tmp: str, path: str) -> bool | OSError:
    try:
        return publish(tmp, path)
    except OSError as exc:
        return exc


__all__ = ["NATIVE", "publish_all", "stage_all"]
