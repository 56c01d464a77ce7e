"""One small HTTP/1.1 server on the engine's event loop: /metrics, /health, /livez, /readyz.

No framework: `asyncio.start_server` and a strict, bounded request reader.

- `GET`/`HEAD` only (others: 405); the four paths above; anything else is 404.
- `/metrics`: Prometheus text format, or OpenMetrics when `Accept` asks for
  `application/openmetrics-text`. The exposition is encoded in a worker thread so a
  large registry never holds up the loop.
- One request per connection (`Connection: close`, no keep-alive): a prober or scraper
  asks once per interval, and a connection held open between requests is exactly what
  lets idle clients crowd others out.
- Idle and slow clients cannot starve a health check: the whole request head must arrive
  within `READ_TIMEOUT` (1 s from accept, not reset by each byte, so a client trickling
  one byte at a time is cut off too) and fit in `MAX_HEAD` bytes (else 408 / 431); a
  response must be taken within `WRITE_TIMEOUT`. At most `MAX_CONNECTIONS` are open;
  when a new one arrives at the cap, the oldest connection that is waiting on its client
  (head not yet complete, or response not yet taken) is closed to make room, so a new
  request is always read. A slow or hostile client costs one coroutine, never the engine.
- Responses never carry secrets, stack traces or file contents: health bodies hold
  names, times and levels; an unexpected error is a bare 500 and a log line.
"""

from __future__ import annotations

import asyncio
import errno
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from core.observe.health import health, livez, readyz
from core.observe.metrics import Metrics

if TYPE_CHECKING:
    from core.runtime import Runtime

