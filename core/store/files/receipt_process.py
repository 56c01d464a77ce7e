"""The file store's receipt writes in a process of their own (issue 24).

A chunk of receipts costs the writer thread ~40 us of Python a receipt (names, flushes'
bookkeeping, links' outcomes) beside the ~20 us the kernel spends on its files, and the
engine's loop ~40 us a job to apply it: on one GIL they ran one after the other, never
together, on a machine of two cores. Here the writer thread makes each receipt's bytes and
hands the chunk to a child process (`core.store.files.receipt_worker`), which writes it
with the same group commit as in process (`ReceiptStore`'s staging, flushes and links, in
the same order) with a GIL of its own, while the loop applies the chunk before.

What does not change:
- a receipt is returned as written only once the child flushed it (its answer comes after
  the last flush), and each receipt's outcome is its own (a path, or its error);
- writes stay one at a time: the writer thread waits for the child's answer;
- the child holds the data dir's lock too (its file descriptor, inherited): a scheduler
  killed while its child writes leaves no writer behind that a new one could start beside
  (the lock is free once the child, finding its requests' pipe closed, has ended);
- the child ignores SIGINT, SIGTERM and SIGHUP (a Ctrl-C or a closed terminal reaches the
  whole process group): it ends when the scheduler closes its pipe, once idle for
  `IDLE_EXIT` seconds (an idle scheduler keeps no second process) or at close.

When the child cannot be started or ends mid-chunk, every receipt of the chunk not
answered fails with an OSError (EIO), as a failed flush fails them: the engine keeps the
attestation and writes them again later, finding a receipt the child did link from its
token (core/store/files/claims.py). The next chunk starts a new child.

Frames: an 8-byte big-endian length, then as many bytes. A request is a header, a frame
holding a pickle (protocol 5) of (items, known): items (namespace folder, file name) in
order, `known` the parent's view of the folders named ("cleaned", "prepared" or "found":
`ReceiptStore._ready`); then a frame per receipt holding its bytes (empty: the writer
thread could not make them; a receipt's bytes never are), streamed as the writer thread
makes them: the child stages the first slice while the next ones are made (the writer
thread's bytes and the child's files, each on its own core). An answer is a frame holding
a pickle of one outcome per item: its path (text) or its exception.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import IO, Any

IDLE_EXIT = 2.0  # seconds without a chunk after which the child is ended
_LENGTH = struct.Struct(">Q")
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux
SEND_BUFFER = 64 * 1024  # bytes gathered before a write to the pipe (~20 receipts)

Item = tuple[str, str]  # namespace folder name, file name
Outcome = str | BaseException  # the receipt's path, or what kept it from being written
PIPE_BYTES = 1 << 20  # the requests' pipe, as large as Linux allows by default: ~300 receipts ahead


def write_frame(out: IO[bytes], data: bytes) -> None:
    out.write(_LENGTH.pack(len(data)))
    out.write(data)


def read_frame(source: IO[bytes]) -> bytes | None:
    """The next frame's bytes, or None at the end of the pipe (a frame cut short is an end too)."""
    head = source.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    data = source.read(length)
    return data if len(data) == length else None


def write_message(out: IO[bytes], value: Any) -> None:
    write_frame(out, pickle.dumps(value, protocol=5))
    out.flush()


def read_message(source: IO[bytes]) -> Any:
    """The next message, or None at the end of the pipe."""
    data = read_frame(source)
    return None if data is None else pickle.loads(data)


def read_data(source: IO[bytes]) -> bytes:
    """The next receipt's bytes of a request; ValueError when the scheduler could not make
    them, OSError when the request was cut short (the scheduler ended)."""
    data = read_frame(source)
    if data is None:
        raise OSError(errno.EPIPE, "the scheduler's request was cut short")
    if not data:
        raise ValueError("the receipt's bytes could not be made")
    return data


def picklable(outcome: Outcome) -> Outcome:
    """`outcome` as it can be sent: an exception that does not pickle becomes an OSError
    (EIO) naming it."""
    if isinstance(outcome, str):
        return outcome
    try:
        pickle.loads(pickle.dumps(outcome, protocol=5))
    except Exception:
        return OSError(errno.EIO, f"{type(outcome).__name__}: {outcome}")
    return outcome


