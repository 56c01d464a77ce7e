"""The control API on a Unix domain socket (docs/control-api.md): snapshot, events, commands.

Served by every running scheduler (a service of core/services.py), so `ctl` and attached
dashboards reach a headless daemon. HTTP/1.1 + JSON, one request per connection, the
request head read as core/observe/http.py reads it (bounded, timed). What crosses the
socket is encoded by core/wire.py; the operations are RuntimeControl's (core/runtime_control.py).

- Who connects: the socket's permissions (`control.mode`, `control.group`). Who may change
  things: a peer (SO_PEERCRED) whose primary or supplementary group is
  `control.readonly_group` gets 403 on every mutating command. Each mutating command is
  appended, durably, to the store's audit log (`<data_dir>/audit.jsonl`, 0640, rotated by
  size, or the PostgreSQL store's `audit` table) and logged. A refused one (any status but
  200) is recorded compactly (command, job/namespace, status, reason: never the body) and
  at most AUDIT_REFUSED_PER_WINDOW per uid per AUDIT_WINDOW; the rest are counted and
  summed up in one line per uid and window.
- Nothing a peer does exhausts the process: at most `control.max_connections` connections
  are served (one more is answered 503 naming the cap; beyond MAX_REFUSING of those at
  once, connections wait in the kernel's backlog); our own accept loop backs off on
  EMFILE/ENFILE and logs once per burst (never asyncio's traceback per attempt); a client
  that leaves an answer or its events untaken for `control.write_timeout` is dropped with
  a reason. Counted in core/observe/metrics.py `CONTROL` (vmsh_control_*).
- The event stream never slows the engine: the bus callback only numbers the event and
  `put_nowait`s it on each client's bounded queue; a full queue is emptied and the client
  is sent a `resync` line (it takes a fresh snapshot). A client that overflows
  MAX_OVERFLOWS times in a row without taking anything is dropped with a reason. What one
  client holds is bounded: QUEUE_SIZE queued references to shared lines (QUEUE_BYTES of
  them at most), plus one write of at most WRITE_BATCH lines / MAX_WRITE_BYTES waiting in
  its transport; a stream waits COALESCE after a line so that the next go in the same write.
- At 10,000 jobs (issue 24, core/control_feed.py): snapshots and `/v1/status` are built in
  slices off the loop's critical path, `?views=0` / `?limit=N` answer less, and clients
  that follow `views=1` get the changed jobs' views instead of taking snapshots.
- The socket path: a stale socket (nobody accepts on it) is replaced; a live one, or a path
  that is not a socket, is a ControlSocketError (the caller logs it: control off, the
  scheduler keeps anchoring; see docs/architecture.md "Decisions and departures").
"""

from __future__ import annotations

import asyncio
import errno
import grp
import json
import os
import pwd
import resource
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from core import __version__, safejson, wire
from core.control_client import API, default_socket, socket_path
from core.control_feed import FEATURES, JobFeed, RecentReceipts, snapshot_json, status_json
from core.errors import AnchorError
from core.events import ControlCommand, Event, LogRecord
from core.jobs import JobKey
from core.observe.http import MAX_CONNECTIONS as HTTP_CONNECTIONS
from core.observe.http import _parse_head
from core.observe.logs import format_record
from core.observe.metrics import CONTROL
from core.runtime_control import RuntimeControl

if TYPE_CHECKING:
    from core.runtime import Runtime

