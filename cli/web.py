"""`vmsh-scheduler attach --web`: the attached dashboard in a browser, with textual-serve.

For operators who cannot open a terminal. The server listens on 127.0.0.1 only (reach it
from elsewhere through an SSH tunnel) and every request needs a random token, printed
once at start in the URL to open: a request without it (or with another) gets 403. The
page sets the token as an HttpOnly, SameSite=Strict cookie, so the page's own assets and
its websocket carry it; a websocket from another origin is refused. The token is printed
in that one line and nowhere else (no access log: the URL holds it).

Each browser session runs its own dashboard process (textual-serve launches a command per
session): `vmsh-scheduler [--readonly] attach --socket PATH --web-session`, the Textual
web driver on its stdin/stdout, attached to the same scheduler. Read-only (force, pause
and reload refused) unless `--web-actions` was given. Ending the server (Ctrl-C, SIGTERM)
ends the sessions; the scheduler keeps running.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import secrets
import shlex
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.typedefs import Middleware
from textual_serve.server import Server

TOKEN_COOKIE = "vmsh_web_token"
FORBIDDEN = "vmsh-scheduler attach --web: a token is required: open the URL printed when the server started\n"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def session_command(socket_path: Path, args: argparse.Namespace) -> str:
    """The command textual-serve runs for each browser session: this program's attach on
    the same socket and config, read-only unless --web-actions."""
    command = [sys.executable, "-m", "cli"]
    if not getattr(args, "web_actions", False):
        command.append("--readonly")
    for option, value in (("--theme", getattr(args, "theme", None)), ("--log-level", getattr(args, "log_level", None))):
        if value:
            command += [option, str(value)]
    command += ["attach", "--web-session", "--socket", str(socket_path.absolute())]
    for option, path in (("--config", getattr(args, "config", None)), ("--data-dir", getattr(args, "data_dir", None))):
        if path is not None:
            command += [option, str(Path(path).absolute())]
    return shlex.join(command)


def token_guard(token: str, origin: str, sessions: set[asyncio.Task[object]]) -> Middleware:
    """The middleware: 403 unless the request carries the token (query or cookie); the
    page sets the cookie for its assets and websocket; a websocket from elsewhere is 403.
    Each browser session's task (its websocket) is kept in `sessions` while it runs."""

    # Nothing from elsewhere: the page's own assets and websocket only (its link to a web
    # font is not fetched; the terminal falls back to a local monospace font).
    socket_origin = "ws" + origin.removeprefix("http")
    policy = (f"default-src 'self'; connect-src 'self' {socket_origin}; script-src 'self' 'unsafe-inline'; "
              "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'")

    def carries(value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), token.encode())

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        by_query = carries(request.query.get("token"))
        if not (by_query or carries(request.cookies.get(TOKEN_COOKIE))):
            raise web.HTTPForbidden(text=FORBIDDEN)
        if request.path == "/ws" and request.headers.get("Origin", origin) != origin:
            raise web.HTTPForbidden(text="vmsh-scheduler attach --web: websocket from another origin\n")
        if request.path == "/ws" and (task := asyncio.current_task()) is not None:
            sessions.add(task)
            try:
                return await handler(request)
            finally:
                sessions.discard(task)
        response = await handler(request)
        if by_query and request.path == "/":
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Content-Security-Policy", policy)
        return response

    return guard


def web_application(server: Server, token: str, sessions: set[asyncio.Task[object]]) -> web.Application:
    """textual-serve's routes (its page, websocket and assets) behind the token guard."""
    app = web.Application(middlewares=[token_guard(token, server.public_url, sessions)])
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(server.templates_path))
    app.add_routes([
        web.get("/", server.handle_index, name="index"),
        web.get("/ws", server.handle_websocket, name="websocket"),
        web.get("/download/{key}", server.handle_download, name="download"),
        web.static("/static", server.statics_path, name="static"),
    ])
    return app


def listen(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1 (never another interface); port 0: a free one.
    OSError when the port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve(sock: socket.socket, command: str, *, readonly: bool) -> None:
    """Serve until SIGINT / SIGTERM; print the one start line (the URL with the token)."""
    port = sock.getsockname()[1]
    server = Server(command, host="127.0.0.1", port=port, title="VaultMesh Scheduler")
    token = secrets.token_urlsafe(24)
    sessions: set[asyncio.Task[object]] = set()
    runner = web.AppRunner(web_application(server, token, sessions), access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.SockSite(runner, sock).start()
        mode = "read-only" if readonly else "force, pause and reload allowed"
        print(f"vmsh-scheduler attach --web: open {server.public_url}/?token={token} ({mode}; "
              "127.0.0.1 only; Ctrl-C stops)", flush=True)
        await stop.wait()
    finally:
        # Open browser sessions end first: textual-serve then tells each dashboard to quit
        # and waits for it (else aiohttp would wait a minute for their websockets).
        for task in list(sessions):
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)
        await runner.cleanup()


def serve_web(socket_path: Path, args: argparse.Namespace) -> int:
    """`attach --web`: exit 2 when the port is taken, else 0 once stopped."""
    port = int(getattr(args, "web_port", 0) or 0)
    try:
        sock = listen(port)
    except OSError as exc:
        print(f"vmsh-scheduler attach --web: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; "
              "pass --web-port PORT (0: any free port)", file=sys.stderr)
        return 2
    readonly = not getattr(args, "web_actions", False)
    asyncio.run(serve(sock, session_command(socket_path, args), readonly=readonly))
    print("vmsh-scheduler attach --web: stopped", file=sys.stderr)
    return 0
