"""The engine's disk writer: one thread that runs every blocking journal, receipt and
state write, so the event loop never waits on an fsync.

One thread, not a pool: writes keep the order the engine issued them in (the intent
before its receipts, the receipts before the state that accounts for them), and a pass
of 10,000 namespaces is written as a few group commits instead of 40,000 fsyncs on the
loop. Any exception from a write comes back as a `StorageError` naming the step, the
path and the errno; it never escapes as an unretrieved task exception.

`fault` is a test seam: called with the step name on the writer thread before each
write, it may raise an OSError (ENOSPC, EACCES) exactly where a real disk would.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from core.errors import StorageError

T = TypeVar("T")
Fault = Callable[[str], None]


class DiskWriter:
    def __init__(self, fault: Fault | None = None) -> None:
        self.fault = fault
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmsh-writer")
        return self._executor

    async def run(self, op: str, path: str | os.PathLike[str] | None, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the writer thread; failures become StorageError(op, path)."""
        call = functools.partial(self.call, op, path, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._pool(), call)

    def call(self, op: str, path: str | os.PathLike[str] | None, fn: Callable[..., T], *args: Any) -> T:
        """The same, on the calling thread (shutdown paths that cannot await)."""
        try:
            if self.fault is not None:
                self.fault(op)
            return fn(*args)
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(op, None if path is None else str(path), exc) from exc

    def close(self) -> None:
        """Let queued writes finish, then end the thread (a later `run` starts a new one)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


__all__ = ["DiskWriter"]