__all__ = ["ControlServer", "ControlSocketError", "default_socket", "socket_path", "start_control"]
MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0  # default of control.write_timeout
MAX_CONNECTIONS = 128  # default of control.max_connections
MAX_REFUSING = 32  # connections being answered 503 at once; more wait in the backlog
REFUSE_READ = 0.5  # how long a refused connection's request head is waited for
BACKLOG = 128
ENGINE_FDS = 512  # what the engine may hold open besides the two servers (ops/README.md)
ACCEPT_BACKOFF = (0.05, 1.0)  # seconds between accept attempts while out of descriptors
AUDIT_WINDOW = 60.0
AUDIT_REFUSED_PER_WINDOW = 10  # refused commands recorded per uid and window
AUDIT_TEXT = 200  # characters kept of a refused command's job/namespace and reason
MAX_WRITE_BYTES = 256 * 1024  # encoded events per write to a client
QUEUE_SIZE = 2048  # events per client before it is resynchronised
QUEUE_BYTES = 4 * 1024 * 1024  # bytes of lines per client before it is resynchronised
EVENT_BYTES = 300  # what an event counts for in QUEUE_BYTES (views lines: their length)
COALESCE = 0.01  # seconds a stream waits after a line for more to go in the same write
REPLAY = 4096  # events kept for `after=SEQ` resumption
MAX_OVERFLOWS = 3
WRITE_BATCH = 256  # events per write to a client
STREAM_SLICE = 0.002  # seconds a stream encodes events for one write at most (the loop turns between writes)
RECENT_LOGS = 200
RECENT_RECEIPTS = 20
MAX_RECENT_RECEIPTS = 200  # `?receipts=N` (an attaching dashboard's Receipts pane) at most
FOUND_RECEIPTS = 100  # GET /v1/receipts?root=: at most this many, newest first
MUTATING = frozenset({"force", "pause", "resume", "reload"})

_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


class ControlSocketError(Exception):
    """The control socket cannot be served; the message names the path and what to do."""


def _resolve_gid(name: str | None) -> int | None:
    if not name:
        return None
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ControlSocketError(f"control: no group named {name!r} on this host") from None


def _claim_path(path: Path) -> None:
    """Make `path` free for a new socket: remove a stale one, refuse anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(
            f"control socket {path} exists and is not a socket; move it away or set control.socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ControlSocketError(f"control socket {path}: {exc.strerror or exc}") from None
        path.unlink(missing_ok=True)  # stale: its process is gone
        return
    finally:
        probe.close()
    raise ControlSocketError(f"control socket {path} is served by another process; set control.socket")


@dataclass(frozen=True, slots=True)
class Peer:
    uid: int
    gid: int
    pid: int

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)


def _peer(writer: asyncio.StreamWriter) -> Peer:
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(uid=uid, gid=gid, pid=pid)


class _Item:
    """One numbered event, shared by every stream: encoded once, by the first stream that
    sends it (128 streams used to encode each event 128 times on the loop: /livez stalls)."""

    __slots__ = ("seq", "event", "kind", "_line", "_log_line", "size")

    def __init__(self, seq: int, event: Event | None, line: bytes | None = None) -> None:
        self.seq = seq
        self.event = event  # None: a `views` line (core/control_feed.py), `line` given
        self.kind = type(event).__name__ if event is not None else "views"
        self._line = line
        self._log_line: bytes | None = None
        # What it counts for in a queue's bytes: a views line's length; an event's nominal
        # size (encoded later, by the first stream that sends it: never in the bus callback).
        self.size = len(line) if line is not None else EVENT_BYTES

    @property
    def line(self) -> bytes:
        if self._line is None:
            assert self.event is not None
            self._line = _line({"seq": self.seq, **wire.encode_event(self.event)})
        return self._line

    @property
    def log_line(self) -> bytes:
        """A LogRecord as the scheduler's own log prints it (`?format=log`: what `ctl tail`
        shows, sent as is, so no tail decodes and formats each of a pass's 10,000 records)."""
        if self._log_line is None:
            assert isinstance(self.event, LogRecord)
            self._log_line = format_record(self.event).encode() + b"\n"
        return self._log_line