DEFAULT_LISTEN = "127.0.0.1:9090"
MAX_HEAD = 16 * 1024
READ_TIMEOUT = 1.0  # the whole request head, from accept
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 256
BACKLOG = 512  # a burst of connects waits in the kernel, not refused

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class ListenError(Exception):
    """The server could not bind its address; the message says which and why."""


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (host 127.0.0.1) -> (host, port)."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ListenError(f"{listen!r} is not a listen address (expected <host>:<port>)")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HttpServer:
    """The running server; `await close()` to stop it. `.host`/`.port` are the bound address."""

    def __init__(self, runtime: Runtime, metrics: Metrics) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.host = ""
        self.port = 0
        self._server: asyncio.Server | None = None
        # Open connections, oldest first -> whether each is waiting on its client (True)
        # or being answered (False); the oldest waiting one makes room at the cap.
        self._writers: dict[asyncio.StreamWriter, bool] = {}

    @property
    def url(self) -> str:
        return f"http://{_show(self.host, self.port)}"

    async def start(self, host: str, port: int) -> HttpServer:
        try:
            self._server = await asyncio.start_server(
                self._serve, host, port, limit=MAX_HEAD, backlog=BACKLOG
            )
        except OSError as exc:
            where = _show(host, port)
            if exc.errno == errno.EADDRINUSE:
                raise ListenError(
                    f"cannot listen on {where}: address already in use (is another scheduler running?)"
                ) from None
            reason = exc.strerror or str(exc)
            raise ListenError(f"cannot listen on {where}: {reason[:1].lower()}{reason[1:]}") from None
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        return self

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in tuple(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def __call__(self) -> None:  # so the server can sit in a list of closers
        await self.close()

    # ----- one connection ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_CONNECTIONS and not self._make_room():
            writer.close()
            return
        self._writers[writer] = True
        try:
            status, headers, body, head_only = await self._respond(reader, writer)
            if not self._waiting(writer, True):  # from here on it waits on the client
                return  # closed to make room while it dawdled: nobody to answer
            await self._send(writer, status, headers, body, head_only)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # never a stack trace to the client; one log line for us
            self._log_error(exc)
        finally:
            self._writers.pop(writer, None)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    def _waiting(self, writer: asyncio.StreamWriter, waiting: bool) -> bool:
        """Mark a connection as waiting on its client or not; False if it was closed."""
        if writer not in self._writers:
            return False
        self._writers[writer] = waiting
        return True

    def _make_room(self) -> bool:
        """Close the oldest connection that is waiting on its client; False if none is."""
        oldest = next((w for w, waiting in self._writers.items() if waiting), None)
        if oldest is None:
            return False
        del self._writers[oldest]
        oldest.transport.abort()  # its reader sees the end at once and its coroutine ends
        return True

    async def _respond(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, dict[str, str], bytes, bool]:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            self._waiting(writer, False)  # a whole request: it is being answered
        except TimeoutError:
            return _text(408, "request timeout\n") + (False,)
        except asyncio.LimitOverrunError:
            return _text(431, "request header too large\n") + (False,)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise  # the client connected and left: nothing to answer
            return _text(400, "bad request\n") + (False,)
        try:
            method, target, headers = _parse_head(head)
        except ValueError as exc:
            code = 505 if str(exc) == "version" else 400
            return _text(code, "bad request\n" if code == 400 else "http version not supported\n") + (False,)
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            status, hdrs, body = _text(405, "method not allowed\n")
            hdrs["Allow"] = "GET, HEAD"
            return status, hdrs, body, False
        try:
            path = urlsplit(target).path
        except ValueError:
            return _text(400, "bad request\n") + (False,)
        try:
            status, hdrs, body = await self._route(path, headers)
        except Exception as exc:
            self._log_error(exc, path=path)
            status, hdrs, body = _text(500, "internal error\n")
        return status, hdrs, body, head_only

    async def _route(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        runtime = self.runtime
        if path == "/metrics":
            body, content_type = await asyncio.to_thread(self.metrics.render, headers.get("accept"))
            return 200, {"Content-Type": content_type}, body
        # On the engine's own steady clock, like every time it keeps: a wall-clock step
        # does not make the loop look stuck or a job stale.
        if path == "/health":
            return _json(*health(
                runtime.engine, runtime.engine.clock.now(), getattr(runtime, "cluster", None),
                wallets=getattr(runtime, "wallets", None),
            ))
        if path == "/livez":
            return _json(*livez(runtime.engine, runtime.engine.clock.now()))
        if path == "/readyz":
            return _json(*readyz(runtime))
        return _text(404, "not found\n")

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, headers: dict[str, str], body: bytes, head_only: bool
    ) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        all_headers = {
            **headers,
            "Content-Length": str(len(body)),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Connection": "close",
        }
        lines += [f"{name}: {value}" for name, value in all_headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()

    def _log_error(self, exc: BaseException, **fields: Any) -> None:
        log = getattr(self.runtime, "log", None)
        if log is not None:
            log.error("http request failed", error=type(exc).__name__, **fields)


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    text = head.decode("latin-1")
    request_line, *header_lines = text[:-4].split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise ValueError("request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise ValueError("version" if version.startswith("HTTP/") else "request line")
    headers: dict[str, str] = {}
    if len(header_lines) > 100:
        raise ValueError("too many headers")
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError("header")
        headers[name.lower()] = value.strip()
    return method, target, headers


def _text(status: int, text: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode()


def _json(status: int, doc: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    body = (json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    return status, {"Content-Type": "application/json"}, body


async def start_http(runtime: Runtime, metrics: Metrics, listen: str | None = None) -> HttpServer:
    """Serve /metrics, /health, /livez, /readyz on the running loop; raise ListenError if the
    address cannot be bound. `listen` defaults to the config's `http.listen`."""
    if listen is None:
        http = getattr(getattr(getattr(runtime, "loaded", None), "config", None), "http", None)
        listen = http.listen if http is not None else DEFAULT_LISTEN
    host, port = parse_listen(listen)
    return await HttpServer(runtime, metrics).start(host, port)


__all__ = ["start_http", "HttpServer", "ListenError", "parse_listen", "DEFAULT_LISTEN"]
