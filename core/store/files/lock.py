"""The single-instance data-dir lock: `<data_dir>/scheduler.lock`.

Held with an exclusive `flock` for the life of the scheduler and holding its pid, so a
second instance can say who holds it. The file is never deleted (deleting a lock file races
with the next locker); release empties it. Cluster mode holds none (`NoLock`): replicas
share a database, not a data dir.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from core.fsutil import FILE_MODE, ensure_dir


class LockHeld(Exception):
    """Another scheduler holds the data dir; `pid` is its pid when it could be read.

    The message says who holds it (pid, command line, whether that pid runs here) and what
    to do about it, for the operator who just saw the start refused.
    """

    def __init__(self, pid: int | None, path: str | os.PathLike[str]) -> None:
        self.pid = pid
        self.path = Path(path)
        if pid is None:
            text = (
                f"another scheduler holds {self.path} (its pid is not recorded yet)\n"
                f"  find it with `fuser -v {self.path}` and stop it with `kill -TERM <pid>`"
            )
        elif (command := process_command(pid)) is not None:
            text = (
                f"another scheduler holds {self.path}: pid {pid}, running {command}\n"
                f"  stop it with `kill -TERM {pid}` (it finishes what is in flight, saves its "
                "state and releases the lock), then start again"
            )
        else:
            text = (
                f"another scheduler holds {self.path}: it recorded pid {pid}, which is not a "
                "process here (a scheduler in another container or on another host sharing "
                "this data dir?)\n  stop that scheduler: the lock is free the moment it exits"
            )
        super().__init__(text)


def process_command(pid: int) -> str | None:
    """The command line of a running process, escaped and shortened for one message line;
    '(command line not readable)' when it runs but /proc does not say; None when no
    process has that pid."""
    from core.text import printable

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it runs, as another user
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "(command line not readable)"
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    if not words:
        return "(command line not readable)"
    command = printable(" ".join(words))
    return command if len(command) <= 300 else command[:297] + "..."


def _pid_in(data: bytes) -> int | None:
    """The pid a lock file holds ("<pid>\\n"), or None."""
    text = data.decode(errors="replace").strip()
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


class DataDirLock:
    """One scheduler per data dir: an exclusive, non-blocking flock on `<data_dir>/scheduler.lock`.

    The kernel releases the lock when the holder dies (even by kill -9), so a stale lock
    file never blocks a restart.
    """

    FILE_NAME = "scheduler.lock"

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / self.FILE_NAME
        self._fd: int | None = None
        self.taken_over: int | None = None  # pid of a holder that died holding it, if any

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def fd(self) -> int | None:
        """The lock's file descriptor while held: a child process that inherits it holds the
        lock with this scheduler, until both have ended."""
        return self._fd

    def acquire(self) -> DataDirLock:
        if self._fd is not None:
            return self
        ensure_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockHeld(self._read_holder(), self.path) from None
            raise
        try:
            # A pid left in the file: its holder ended without releasing (kill -9, a crash);
            # the kernel dropped its lock, and this scheduler takes over (see Runtime.announce).
            self.taken_over = _pid_in(os.pread(fd, 64, 0))
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            os.fsync(fd)
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _read_holder(self) -> int | None:
        # The holder writes its pid just after locking: give it a moment if the file is empty.
        deadline = time.monotonic() + 0.5
        while True:
            try:
                data = self.path.read_bytes()
            except OSError:
                data = b""
            if data.strip():
                return _pid_in(data)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class NoLock(DataDirLock):
    """Cluster mode's stand-in for the data-dir lock: replicas share a database, not a data
    dir, and never exclude each other (their leases do, per job)."""

    def acquire(self) -> DataDirLock:
        return self

    @property
    def held(self) -> bool:
        return True

    def release(self) -> None:
        pass