class ReceiptProcess:
    """The child writing a receipts root's chunks (`write`), started when needed."""

    def __init__(self, root: str, keep_open: tuple[int, ...] = ()) -> None:
        self.root = root
        self.keep_open = keep_open  # inherited by the child: the data dir's lock
        self._child: subprocess.Popen[bytes] | None = None
        self._requests: IO[bytes] | None = None
        self._answers: IO[bytes] | None = None
        self._lock = threading.Lock()  # one chunk at a time; the idle timer waits for it
        self._last = 0.0  # when the last chunk was answered (time.monotonic)
        self._timer: threading.Timer | None = None
        self.started = 0  # children started, for tests and the bench

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None and self._child.poll() is None else None

    def start(self) -> None:
        """Start the child now, if it is not running (its imports then run beside the
        caller's work, not in the first chunk's way); raises OSError when it cannot be."""
        with self._lock:
            self._ensure()

    def write(self, items: list[Item], known: dict[str, str], data: Iterable[bytes | None]) -> list[Outcome]:
        """One outcome per item, in order, once the child has written (and flushed) them;
        `data`: each item's bytes (None: not made), sent as they are made."""
        with self._lock:
            try:
                self._ensure()
                requests, answers = self._requests, self._answers
                assert requests is not None and answers is not None
                write_message(requests, (items, known))
                for one in data:
                    write_frame(requests, one or b"")
                requests.flush()
                answer = read_message(answers)
            except OSError as exc:
                self._end()
                return [OSError(errno.EIO, f"the receipt writer process failed: {exc.strerror or exc}")] * len(items)
            except BaseException:  # a request half sent: the child would read the next one askew
                self._end()
                raise
            if not isinstance(answer, list) or len(answer) != len(items):
                code = self._end()
                why = f"the receipt writer process ended (exit {code}) before answering"
                return [OSError(errno.EIO, why)] * len(items)
            self._last = time.monotonic()
            self._idle_later()
            return answer

    def close(self) -> None:
        """End the child (it finishes nothing: no chunk is in flight once `write` returned)."""
        with self._lock:
            self._end()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _ensure(self) -> None:
        if self._child is not None and self._child.poll() is None:
            return
        self._end()
        requests_read, requests_write = os.pipe()
        answers_read, answers_write = os.pipe()
        try:
            self._child = subprocess.Popen(
                # -P: the working folder is not on its path (a `core` there is never imported)
                [sys.executable, "-P", "-m", "core.store.files.receipt_worker", self.root,
                 str(requests_read), str(answers_write)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                pass_fds=(requests_read, answers_write, *self.keep_open),
            )
        except BaseException:
            for fd in (requests_read, requests_write, answers_read, answers_write):
                os.close(fd)
            raise
        os.close(requests_read)
        os.close(answers_write)
        try:
            fcntl.fcntl(requests_write, F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # the default size: the writer thread only gets less far ahead
        self._requests = os.fdopen(requests_write, "wb", buffering=SEND_BUFFER)
        self._answers = os.fdopen(answers_read, "rb")
        self.started += 1

    def _end(self) -> int | None:
        """Close the pipes (the child ends at their end) and reap it; its exit code."""
        child, self._child = self._child, None
        for pipe in (self._requests, self._answers):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        self._requests = self._answers = None
        if child is None:
            return None
        try:
            return child.wait(timeout=5)
        except subprocess.TimeoutExpired:  # stuck in the kernel (a dead disk): left to end
            child.kill()
            return None

    def _idle_later(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(IDLE_EXIT, self._end_if_idle)
        self._timer.daemon = True
        self._timer.start()

    def _end_if_idle(self) -> None:
        with self._lock:
            if time.monotonic() - self._last >= IDLE_EXIT * 0.99:
                self._end()


__all__ = ["IDLE_EXIT", "Item", "Outcome", "ReceiptProcess", "picklable", "read_data", "read_message", "write_message"]
