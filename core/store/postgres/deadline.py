"""A deadline on every wait for the database, kept by the client (database.py Database).

A hung PostgreSQL (a stalled VM, a frozen disk, every server process stopped) fails
nothing: its kernel still completes TCP handshakes and buffers what clients send, so every
call just waits, and the server cannot enforce its own `statement_timeout`. The store's
connections are `WatchedConnection`s: each wait for the server (a statement, a commit, the
pool's check) is registered with the `Watchdog` for at most `deadline` seconds; past it
the watchdog shuts the connection's socket down, so the blocked call raises
`psycopg.OperationalError` ("no answer within ..."), which the store turns into
`StoreUnavailable`, and the pool discards that connection. Connecting is bounded by
`connect_timeout` (psycopg enforces it client side), acquiring a pooled connection by the
pool's timeout.

The server's own `statement_timeout` and `lock_timeout` are set a little shorter
(`Database`), so a server that is alive but slow answers first, with a clean error, and
keeps the connection.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.abc import RV, PQGen
from psycopg_pool import ConnectionPool

_local = threading.local()  # .deadline: a shorter one for this thread's waits (shorter_deadline)


class Unanswered(BaseException):  # noqa: N818 (not an error the pool may retry)
    """The pool's check of a connection got no answer within its deadline (`check`).

    A BaseException on purpose: the pool retries a check that failed with an Exception,
    waiting for another connection until its own timeout (and a backoff past it), which a
    hung server never gives; anything else it lets through at once, having dropped the
    connection. database.py Database.tx turns it into StoreUnavailable."""


class Watchdog:
    """Cuts the socket of a connection whose wait for the server outlives its deadline.

    One daemon thread, started at the first watch; it sleeps until the earliest deadline
    of the waits in progress (or until a wait is registered)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waits: dict[int, tuple[float, WatchedConnection]] = {}
        self._tokens = itertools.count()
        self._wake_at: float | None = None  # the deadline the thread sleeps towards
        self._thread: threading.Thread | None = None
        self.cut = 0  # connections cut so far (tests, diagnostics)

    def watch(self, conn: WatchedConnection, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        with self._cond:
            token = next(self._tokens)
            self._waits[token] = (deadline, conn)
            if self._thread is None or not self._thread.is_alive():  # first, or in a forked child
                self._thread = threading.Thread(target=self._run, name="pg-watchdog", daemon=True)
                self._thread.start()
            elif self._wake_at is None or deadline < self._wake_at:
                self._cond.notify()
        return token

    def unwatch(self, token: int) -> None:
        with self._cond:
            self._waits.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token in [t for t, (deadline, _) in self._waits.items() if deadline <= now]:
                    _, conn = self._waits.pop(token)
                    # Under the lock: the wait is still in progress (its unwatch would have
                    # removed it), so the socket is still this connection's.
                    conn.cut_socket()
                    self.cut += 1
                self._wake_at = min((deadline for deadline, _ in self._waits.values()), default=None)
                self._cond.wait(None if self._wake_at is None else max(0.0, self._wake_at - now))


WATCHDOG = Watchdog()


class WatchedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server has a deadline (None: none)."""

    deadline: float | None = None
    _watching: float | None = None  # the deadline of the wait in progress
    cut_after: float | None = None  # the deadline it had when the watchdog cut it

    def wait(self, gen: PQGen[RV], *args: Any, **kwargs: Any) -> RV:
        seconds = self.deadline
        shorter: float | None = getattr(_local, "deadline", None)
        if shorter is not None and (seconds is None or shorter < seconds):
            seconds = shorter
        if seconds is None:
            return super().wait(gen, *args, **kwargs)
        self._watching = seconds
        token = WATCHDOG.watch(self, seconds)
        try:
            return super().wait(gen, *args, **kwargs)
        except psycopg.OperationalError as exc:
            if self.cut_after is not None:
                raise psycopg.OperationalError(
                    f"no answer within {self.cut_after:g} s: the server hangs or cannot be reached "
                    "(connection closed)"
                ) from exc
            raise
        finally:
            WATCHDOG.unwatch(token)

    def cut_socket(self) -> None:
        """Shut the socket down under the call blocked on it (the watchdog's thread): the
        call fails at once and the connection is broken, never reused."""
        self.cut_after = self._watching
        try:
            dup = socket.socket(fileno=os.dup(self.fileno()))
        except (OSError, psycopg.Error):
            return  # already closed
        try:
            dup.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            dup.close()


def check(conn: WatchedConnection) -> None:
    """The pool's check of a connection before handing it out (an empty statement); no
    answer within the deadline raises `Unanswered`."""
    try:
        ConnectionPool.check_connection(conn)
    except psycopg.OperationalError as exc:
        if conn.cut_after is not None:
            raise Unanswered(str(exc)) from exc
        raise


@contextlib.contextmanager
def shorter_deadline(seconds: float) -> Iterator[None]:
    """In the block, this thread's waits for the server take at most `seconds` (or their
    connection's own deadline, if shorter): reads made on the event loop."""
    before = getattr(_local, "deadline", None)
    _local.deadline = seconds
    try:
        yield
    finally:
        _local.deadline = before
