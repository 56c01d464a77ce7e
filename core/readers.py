"""Reads that may never return, on daemon threads, waited for with a deadline.

A batch folder on a dead network mount (NFS hard mount, a FUSE server that stopped
answering) blocks `stat`, `scandir` and `open` for ever, in uninterruptible sleep. On the
event loop that stops everything; on asyncio's default executor it stops the pass that
awaits it and, at exit, the process (the executor's threads are joined). Here:

- `Readers.submit(key, fn)` runs `fn()` on one of a few daemon threads. While a read of
  `key` has not ended, submitting the key again returns that same read: a hung folder holds
  one thread, however many passes ask for it.
- `off_loop(fn)`: one call on a new daemon thread, as a future of the running loop (the
  config reads of the watcher and the reload).
- `Readers.wait(reads, timeout)` waits for them until the deadline, never longer. A thread
  busy on one read for more than `stuck_after` seconds no longer counts as a reader: another
  is started (up to `most` threads in all), so the other folders are still read.
- `wait(reads, Patience(stall, most))`: a wait that goes on while the pool's reads make
  progress: it gives up only once `stall` seconds passed without any read of the pool
  ending (or `most` seconds in all). 100,000 folders read in 15 s are all
  waited for; a dead mount among them holds the wait `stall` seconds past the others.
- `submit_many(jobs, chunk=n)`: the reads handed to a thread `n` at a time, run one after
  the other (the thread's hand-over, its locks and its GIL switches paid once per `n`
  cheap reads, not per read: 100,000 folders). Each is still its own `Read`; a thread
  stuck on one read for `stuck_after` seconds gives the rest of its chunk back to the
  queue, so a dead mount holds only the read that hangs, as without chunks.
- One thread reads while reads are quick (a local disk: a read is tens of microseconds,
  most of them Python's, and more threads only trade the GIL back and forth: 10,000
  folders took 0.31 s on one thread, 0.62 s on two and 0.77 s on four); once a read has
  run `slow_after` seconds (1 ms: a local read is ~30 us), or a chunk's reads took that
  long each on average (a network mount's round trips: the threads wait in the kernel,
  not for the GIL), up to `live` read at once, and a thread whose chunk was quick again
  ends, down to one.
- Idle threads end after `idle_exit` seconds; nothing ever joins a thread, so a read that
  never returns cannot keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_S = 0.05  # how often a waiter looks at the pool while it waits


@dataclass(frozen=True, slots=True)
class Patience:
    """A wait that lasts while the pool's reads make progress (`Readers.wait`): it ends
    `stall` seconds without a read of the pool ending, or `most` seconds in all, or once
    `quit` is set (the caller stops)."""

    stall: float
    most: float
    quit: threading.Event | None = None


_EVENTS = threading.Lock()  # makes a `Done`'s event


class Done:
    """A read's end: threading.Event's `is_set`, `set` and `wait`, its Event made only when
    a waiter has to sleep on it (a waiter looks at the last read first: the others have
    ended by then). 100,000 reads a pass made 100,000 Events (a Condition, a lock and a
    deque each) and set them, for a waiter that slept on a handful."""

    __slots__ = ("_flag", "_event")

    def __init__(self) -> None:
        self._flag = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True  # before the event is looked at: see wait
        event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        event = self._event
        if event is None:
            with _EVENTS:
                event = self._event
                if event is None:
                    event = self._event = threading.Event()
        # Made before the flag is read again: a `set` that came before it saw no event, but
        # its flag is seen here; one that comes after it sets the event.
        return self._flag or event.wait(timeout)


@dataclass(eq=False, slots=True)
class Read(Generic[T]):
    """One read: `done` is set once `fn` returned (`value`) or raised (`error`)."""

    key: str
    fn: Callable[[], T]
    started: float | None = None  # monotonic, when a thread took it
    done: Done = field(default_factory=Done)
    value: T | None = None
    error: BaseException | None = None

    def running_for(self, now: float) -> float:
        """Seconds since a thread took it (0 while it waits for one)."""
        return 0.0 if self.started is None else max(0.0, now - self.started)


@dataclass(eq=False, slots=True)
class _Chunk:
    """Reads handed to one thread together: it runs `reads[next]`, then the next."""

    reads: list[Read[object]]
    next: int = 0


class Readers:
    """A small pool of daemon threads for reads that may hang (see the module docstring)."""

    def __init__(
        self,
        *,
        live: int = 4,
        most: int = 64,
        stuck_after: float = 1.0,
        slow_after: float = 0.001,
        idle_exit: float = 30.0,
        name: str = "vmsh-read",
    ) -> None:
        self.live, self.most, self.stuck_after, self.idle_exit = live, most, stuck_after, idle_exit
        self.slow_after = slow_after
        self._slow = False  # the reads wait on their storage: `live` threads, not one
        self._name = name
        self._queue: queue.SimpleQueue[_Chunk] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending: dict[str, Read[object]] = {}  # key -> its read, until it ends
        self._busy: dict[int, tuple[Read[object], _Chunk]] = {}  # thread id -> the read it is on, its chunk
        self._threads = 0
        self._ended = 0  # reads ended so far: a patient wait's measure of progress

    def submit(self, key: str, fn: Callable[[], T]) -> Read[T]:
        """The read of `key` not ended yet, else a new one of `fn()`."""
        return self.submit_many([(key, fn)])[key][0]

    def submit_many(
        self, jobs: Iterable[tuple[str, Callable[[], T]]], *, chunk: int = 1
    ) -> dict[str, tuple[Read[T], bool]]:
        """`submit` of each (key, fn), under one lock: each key's read and whether this call
        started it (False: a read of that key had not ended yet, and is returned). The new
        reads go to the threads `chunk` at a time (see the module docstring)."""
        out: dict[str, tuple[Read[T], bool]] = {}
        new: list[Read[object]] = []
        with self._lock:
            pending = self._pending
            for key, fn in jobs:
                read = pending.get(key)
                started = read is None
                if read is None:
                    read = Read(key, fn)
                    pending[key] = read
                    new.append(read)
                out[key] = (read, started)  # type: ignore[assignment]
            for at in range(0, len(new), chunk):
                self._queue.put(_Chunk(new[at:at + chunk]))
        self._grow()
        return out

    def pending(self, key: str) -> Read[object] | None:
        with self._lock:
            return self._pending.get(key)

    def wait(self, reads: Iterable[Read[T]], timeout: float | Patience | None) -> bool:
        """Wait until every read ended or `timeout` seconds passed; whether all ended. A
        `Patience`: until every read ended, or the pool made no progress for its `stall`
        seconds (or its `most` passed, or its `quit` was set)."""
        if isinstance(timeout, Patience):
            return self._wait_patiently(reads, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        for read in _last_first(reads):
            while not read.done.is_set():
                left = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
                if left <= 0:
                    return False
                if not read.done.wait(left):
                    self._grow()  # a read may have got stuck since: replace its thread
        return True

    def _wait_patiently(self, reads: Iterable[Read[T]], kept: Patience) -> bool:
        now = time.monotonic()
        deadline, seen, since = now + kept.most, self._ended, now
        for read in _last_first(reads):
            while not read.done.is_set():
                now = time.monotonic()
                if self._ended != seen:  # some read of the pool ended: still progressing
                    seen, since = self._ended, now
                left = min(_POLL_S, deadline - now, since + kept.stall - now)
                if left <= 0 or (kept.quit is not None and kept.quit.is_set()):
                    return False
                if not read.done.wait(left):
                    self._grow()
        return True

    def threads(self) -> int:
        with self._lock:
            return self._threads

    def _grow(self) -> None:
        now = time.monotonic()
        with self._lock:
            stuck = 0
            for read, chunk in self._busy.values():
                running = read.running_for(now)
                if running > self.stuck_after:
                    stuck += 1
                    if chunk.next < len(chunk.reads):  # the rest of its chunk goes to another thread
                        self._queue.put(_Chunk(chunk.reads[chunk.next:]))
                        del chunk.reads[chunk.next:]
                elif running > self.slow_after:
                    self._slow = True
            if self._threads - stuck >= self._wanted() or self._threads >= self.most:
                return
            if not self._queue.qsize():
                return
            self._threads += 1
        threading.Thread(target=self._work, name=self._name, daemon=True).start()

    def _work(self) -> None:
        me = threading.get_ident()
        while True:
            try:
                chunk = self._queue.get(timeout=self._idle_wait())
            except queue.Empty:
                with self._lock:
                    if self._queue.qsize():
                        continue
                    self._threads -= 1
                return
            started, count = time.monotonic(), len(chunk.reads)
            self._run(me, chunk)
            del chunk  # an idle thread keeps none of its reads' results
            with self._lock:
                self._slow = time.monotonic() - started > self.slow_after * max(1, count)
                if not self._slow and self._threads - self._stuck(time.monotonic()) > 1:
                    self._threads -= 1  # quick reads again: one thread reads them
                    return

    def _idle_wait(self) -> float:
        """How long an idle thread waits for a chunk before it ends: `idle_exit`, or a
        moment for a thread more than the reads want."""
        with self._lock:
            surplus = self._threads - self._stuck(time.monotonic()) > self._wanted()
        return _POLL_S if surplus else self.idle_exit

    def _wanted(self) -> int:
        """Threads reading at once, not counting stuck ones (under the lock)."""
        return self.live if self._slow else 1

    def _stuck(self, now: float) -> int:
        """Threads on one read for more than `stuck_after` (under the lock)."""
        return sum(1 for read, _ in self._busy.values() if read.running_for(now) > self.stuck_after)

    def _run(self, me: int, chunk: _Chunk) -> None:
        """The chunk's reads one after the other; one lock a read (its end and the next's
        start), its `done` set outside the lock."""
        ended: Read[object] | None = None
        while True:
            with self._lock:
                if ended is not None:
                    if self._pending.get(ended.key) is ended:
                        del self._pending[ended.key]
                        if not self._pending:  # a new one: the emptied dict kept its table
                            self._pending = {}  # (400 KiB after a pass of 10,000 reads)
                    self._ended += 1
                if chunk.next >= len(chunk.reads):
                    self._busy.pop(me, None)
                    read = None
                else:
                    read = chunk.reads[chunk.next]
                    chunk.next += 1
                    read.started = time.monotonic()
                    self._busy[me] = (read, chunk)
            if ended is not None:
                ended.done.set()
            if read is None:
                return
            try:
                read.value = read.fn()
            except BaseException as exc:  # handed to whoever waits for it
                read.error = exc
            ended = read


def _last_first(reads: Iterable[Read[T]]) -> list[Read[T]]:
    """The reads in the order a waiter looks at them: the last submitted first. The threads
    take them in order, so waiting for the first would wake the waiter at each read's end
    (a GIL hand-over each: as much CPU again as a cheap read); the last ends about last."""
    return list(reads)[::-1]


def off_loop(fn: Callable[[], T]) -> asyncio.Future[T]:
    """`fn()` on a new daemon thread, as a future of the running loop.

    Unlike `asyncio.to_thread`, nothing waits for the thread: neither the loop's shutdown
    (asyncio.run joins its default executor's threads) nor the interpreter's exit. A read
    of the config that never returns (a hung network mount) cannot keep the process from
    exiting; its result, if it ever comes, is dropped.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    threading.Thread(target=run, name="vmsh-config-read", daemon=True).start()
    return future
