"""The one client of the control socket (docs/control-api.md): HTTP/1.1 over a Unix socket.

`vmsh-scheduler ctl` (cli/ctl.py) uses its synchronous side (http.client: no httpx to
import, so ctl starts in a tenth of a second): `call()` returns a reply's
JSON or raises ControlUnreachable (nothing listens, or the socket's permissions refuse
us), ControlFailed (no answer, or one that is not JSON) or ControlRefused (the scheduler
said no: 4xx/5xx with its sentence); `events()` follows the event stream. The attached
dashboard (core/remote_control.py RemoteControl) takes its first snapshot with `call()`
too, then uses the asynchronous side on the App's loop: `request()` (the raw response, so
a refusal becomes a notice), `stream()` (the event stream) and `reset()` (a new connection
pool after the scheduler restarted). Closing a client never stops the scheduler.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

if TYPE_CHECKING:
    import httpx

API = "/v1"  # the control API's path prefix: /v1/snapshot, /v1/events, /v1/force, ...
BASE_URL = "http://vmsh"  # the host part is not used over a Unix socket
READ_SIZE = 1 << 16  # bytes of the event stream read at once
TIMEOUT = 30.0  # a reload reads the config off the loop; a verify may ask a node


def default_socket(data_dir: Path) -> Path:
    return Path(data_dir) / "control.sock"


def socket_path(config: Any) -> Path:
    """`control.socket`, else `<data_dir>/control.sock` (the one rule, for server and ctl)."""
    configured = config.control.socket
    return Path(configured) if configured else default_socket(Path(config.scheduler.data_dir))


class ControlUnreachable(Exception):
    """Nothing answers on the socket, or its permissions refuse this user (`permission`)."""

    def __init__(self, message: str, *, permission: bool = False) -> None:
        super().__init__(message)
        self.permission = permission


class ControlFailed(Exception):
    """The scheduler did not answer, or answered something that is not the API's JSON."""


