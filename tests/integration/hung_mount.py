"""A FUSE file system that can stop answering: a dead network mount, for real.

    python hung_mount.py BACKING MOUNTPOINT GATE

Mounts a read-only mirror of the folder BACKING at MOUNTPOINT. While the file GATE exists,
every request (but the mount point's own attributes) waits until it is removed, as a hard
NFS mount whose server is gone does: the caller sleeps in the kernel, uninterruptible, and
neither a timeout nor SIGTERM wakes it. Remove GATE and every waiting request goes on.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from fuse import FUSE, FuseOSError, Operations  # fusepy


class Mirror(Operations):  # fusepy: untyped (mypy override in pyproject.toml)
    def __init__(self, backing: str, gate: str) -> None:
        self.backing, self.gate = backing, gate

    def _wait(self) -> None:
        while os.path.exists(self.gate):
            time.sleep(0.05)

    def _path(self, path: str) -> str:
        self._wait()
        return os.path.join(self.backing, path.lstrip("/"))

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        full = os.path.join(self.backing, path.lstrip("/")) if path == "/" else self._path(path)
        try:
            st = os.lstat(full)
        except OSError as exc:
            raise FuseOSError(exc.errno or errno.EIO) from None
        keys = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_atime", "st_mtime", "st_ctime")
        return {k: getattr(st, k) for k in keys} | {"st_mtime": st.st_mtime_ns / 1e9}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def open(self, path: str, flags: int) -> int:
        return os.open(self._path(path), os.O_RDONLY)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._wait()
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0


if __name__ == "__main__":
    backing, mountpoint, gate = sys.argv[1:4]
    FUSE(Mirror(backing, gate), mountpoint, foreground=True, nothreads=False, ro=True)