class _Lines:
    """A client's bounded queue, for its one reader: the calls of asyncio.Queue this module
    makes, a put being a deque append (the bus callback offers every event to every client:
    3 clients, 30,000 events in a 10,000-job pass; asyncio.Queue's put costs ten times as
    much, on the loop)."""

    __slots__ = ("_items", "_max", "_waiter")

    def __init__(self, maxsize: int) -> None:
        self._items: deque[_Item | None] = deque()
        self._max = maxsize
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= self._max

    def put_nowait(self, item: _Item | None) -> None:
        if len(self._items) >= self._max:
            raise asyncio.QueueFull
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> _Item | None:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> _Item | None:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class _Client:
    """One event stream: a bounded queue the bus callback fills without waiting."""

    def __init__(self, views: bool = False, types: frozenset[str] | None = None, log_lines: bool = False) -> None:
        self.queue = _Lines(QUEUE_SIZE)
        self.views = views  # follows `views` lines (`/v1/events?views=1`)
        self.types = types  # only these event types (`?types=LogRecord,...`); None: every one
        self.log_lines = log_lines  # LogRecords as log lines (`?format=log`)
        self.queued = 0  # bytes of the queued lines
        self.overflows = 0  # in a row, without the writer taking anything
        self.dropped: str | None = None

    def offer(self, item: _Item) -> None:
        if self.types is not None and item.event is not None and item.kind not in self.types:
            return
        size = item.size
        if self.queued + size <= QUEUE_BYTES or self.queue.empty():
            try:
                self.queue.put_nowait(item)
                self.queued += size
                return
            except asyncio.QueueFull:
                pass
        self.overflows += 1
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued = 0
        if self.overflows >= MAX_OVERFLOWS:
            self.dropped = f"fell behind {self.overflows} times in a row"
        self.queue.put_nowait(None)  # None: send `resync`

    def take(self, item: _Item | None) -> _Item | None:
        if item is not None:
            self.queued -= item.size
        return item

    def lines(self, first: _Item | None, seq: int) -> tuple[list[bytes], str | None]:
        """`first` and what is queued after it, for one write (WRITE_BATCH lines,
        MAX_WRITE_BYTES, STREAM_SLICE seconds of encoding at most); with why the client is
        dropped, if it is (the lines before that still go)."""
        lines: list[bytes] = []
        size, item = 0, first
        until = time.perf_counter() + STREAM_SLICE
        while True:
            if item is None:
                if self.dropped is not None:
                    return lines, self.dropped
                lines.append(_line({"seq": seq, "type": "resync"}))
            elif self.log_lines and item.kind == "LogRecord":
                lines.append(item.log_line)
            else:
                lines.append(item.line)
            size += len(lines[-1])
            if self.queue.empty() or len(lines) >= WRITE_BATCH or size >= MAX_WRITE_BYTES or time.perf_counter() > until:
                self.overflows = 0
                return lines, None
            item = self.take(self.queue.get_nowait())


class _AuditLimiter:
    """Per uid: at most `per_window` refused commands recorded per `window` seconds; the
    rest counted, and summed up in one line when the window ends (or at close)."""

    def __init__(self, per_window: int = AUDIT_REFUSED_PER_WINDOW, window: float = AUDIT_WINDOW) -> None:
        self.per_window = per_window
        self.window = window
        self._uids: dict[int, list[Any]] = {}  # uid -> [window start, recorded, suppressed, user]

    def admit(self, uid: int, user: str, now: float) -> tuple[bool, list[dict[str, Any]]]:
        """Whether to record this refused command, and the summaries to write first."""
        summaries = self.expired(now)
        entry = self._uids.setdefault(uid, [now, 0, 0, user])
        if entry[1] < self.per_window:
            entry[1] += 1
            return True, summaries
        entry[2] += 1
        return False, summaries

    def expired(self, now: float, *, everything: bool = False) -> list[dict[str, Any]]:
        """Summary lines of the windows that ended (all, with `everything`); forgets them."""
        summaries: list[dict[str, Any]] = []
        for uid, (start, _, suppressed, user) in list(self._uids.items()):
            if everything or now - start >= self.window:
                del self._uids[uid]
                if suppressed:
                    span = "the last minute" if now - start >= self.window else f"the last {now - start:.0f} s"
                    summaries.append({"time": now, "uid": uid, "user": user, "suppressed": suppressed,
                                      "summary": f"{suppressed} refused commands from uid {uid} suppressed in {span}"})
        return summaries


