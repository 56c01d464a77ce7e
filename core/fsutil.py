"""Durable file writes: the one place that writes state, receipts, journal entries and batches.

`atomic_write_bytes` writes a temp file in the destination's folder, fsyncs it, renames it
over the destination with `os.replace` and fsyncs the folder. A kill -9 at any instant
leaves either the old file or the new one under the final name, never a torn one. A crash
can leave a temp file behind; temp files are named `.<name>.<8 hex>.tmp` (hidden, `.tmp`)
so readers that list folders skip them (see `is_temp_name`), and `remove_stale_temps`
deletes them at the next start (only names of exactly that shape).

Group commit: with `sync_folder=False` the folder fsync is left to the caller, who writes
many files and then calls `fsync_dirs` once per folder. Receipts go further (`stage_bytes`
many temp files, one `sync_barrier`, `publish` each under its final name, one
`sync_barrier` over their folders): a chunk of receipts costs a few flushes of the file
system (syncfs(2) on Linux), not two fsyncs per file, and a final name never points at
data that is not durable. `BackgroundFlushes` runs those flushes on a thread of their
own, so the writer stages the next files while the disk flushes.

Modes do not depend on the umask: folders are created 0750 and files 0640 (the data
dir holds no secret for the group, but nothing in it is for everyone).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pydantic_core

TEMP_SUFFIX = ".tmp"
DIR_MODE = 0o750
FILE_MODE = 0o640
_TEMP_RE = re.compile(r"\..+\.[0-9a-f]{8}\.tmp\Z", re.S)
_TEMP_STEM_BYTES = 200  # keeps the temp name under NAME_MAX when the final name fits


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


def fsync_dirs(folders: Iterable[str | os.PathLike[str]]) -> None:
    """fsync each distinct folder once (the second half of a group commit)."""
    for folder in dict.fromkeys(Path(f) for f in folders):
        fsync_dir(folder)


def ensure_dir(
    folder: str | os.PathLike[str], mode: int = DIR_MODE, *, parents_to_sync: list[Path] | None = None
) -> None:
    """Create `folder` and missing parents with `mode` whatever the umask; durable.

    Each folder created is fsynced into its parent, so a power cut cannot lose the
    folder of a file that was itself fsynced. Existing folders are left as they are.
    With `parents_to_sync` the parents are appended there for the caller's `fsync_dirs`
    (group commit) instead of being fsynced one by one.
    """
    folder = Path(folder)
    if folder.is_dir():
        return
    missing: list[Path] = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            continue
        os.chmod(path, mode)  # mkdir applies the umask; the mode must not depend on it
        if parents_to_sync is None:
            fsync_dir(path.parent)
        else:
            parents_to_sync.append(path.parent)


def temp_name(name: str) -> str:
    """The hidden temp name for a final `name`; short enough for NAME_MAX when `name` is."""
    stem = name.encode()[:_TEMP_STEM_BYTES].decode(errors="ignore")
    return f".{stem}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def is_stale_temp(name: str) -> bool:
    """True only for names `temp_name` makes (never other hidden files such as markers)."""
    return _TEMP_RE.match(name) is not None


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files a kill -9 left in `folder` (not recursive); returns them.

    Call only where no other process writes: under the data-dir lock, at start.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if is_stale_temp(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(Path(entry.path))
    if removed:
        fsync_dir(folder)
    return removed


_UMASK: int | None = None  # the process's umask, read once (nothing here changes it)


def umask() -> int:
    """The umask, from /proc/self/status (reading it with os.umask would change it for a
    moment under other threads); 0o777 (every mode fixed by chmod) where it cannot be read."""
    global _UMASK
    if _UMASK is None:
        _UMASK = 0o777
        try:
            with open("/proc/self/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Umask:"):
                        _UMASK = int(line.split()[1], 8)
                        break
        except (OSError, ValueError, IndexError):
            pass
    return _UMASK


def make_folder(folder: str, mode: int = DIR_MODE) -> bool:
    """Create one folder whose parent exists, with `mode` whatever the umask; False when it
    existed. The cheap form of `ensure_dir` for a group commit (one mkdir, no stat first):
    the caller's `sync_barrier` over the parent makes it durable."""
    try:
        os.mkdir(folder, mode)
    except FileExistsError:
        return False
    if umask() & mode:
        os.chmod(folder, mode)
    return True


def staged_name(folder: str, name: str, token: int) -> str:
    """The temp file `stage_in` writes `name` as in `folder` with `token`."""
    stem = name.encode()[:_TEMP_STEM_BYTES].decode(errors="ignore")
    return f"{folder}/.{stem}.{token & 0xFFFFFFFF:08x}{TEMP_SUFFIX}"


def stage_in(folder: str, name: str, data: bytes, token: int, mode: int = FILE_MODE) -> str:
    """`stage_bytes` for a group commit into a folder known to exist: the temp file
    `.<name>.<token as 8 hex>.tmp` (the caller gives each file of a chunk its own token),
    not fsynced; returns its path. A clash with a leftover temp name takes a random one."""
    tmp = staged_name(folder, name, token)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return str(stage_bytes(f"{folder}/{name}", data, mode))
    _fill(fd, tmp, data, mode, sync=False)
    return tmp


