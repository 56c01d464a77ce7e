"""A batch folder's newest file found and read by one C call, the GIL released once
(core/_batchread.c, built at install where there is a C compiler).

A first pass of 10,000 namespaces reads 10,000 folders. In Python each costs nine system
calls (the folder's stat, the listing's open, getdents twice and close, the file's open,
fstat, read and close), each handing the GIL over, and ~13 us of Python besides (the
listing's loop, the read's checks): 0.26-0.29 s on one thread, against 0.13 s for the
calls alone; in the scheduler, the reads share the GIL with the loop and the backends'
imports, and ran 0.57 s. Here one call lists the folder, picks its newest candidate in
core/sources.py's order (`natural_key`; of equal keys, the first listed) and reads it.

Only an ordinary folder is read here. Anything else gives None, and core/sources.py reads
the folder its own way, naming the problem: an error of any kind, no candidate, a name not
ASCII, an entry of unknown type, a file not regular, over the cap, or not read whole at
once. Either way the results are the same (tests/unit/test_batchread.py)."""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

from core.fsutil import TEMP_SUFFIX


def _native() -> ModuleType | None:
    try:
        from core import _batchread
    except ImportError:
        return None
    return _batchread


NATIVE = _native()  # None: core/sources.py reads every folder its own way


class Listed(NamedTuple):
    """A folder's stat as listed, its newest candidate's name, that file's bytes and stat."""

    folder_dev: int
    folder_ino: int
    folder_mtime_ns: int
    name: str
    data: bytes
    file_mtime_ns: int
    file_size: int


def newest(folder: str, cap: int, follow_symlinks: bool) -> Listed | None:
    """The folder listed and its newest candidate read (at most `cap` bytes), or None: read
    it the Python way (see the module docstring)."""
    if NATIVE is None:
        return None
    found = NATIVE.newest(folder, cap, TEMP_SUFFIX, follow_symlinks)
    return None if found is None else Listed._make(found)