class ControlServer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.control = RuntimeControl(runtime)
        self.feed = JobFeed(self.control)  # snapshots in slices, views lines (core/control_feed.py)
        # A shared store (other replicas write receipts too): known from the store itself,
        # as the cluster view is set only once the services run, after this server starts.
        self.receipts = RecentReceipts(self.control, MAX_RECENT_RECEIPTS, each_time=runtime.store.shared is not None)
        self.path: Path | None = None
        self.seq = 0
        self._replay: deque[_Item] = deque(maxlen=REPLAY)
        self._logs: deque[LogRecord] = deque(maxlen=RECENT_LOGS)
        self._clients: set[_Client] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # the accept loop, the audit flusher, connections
        self._listening = False
        self._loops: set[asyncio.Task[None]] = set()  # the accept loop and the audit flusher
        self.max_connections = MAX_CONNECTIONS
        self.write_timeout = WRITE_TIMEOUT
        self._open = 0  # connections being served (not the refused ones)
        self._refusing = 0
        self._refused_unlogged = 0
        self._refused_logged_at = -AUDIT_WINDOW
        self._limiter = _AuditLimiter()
        self._unsubscribe: Callable[[], None] | None = None
        self._readonly_gid: int | None = None
        self._readonly_members: frozenset[str] = frozenset()

    async def start(self, path: Path, *, mode: int = 0o660, group: str | None = None,
                    readonly_group: str | None = None, max_connections: int = MAX_CONNECTIONS,
                    write_timeout: float = WRITE_TIMEOUT) -> ControlServer:
        self.max_connections = self._fitting(max_connections)
        self.write_timeout = write_timeout
        gid = _resolve_gid(group)
        self._readonly_gid = _resolve_gid(readonly_group)
        if self._readonly_gid is not None:
            try:
                self._readonly_members = frozenset(grp.getgrgid(self._readonly_gid).gr_mem)
            except KeyError:
                pass
        path.parent.mkdir(parents=True, exist_ok=True)
        _claim_path(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.setblocking(False)
            listener.bind(str(path))
            self.path = path
            os.chmod(path, mode)
            if gid is not None:
                os.chown(path, -1, gid)
            listener.listen(BACKLOG)
        except OSError as exc:
            listener.close()
            if self.path is not None:
                path.unlink(missing_ok=True)  # ours: bound just now
                self.path = None
            await self.close()
            raise ControlSocketError(f"cannot serve the control socket {path}: {exc.strerror or exc}") from None
        self._listener = listener
        self._listening = True
        self._loops = {self._spawn(self._accept_loop(listener)), self._spawn(self._flush_audit_loop()),
                       self._spawn(self.feed.serve(lambda: any(c.views for c in self._clients), lambda: self.seq,
                                                    self._send_views))}
        self._unsubscribe = self.runtime.bus.subscribe(self._on_event)
        self._spawn(asyncio.to_thread(self.receipts.read, 0))  # the one listing of the store, now
        return self

    def _fitting(self, wanted: int) -> int:
        """`wanted`, or less when the descriptor limit cannot hold it beside the HTTP server's
        cap and the engine's margin (the sum ops/README.md sizes LimitNOFILE by)."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        reserve = MAX_REFUSING + 1 + HTTP_CONNECTIONS + 1 + ENGINE_FDS
        if soft == resource.RLIM_INFINITY or wanted + reserve <= soft:
            return wanted
        fits = max(1, soft - reserve)
        self.runtime.log.warning("control.max_connections lowered to fit the file-descriptor limit",
                                 configured=wanted, used=fits, nofile=soft, reserved=reserve)
        return fits

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        listener, self._listener = self._listener, None
        self._listening = False
        for task in tuple(self._tasks):
            if task in self._loops:
                task.cancel()
        if listener is not None:
            listener.close()
        for client in self._clients:
            client.queue.put_nowait(None) if not client.queue.full() else None
        for writer in tuple(self._writers):
            writer.transport.abort()
        if self._tasks:
            _, late = await asyncio.wait(tuple(self._tasks), timeout=5.0)
            for task in late:
                task.cancel()
        if listener is None:
            return
        await self._write_summaries(self._limiter.expired(time.time(), everything=True))
        if self.path is not None:
            try:
                if stat.S_ISSOCK(self.path.lstat().st_mode):
                    self.path.unlink()
            except OSError:
                pass

    # ----- the bus side: cheap, never waits --------------------------------------------

    def _on_event(self, event: Event) -> None:
        self.seq += 1
        item = _Item(self.seq, event)
        self._replay.append(item)
        if isinstance(event, LogRecord):
            self._logs.append(event)
        self.feed.note(event)
        self.receipts.note(event)
        for client in self._clients:
            client.offer(item)

    def _send_views(self, line: bytes) -> None:
        """A views line (encoded once) to every client that follows them."""
        item = _Item(self.seq, None, line)
        for client in self._clients:
            if client.views:
                client.offer(item)

    # ----- accepting: bounded, never spinning --------------------------------------------

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        backoff = ACCEPT_BACKOFF[0]
        failed = 0  # accept failures in the current burst
        while self._listening:
            if self._open >= self.max_connections and self._refusing >= MAX_REFUSING:
                await asyncio.sleep(0.05)  # meanwhile connections wait in the kernel's backlog
                continue
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:
                if not self._listening:
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EAGAIN, errno.EINTR, errno.EPROTO):
                    continue
                CONTROL.refuse("accept_error")
                if not failed:  # once per burst, not a traceback per attempt
                    self.runtime.log.error("control socket cannot accept; backing off",
                                           error=exc.strerror or str(exc), errno=exc.errno)
                failed += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, ACCEPT_BACKOFF[1])
                continue
            if failed:
                self.runtime.log.info("control socket accepting again", failed_accepts=failed)
                failed, backoff = 0, ACCEPT_BACKOFF[0]
            conn.setblocking(False)
            if self._open >= self.max_connections:
                self._refusing += 1
                self._spawn(self._refuse(conn))
            else:
                self._open += 1
                CONTROL.connections += 1
                self._spawn(self._accepted(conn))

    async def _accepted(self, conn: socket.socket) -> None:
        try:
            streams = await _streams(conn)
            if streams is not None:
                await self._serve(*streams)
        finally:
            self._open -= 1
            CONTROL.connections -= 1

    async def _refuse(self, conn: socket.socket) -> None:
        """Answer one connection beyond the cap: 503 naming it (after its request head, so
        the client reads the answer rather than a reset), then close."""
        CONTROL.refuse("connections")
        self._refused_unlogged += 1
        now = time.monotonic()
        if now - self._refused_logged_at >= AUDIT_WINDOW:  # once a minute at most
            self._refused_logged_at = now
            self.runtime.log.warning("control connections refused at the cap",
                                     max_connections=self.max_connections, refused=self._refused_unlogged)
            self._refused_unlogged = 0
        try:
            streams = await _streams(conn)
            if streams is None:
                return
            reader, writer = streams
            try:
                async with asyncio.timeout(REFUSE_READ):
                    await reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass
            error = (f"the control socket is at its cap of {self.max_connections} connections "
                     "(control.max_connections); try again later")
            await self._send(writer, 503, {"error": error}, timeout=1.0)
            writer.transport.abort()
        finally:
            self._refusing -= 1

    # ----- one connection ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            peer = _peer(writer)
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, headers = _parse_head(head)
                length = int(headers.get("content-length", "0") or 0)
                if length > MAX_BODY:
                    return await self._send(writer, 413, {"error": "request body too large"})
                body = await reader.readexactly(length) if length else b""
            url = urlsplit(target)
            if url.path == f"{API}/events" and method == "GET":
                return await self._stream(writer, parse_qs(url.query), peer)
            if url.path == f"{API}/receipts":
                status, doc = await self._find_receipts(method, parse_qs(url.query))
            else:
                status, doc = await self._route(method, url.path, body, peer, parse_qs(url.query))
            # A snapshot comes encoded already (in slices, core/control_feed.py); other answers
            # are small, serialised off the loop all the same.
            body = doc if isinstance(doc, bytes) else await asyncio.to_thread(_body, doc)
            await self._send(writer, status, doc, body)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ValueError:
            await self._send(writer, 400, {"error": "bad request"})
        except Exception as exc:
            self.runtime.log.error("control request failed", error=repr(exc))
            await self._send(writer, 500, {"error": "internal error (logged by the scheduler)"})
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, status: int, doc: Any, body: bytes | None = None,
                    *, timeout: float | None = None) -> None:
        if body is None:
            body = _body(doc)
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        writer.write(head.encode("latin-1") + body)
        try:
            async with asyncio.timeout(self.write_timeout if timeout is None else timeout):
                await writer.drain()
        except ConnectionError:
            pass
        except TimeoutError:
            writer.transport.abort()  # untaken: drop it, with what it holds
            if timeout is None:
                CONTROL.drop("write_timeout")

    async def _route(self, method: str, path: str, body: bytes, peer: Peer,
                     query: dict[str, list[str]]) -> tuple[int, Any]:
        if not path.startswith(f"{API}/"):
            return 404, {"error": f"no such path {path!r}: this scheduler speaks {API}/"}
        command = path[len(API) + 1 :]
        if command in ("snapshot", "status"):
            if method != "GET":
                return 405, {"error": f"use GET for {command}"}
            if command == "status":
                return 200, await self.status_body()
            limit = query.get("limit", [""])[0]
            if limit and not limit.isdigit():
                return 400, {"error": "limit must be a number of jobs"}
            receipts = query.get("receipts", [str(RECENT_RECEIPTS)])[0]
            if not receipts.isdigit() or int(receipts) > MAX_RECENT_RECEIPTS:
                return 400, {"error": f"receipts must be 0 to {MAX_RECENT_RECEIPTS}"}
            return 200, await self.snapshot_body(views=query.get("views", ["1"])[0] != "0",
                                                 limit=int(limit) if limit else None, receipts=int(receipts))
        if command not in MUTATING | {"verify"}:
            return 404, {"error": f"no such command {command!r}"}
        if method != "POST":
            return 405, {"error": f"use POST for {command}"}
        try:
            args = safejson.loads(body) if body.strip() else {}
        except ValueError:
            return 400, {"error": "the request body is not JSON"}
        if not isinstance(args, dict):
            return 400, {"error": "the request body must be a JSON object"}
        if command not in MUTATING:
            return await self._verify(args)
        if self._is_readonly(peer):
            status, doc = 403, {"error": f"user {peer.user} (uid {peer.uid}) is in the read-only group "
                                         f"{self.runtime.started_with.control.readonly_group}: "
                                         f"{command} is refused; ask an operator outside that group"}
        else:
            status, doc = await self._command(command, args)
        await self._audit(peer, command, args, status, doc)
        return status, doc

    def _is_readonly(self, peer: Peer) -> bool:
        gid = self._readonly_gid
        return gid is not None and (peer.gid == gid or peer.user in self._readonly_members)

    async def _command(self, command: str, args: dict[str, Any]) -> tuple[int, Any]:
        control = self.control
        if command == "pause":
            control.pause()
            return 200, {"paused": True}
        if command == "resume":
            control.resume()
            return 200, {"paused": False}
        if command == "reload":
            return 200, wire.encode_reload_result(await control.reload())
        return self._force(args)

    def _force(self, args: dict[str, Any]) -> tuple[int, Any]:
        if isinstance(args.get("namespace"), str) and not isinstance(args.get("job"), str):
            try:
                forced, skipped = self.control.force_namespace(args["namespace"])
            except KeyError:
                return 404, {"error": f"no namespace {args['namespace']!r} is configured"}
            return 200, {"forced": [str(k) for k in forced], "skipped": [str(k) for k in skipped]}
        if not isinstance(args.get("job"), str):
            return 400, {"error": 'force needs {"job": "ns/cadence"} or {"namespace": "ns"}'}
        try:
            key = JobKey.parse(args["job"])
        except ValueError as exc:
            return 400, {"error": str(exc)}
        try:
            done = self.control.force(key)
        except KeyError:
            return 404, {"error": f"no job {key} is configured"}
        return 200, {"forced": [str(key)] if done else [], "skipped": [] if done else [str(key)]}

    async def _verify(self, args: dict[str, Any]) -> tuple[int, Any]:
        path = args.get("path")
        if not isinstance(path, str) or not path:
            return 400, {"error": 'verify needs {"path": "<receipt file>"}'}
        # Only the scheduler's own receipts: a peer must not make it open (and describe in an
        # error message) any file its user can read.
        receipts = Path(self.runtime.receipts.root).resolve()
        if not Path(path).resolve().is_relative_to(receipts):
            return 403, {"error": f"verify reads receipts under {receipts} only"}
        return 200, wire.encode_verify_result(await self.control.verify(path))

    async def _find_receipts(self, method: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        """`GET /v1/receipts?root=sha256:...` (and/or `&batch=ID`): the store's receipts of that
        root or batch id, newest first, at most `limit` (default and cap FOUND_RECEIPTS);
        read off the loop (the file store reads every receipt file)."""
        from core.receipts import lookup_problem

        if method != "GET":
            return 405, {"error": "use GET for receipts"}
        root, batch = query.get("root", [None])[0], query.get("batch", [None])[0]
        problem = lookup_problem(root, batch)
        if problem:
            return 400, {"error": f"receipts?root=...: {problem}"}
        limit_text = query.get("limit", [str(FOUND_RECEIPTS)])[0]
        if not limit_text.isdigit() or not 0 < int(limit_text) <= FOUND_RECEIPTS:
            return 400, {"error": f"limit must be 1 to {FOUND_RECEIPTS}"}
        try:
            found = await asyncio.to_thread(
                self.runtime.receipts.find, root=root, batch_id=batch, limit=int(limit_text)
            )
        except AnchorError as exc:  # the database is out of reach
            return 503, {"error": str(exc)}
        return 200, {"receipts": [{"path": str(path), "receipt": item.to_json()} for path, item in found
                                  if not isinstance(item, Exception)]}

    async def _audit(self, peer: Peer, command: str, args: dict[str, Any], status: int, doc: Any) -> None:
        result = doc.get("error") if isinstance(doc, dict) and "error" in doc else doc
        now = time.time()
        summaries: list[dict[str, Any]] = []
        if status == 200:  # accepted: recorded in full, every one
            entry = {"time": now, "uid": peer.uid, "user": peer.user, "pid": peer.pid,
                     "command": command, "arguments": args, "status": status, "result": result}
        else:  # refused: compact (never the body) and rate-limited per uid
            recorded, summaries = self._limiter.admit(peer.uid, peer.user, now)
            await self._write_summaries(summaries)
            if not recorded:
                CONTROL.suppress()
                return
            args = {k: _clip(v) for k, v in args.items() if k in ("job", "namespace")}
            entry = {"time": now, "uid": peer.uid, "user": peer.user, "pid": peer.pid,
                     "command": command, "arguments": args, "status": status, "reason": _clip(result)}
        self.runtime.log.info("control command", command=command, uid=peer.uid, user=peer.user, status=status)
        self.runtime.bus.publish(
            ControlCommand(
                at=self.runtime.engine.clock.now(), command=command, uid=peer.uid, user=peer.user,
                arguments=args, status=status,
            )
        )  # a CloudEvent (control.command) when a sink is set
        await self._write_audit(entry)

    async def _write_audit(self, entry: dict[str, Any]) -> None:
        audit = self.runtime.store.audit  # audit.jsonl, or the PostgreSQL store's audit table
        try:
            await asyncio.to_thread(audit.append, json.loads(json.dumps(entry, default=str)))
        except (OSError, AnchorError) as exc:
            self.runtime.log.error("audit log write failed", path=audit.where, error=str(exc))

    async def _write_summaries(self, summaries: list[dict[str, Any]]) -> None:
        for summary in summaries:
            self.runtime.log.warning("control commands suppressed", uid=summary["uid"], user=summary["user"],
                                     suppressed=summary["suppressed"])
            await self._write_audit(summary)

    async def _flush_audit_loop(self) -> None:
        while self._listening:
            await asyncio.sleep(AUDIT_WINDOW / 6)
            await self._write_summaries(self._limiter.expired(time.time()))

    async def snapshot_body(self, *, views: bool = True, limit: int | None = None,
                            receipts: int = RECENT_RECEIPTS) -> bytes:
        """`GET /v1/snapshot` as JSON bytes. The job table is built in slices (the loop free
        in between), the newest `receipts` read off the loop, the rest at once with `seq`.
        `views` False (`?views=0`, for ctl tail): no job table and no health, only what
        follows the events needs (seq, logs, receipts, in_flight). `limit` (`?limit=N`, an
        attaching dashboard's first page): the first N jobs' views only (`"partial": true`
        when that is not all of them), the counts of all, no health."""
        listed = await asyncio.to_thread(self.receipts.read_json, receipts)
        built = await self.feed.build(limit=limit) if views else None
        doc: dict[str, Any] = {
            "version": __version__, "pid": os.getpid(), "host": socket.gethostname(), "seq": self.seq,
            "features": list(FEATURES), "receipts": listed,
            "logs": [wire.encode_event(r)["event"] for r in self._logs],
            "in_flight": [str(k) for k in self.control.in_flight()],
        }
        if built is None:
            return await asyncio.to_thread(_body, doc)
        if limit is None:
            status, health_body = self.control.health(built.now, built.views)
            doc["health"] = {"code": status, **health_body}
        elif len(built.encoded) < len(built.views):
            doc["partial"] = True
        header = self.control.header(built.now, (), built.counts)
        return await asyncio.to_thread(snapshot_json, doc, header, built.encoded)

    async def status_body(self) -> bytes:
        """`GET /v1/status`: what `ctl status --json` prints (core/control_feed.py status_json)."""
        return await status_json(self.feed, {"pid": os.getpid(), "host": socket.gethostname(), "version": __version__})

    # ----- the event stream --------------------------------------------------------------

    async def _stream(self, writer: asyncio.StreamWriter, query: dict[str, list[str]], peer: Peer) -> None:
        types = query.get("types", [""])[0]
        client = _Client(views=query.get("views", ["0"])[0] == "1",
                         types=frozenset(types.split(",")) if types else None,
                         log_lines=query.get("format", [""])[0] == "log")
        after = query.get("after", [""])[0]
        if after.isdigit():
            oldest = self._replay[0].seq if self._replay else self.seq + 1
            if int(after) + 1 < oldest and int(after) < self.seq:
                client.queue.put_nowait(None)  # too old to replay: resync
            else:
                for item in self._replay:
                    if item.seq > int(after) and item.event is not None:
                        client.offer(item)
                        if client.views:  # the views of what it replays come in the next views line
                            self.feed.note(item.event)
        self._clients.add(client)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n")
        try:
            while self._listening:
                next_item = client.take(await client.queue.get())
                if client.queue.qsize() < WRITE_BATCH and client.queued < MAX_WRITE_BYTES:
                    await asyncio.sleep(COALESCE)  # what follows it goes in the same write
                lines, dropped = client.lines(next_item, self.seq)
                if dropped is not None:
                    writer.write(b"".join(lines) + _line({"type": "dropped", "reason": dropped}))
                    self._dropped(peer, "fell_behind", dropped)
                    return
                writer.write(b"".join(lines))
                try:
                    async with asyncio.timeout(self.write_timeout):
                        await writer.drain()
                except TimeoutError:
                    writer.transport.abort()  # frees what it holds at once
                    self._dropped(peer, "write_timeout", f"took nothing for {self.write_timeout:g} s")
                    return
                if not client.queue.empty():  # a backlog: the loop turns between two writes
                    await asyncio.sleep(0)
        finally:
            self._clients.discard(client)
            try:
                async with asyncio.timeout(1.0):
                    await writer.drain()
            except (ConnectionError, TimeoutError):
                writer.transport.abort()

    def _dropped(self, peer: Peer, kind: str, reason: str) -> None:
        CONTROL.drop(kind)
        self.runtime.log.warning("control client dropped", reason=reason, uid=peer.uid, pid=peer.pid)


async def _streams(conn: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """An accepted connection as asyncio streams (None: it went away first; closed)."""
    try:
        return await asyncio.open_unix_connection(sock=conn, limit=MAX_HEAD)
    except OSError:
        conn.close()
        return None


def _body(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _clip(value: Any) -> Any:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= AUDIT_TEXT else text[:AUDIT_TEXT] + "..."


def _line(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


async def start_control(runtime: Runtime) -> ControlServer:
    """Serve the control socket of the running config; ControlSocketError if it cannot."""
    settings = runtime.started_with.control  # read at start only, like http.listen
    server = ControlServer(runtime)
    return await server.start(socket_path(runtime.started_with), mode=settings.mode_bits,
                              group=settings.group, readonly_group=settings.readonly_group,
                              max_connections=settings.max_connections, write_timeout=settings.write_timeout)