def _write_temp(folder: Path, name: str, data: bytes, mode: int, *, sync: bool = True) -> Path:
    """Write (and fsync, unless `sync` is False) a hidden temp file beside the destination."""
    ensure_dir(folder)
    tmp = folder / temp_name(name)
    _fill(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), tmp, data, mode, sync=sync)
    return tmp


def _fill(fd: int, tmp: str | os.PathLike[str], data: bytes, mode: int, *, sync: bool) -> None:
    """Write `data` into the new file `fd` (at `tmp`) with `mode` whatever the umask, fsync
    it if `sync`, close it; on any failure the file is removed."""
    try:
        if umask() & mode:
            os.fchmod(fd, mode)  # the umask must not change the requested mode
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    os.close(fd)


def unlink_quietly(path: str | os.PathLike[str]) -> None:
    """Remove `path` if it can be (a temp file given up on); an error is not reported."""
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, mode: int = FILE_MODE, *, sync_folder: bool = True
) -> None:
    """Replace `path` with `data` atomically and durably; creates parent folders.

    `sync_folder=False`: the rename is durable only after the caller's `fsync_dirs`.
    """
    path = Path(path)
    tmp = _write_temp(path.parent, path.name, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    if sync_folder:
        fsync_dir(path.parent)


def dumps_json(obj: Any, *, compact: bool = False) -> bytes:
    """UTF-8 JSON with a trailing newline; `compact` uses the fast C encoder (no indent).

    Indented, a document of strings, integers, booleans and nulls (a receipt) is encoded by
    pydantic_core, byte for byte what json.dumps(indent=2, ensure_ascii=False) writes, in a
    fifth of the time; one holding a float (whose text the two encoders may write
    differently) or a non-string key by json.dumps."""
    if compact:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    elif is_plain_json(obj):
        return pydantic_core.to_json(obj, indent=2) + b"\n"
    else:
        text = json.dumps(obj, ensure_ascii=False, indent=2)
    return (text + "\n").encode()


def is_plain_json(obj: Any) -> bool:
    """Only dicts with string keys, lists, strings, integers, booleans and None."""
    if isinstance(obj, dict):
        return all(type(k) is str and is_plain_json(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(is_plain_json(v) for v in obj)
    return obj is None or type(obj) in (str, int, bool)


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, mode: int = FILE_MODE, *, compact: bool = False
) -> None:
    """`atomic_write_bytes` of `obj` as UTF-8 JSON (indented unless `compact`)."""
    atomic_write_bytes(path, dumps_json(obj, compact=compact), mode)


def stage_bytes(path: str | os.PathLike[str], data: bytes, mode: int = FILE_MODE) -> Path:
    """Write `data` to a new temp file beside `path`, not fsynced; returns the temp file.

    The first step of a group commit: stage many files, `sync_barrier` once, `publish` each,
    `sync_barrier` over their folders. No final name points at data that is not durable.
    """
    path = Path(path)
    return _write_temp(path.parent, path.name, data, mode, sync=False)


def publish(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Give a staged temp file its final name unless a file has that name (False), then
    remove the temp name. Durable after the caller's `sync_barrier` over the folder."""
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system
            if os.path.lexists(path):
                return False
            os.replace(tmp, path)
    finally:
        unlink_quietly(tmp)
    return True


_SYNCFS: Any = False  # libc's syncfs, looked up at the first barrier


def _syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2) (Linux), or None where there is none."""
    global _SYNCFS
    if _SYNCFS is False:
        try:
            _SYNCFS = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        except (OSError, AttributeError):
            _SYNCFS = None
    return cast("Callable[[int], int] | None", _SYNCFS)


def sync_barrier(
    files: Iterable[str | os.PathLike[str]] = (),
    folders: Iterable[str | os.PathLike[str]] = (),
    *,
    on: Iterable[str | os.PathLike[str]] | None = None,
) -> None:
    """Make durable every write made before it to `files` (their data) and `folders` (the
    names created or removed in them). With syncfs(2) (Linux): one call per file system
    they are on, whatever their number (a chunk of 1,000 receipts costs one flush, not
    2,000 fsyncs); elsewhere an fsync of each file, then of each folder. Raises OSError
    when the flush fails (EIO): nothing written since the last barrier is known durable.

    `on`: a folder on each file system that holds any of them, as the caller knows (a
    receipts root and the few folders under it found on another one): with syncfs, those
    are flushed and `files` and `folders` are not looked at (finding the file systems of
    10,000 folders took a stat each)."""
    syncfs = _syncfs()
    if syncfs is None:
        for file in files:
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dirs(folders)
        return
    if on is None:
        file_paths = [os.fspath(f) for f in files]
        on = dict.fromkeys([*(os.fspath(f) for f in folders), *(os.path.dirname(f) for f in file_paths)])
        devices: dict[int, str | os.PathLike[str]] = {}
        for folder in on:
            try:
                devices.setdefault(os.stat(folder).st_dev, folder)
            except FileNotFoundError:
                continue
        on = devices.values()
    for folder in dict.fromkeys(on):
        try:
            fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            continue  # removed meanwhile: nothing of it to flush
        try:
            if syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs: {os.strerror(err)}", str(folder))
        finally:
            os.close(fd)


class BackgroundFlushes:
    """Flushes (`sync_barrier`s) run one after the other on a thread of its own, so that the
    caller stages more writes while the disk flushes (the thread waits in the kernel,
    without the GIL). One thread for a whole group commit: started at the first `start`,
    ended by `close` (a thread started per flush cost a GIL hand-over at each start)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def start(self, barrier: Callable[[], None]) -> Future[None]:
        """`barrier` begun; the future's `result()` waits for it (raising what it raised)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmsh-flush")
        return self._pool.submit(barrier)

    def close(self) -> None:
        """Wait for the flush still running, if any, and end the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def atomic_create_bytes(
    path: str | os.PathLike[str], data: bytes, mode: int = FILE_MODE, *, sync_folder: bool = True
) -> bool:
    """Durably create `path` with `data` only if no file has that name; False if one had.

    Like `atomic_write_bytes`, but the final step is `os.link`, which fails when the name
    exists, so an existing file is never overwritten, even by a racing writer. On file
    systems without hard links it falls back to an existence check and `os.replace`.
    """
    path = Path(path)
    tmp = _write_temp(path.parent, path.name, data, mode)
    if not publish(tmp, path):
        return False
    if sync_folder:
        fsync_dir(path.parent)
    return True


def create_empty(path: str | os.PathLike[str], mode: int = FILE_MODE) -> bool:
    """Create an empty file (a marker) with `mode`; False if one had that name.

    The caller fsyncs its folder (`fsync_dirs`), so many markers cost one folder fsync.
    """
    path = Path(path)
    ensure_dir(path.parent)
    return create_new(path, b"", mode)


def create_new(path: str | os.PathLike[str], data: bytes, mode: int = FILE_MODE) -> bool:
    """Create `path` (its folder exists) holding `data`, only if no file has that name
    (False if one had); not fsynced: the caller's `sync_barrier` makes it durable. A
    failed write removes it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    _fill(fd, path, data, mode, sync=False)
    return True


MKDIR_ARGS_BYTES = 96 * 1024  # the paths handed to one mkdir(1): far below ARG_MAX


def make_folders(parent: str, names: list[str], mode: int = DIR_MODE) -> list[str]:
    """Make the folders `names` in `parent` with `mode` whatever the umask; the names it
    made (not those that were there). Not durable until the caller's `sync_barrier` over
    `parent`.

    Made by mkdir(1) child processes, MKDIR_ARGS_BYTES of paths each: the kernel's work
    runs in another process, and this one waits in waitpid without the GIL. Made here,
    10,000 folders beside the first pass's batch reads took 0.8 s and held the reads up
    (two threads of short system calls hand the GIL over at each call). Where a child
    fails (a folder of its chunk was there, or no mkdir(1) can be run), its chunk is made
    here with `make_folder`; a folder found there is then counted as there before (it may
    be the child's: the caller only cleans it once more). An error making one raises.
    """
    paths = [f"{parent}/{name}" for name in names]
    made: list[str] = []
    mkdir = _mkdir_command()
    at = 0
    for chunk in _arg_chunks(paths):
        done = None
        if mkdir is not None:
            try:
                done = subprocess.run(
                    [mkdir, "-m", f"{mode:o}", "--", *chunk], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={"LC_ALL": "C"}, check=False,
                )
            except OSError:  # it could not be run: made here, as on a failure
                pass
        if done is not None and done.returncode == 0:
            made.extend(names[at:at + len(chunk)])
        else:
            made.extend(name for name, path in zip(names[at:at + len(chunk)], chunk, strict=True)
                        if make_folder(path, mode))
        at += len(chunk)
    return made


def _arg_chunks(paths: list[str]) -> Iterable[list[str]]:
    """`paths` in runs of at most MKDIR_ARGS_BYTES (one mkdir(1) each)."""
    chunk: list[str] = []
    size = 0
    for path in paths:
        length = len(path.encode(errors="surrogateescape")) + 1
        if chunk and size + length > MKDIR_ARGS_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(path)
        size += length
    if chunk:
        yield chunk


_MKDIR: Any = False  # mkdir(1)'s path, looked up at the first use


def _mkdir_command() -> str | None:
    global _MKDIR
    if _MKDIR is False:
        _MKDIR = next((p for p in ("/bin/mkdir", "/usr/bin/mkdir") if os.access(p, os.X_OK)), None) or shutil.which("mkdir")
    return cast("str | None", _MKDIR)