class ControlRefused(Exception):
    """The scheduler answered with an error (403 read-only, 404 no such job, ...)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def error_text(response: httpx.Response) -> str:
    """The sentence of an error reply (`{"error": ...}`), else its body or status."""
    try:
        return str(response.json().get("error") or response.text)
    except (ValueError, AttributeError):
        return response.text or f"HTTP {response.status_code}"


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 to a Unix socket (the host name is not used)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("vmsh", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    """A scheduler's control socket: synchronous calls and an async side (see the module doc)."""

    def __init__(self, socket: str | Path, *, timeout: float = TIMEOUT) -> None:
        self.socket = Path(socket)
        self.timeout = timeout
        self._async: httpx.AsyncClient | None = None

    # ----- synchronous: ctl, the first snapshot (the standard library's http.client: ctl
    # starts without importing httpx) ---------------------------------------------------

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing is kept open between synchronous calls (one request per connection)."""

    def _unreachable(self, exc: Exception) -> ControlUnreachable:
        cause = exc.__cause__ or exc.__context__ or exc
        permission = isinstance(cause, PermissionError) or "Permission denied" in str(exc)
        return ControlUnreachable(str(exc) or type(exc).__name__, permission=permission)

    def call(
        self, method: str, command: str, body: dict[str, Any] | None = None, *, params: dict[str, str] | None = None
    ) -> Any:
        """`METHOD /v1/<command>[?params]` with `body` as JSON; the reply's JSON (see the module doc)."""
        status, content = self._request(method, command, body, params)
        try:
            doc = json.loads(content)
        except ValueError:
            raise ControlFailed(f"the scheduler answered {status} without JSON") from None
        if status != 200:
            raise ControlRefused(str(doc.get("error") if isinstance(doc, dict) else doc), status)
        return doc

    def call_raw(self, method: str, command: str, *, params: dict[str, str] | None = None) -> bytes:
        """As `call`, but the 200 reply's bytes as they came (ctl prints `/v1/status` as is)."""
        status, content = self._request(method, command, None, params)
        if status == 200:
            return content
        try:
            doc = json.loads(content)
        except ValueError:
            raise ControlFailed(f"the scheduler answered {status} without JSON") from None
        raise ControlRefused(str(doc.get("error") if isinstance(doc, dict) else doc), status)

    def _open(self, method: str, target: str, body: bytes | None, timeout: float | None) -> http.client.HTTPResponse:
        conn = _UnixConnection(str(self.socket), self.timeout)
        try:
            conn.connect()
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            conn.close()
            raise self._unreachable(exc) from None
        except OSError as exc:
            conn.close()
            raise ControlFailed(f"the scheduler on {self.socket} did not answer: {exc}") from None
        try:
            headers = {"Host": "vmsh", "Content-Type": "application/json"} if body is not None else {"Host": "vmsh"}
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            conn.sock.settimeout(timeout) if conn.sock is not None else None
            return response
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ControlFailed(f"the scheduler on {self.socket} did not answer: {exc}") from None

    def _request(self, method: str, command: str, body: dict[str, Any] | None,
                 params: dict[str, str] | None) -> tuple[int, bytes]:
        target = f"{API}/{command}" + (f"?{urlencode(params)}" if params else "")
        payload = json.dumps(body).encode() if body is not None else None
        response = self._open(method, target, payload, self.timeout)
        try:
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ControlFailed(f"the scheduler on {self.socket} did not answer: {exc}") from None
        finally:
            response.close()

    def events(self, after: int | None = None, types: tuple[str, ...] = ()) -> Iterator[Any]:
        """Each line of the event stream, decoded as JSON, until the scheduler ends it.
        `types`: only events of these types (and `resync`/`dropped`); a scheduler before
        `?types=` sends every event, so the caller still looks at each line's type."""
        for batch in self.event_batches(after, types):
            yield from batch

    def event_batches(self, after: int | None = None, types: tuple[str, ...] = ()) -> Iterator[list[Any]]:
        """As `events`, the lines that came in one read together."""
        for lines in self.line_batches(after, types):
            yield [json.loads(line) for line in lines]

    def line_batches(self, after: int | None = None, types: tuple[str, ...] = (), *,
                     log_lines: bool = False) -> Iterator[list[bytes]]:
        """The event stream's lines as they came, those of one read together (`ctl tail`
        prints each batch with one write: a 10,000-job pass is 10,000 lines, on the
        scheduler's cores). `log_lines` (`?format=log`): LogRecords come as the scheduler's
        log prints them, `{"time": ...}`; the other lines, and every line from a scheduler
        before the option, are events as JSON, `{"seq": ...}`."""
        params = ([f"after={after}"] if after is not None else []) + ([f"types={','.join(types)}"] if types else [])
        params += ["format=log"] if log_lines else []
        query = "?" + "&".join(params) if params else ""
        try:
            response = self._open("GET", f"{API}/events{query}", None, None)  # no read deadline
        except ControlFailed:
            return
        rest = b""
        try:
            while chunk := response.read1(READ_SIZE):
                *lines, rest = (rest + chunk).split(b"\n")
                batch = [line for line in lines if line.strip()]
                if batch:
                    yield batch
            if rest.strip():
                yield [rest]
        except (OSError, http.client.HTTPException):
            return
        finally:
            response.close()

    # ----- asynchronous: the attached dashboard, on the App's loop ---------------------------

    def _ahttp(self) -> httpx.AsyncClient:
        import httpx

        if self._async is None:
            transport = httpx.AsyncHTTPTransport(uds=str(self.socket))
            self._async = httpx.AsyncClient(
                transport=transport, base_url=BASE_URL, timeout=httpx.Timeout(self.timeout, read=None)
            )
        return self._async

    async def request(self, method: str, command: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """`METHOD /v1/<command>`; the response as it came (httpx errors and OSError raise)."""
        if method == "GET":
            return await self._ahttp().get(f"{API}/{command}")
        return await self._ahttp().post(f"{API}/{command}", json=body if body is not None else {})

    @asynccontextmanager
    async def stream(self, after: int, *, views: bool = False) -> AsyncIterator[httpx.Response]:
        """The event stream after `seq` (with `views`: and the views lines of the jobs that
        change, core/control_feed.py); raises for a status other than 200."""
        params = {"after": after, "views": 1} if views else {"after": after}
        async with self._ahttp().stream("GET", f"{API}/events", params=params) as response:
            response.raise_for_status()
            yield response

    async def reset(self) -> None:
        """Drop the connection pool (the scheduler went away; the next request opens a new one)."""
        if self._async is not None:
            client, self._async = self._async, None
            await client.aclose()

    async def aclose(self) -> None:
        await self.reset()
