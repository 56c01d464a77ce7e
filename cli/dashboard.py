"""The dashboard's two entry points: with its own engine (`vmsh-scheduler --config FILE`)
and attached to a running scheduler (`vmsh-scheduler attach`, or a data dir locked by a
live one). Each builds a host (tui/host.py), runs the App (tui/app.py) on it and returns
the process's exit code (see cli/main.py). Imported only when a dashboard opens: it loads
textual and rich.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.runtime import CannotStart, Loader, Runtime
from core.store.files.lock import LockHeld
from tui.app import VaultMeshApp
from tui.host import AttachedHost, Host, InProcessHost
from tui.themes import ThemeError

if TYPE_CHECKING:
    from core.config import LoadedConfig


def run_dashboard(loaded: LoadedConfig, args: argparse.Namespace, loader: Loader | None = None) -> int:
    """Run the dashboard until quit / SIGTERM / SIGINT / the terminal is gone. When the
    terminal is lost (SIGHUP, end of input, failed writes) the engine is stopped and its
    state saved first; if Textual's teardown then cannot finish, the watchdog ends the
    process with exit 0 (1 if state could not be saved)."""
    try:
        runtime = Runtime.open(loaded, loader=loader)
    except CannotStart as exc:
        if isinstance(exc.__cause__, LockHeld):  # a live scheduler runs there: attach to it
            from core.control_server import socket_path

            return attach_dashboard(socket_path(loaded.config), args, loaded, refused=str(exc))
        print(f"vmsh-scheduler: {exc}", file=sys.stderr)
        return 2
    host = InProcessHost(runtime)
    try:
        app = VaultMeshApp(host, readonly=bool(getattr(args, "readonly", False)), theme=getattr(args, "theme", None))
    except ThemeError as exc:
        runtime.release()
        print(f"vmsh-scheduler: {exc}", file=sys.stderr)
        return 2
    return _run(app, host, args, "stopped")


def attach_dashboard(
    socket_path: Path, args: argparse.Namespace, loaded: LoadedConfig | None = None, *, refused: str = ""
) -> int:
    """The dashboard on a scheduler running elsewhere: no Runtime, no lock, no engine
    here. Quitting or the terminal going away ends this dashboard only. Exit 2 when
    nothing answers on the socket (the message says how to start a scheduler), else 0."""
    from core.remote_control import NoScheduler, RemoteControl

    config = loaded.config if loaded is not None else None
    try:
        control = RemoteControl.connect(
            socket_path,
            data_dir=config.scheduler.data_dir if config is not None else None,
            namespaces=dict(config.namespaces) if config is not None else None,
        )
    except NoScheduler as exc:
        print(f"vmsh-scheduler: {refused or exc}", file=sys.stderr)
        if refused:
            print(f"vmsh-scheduler: and could not attach to it: {exc}", file=sys.stderr)
        return 2
    host = AttachedHost(control, config.tui if config is not None else None)
    try:
        app = VaultMeshApp(host, readonly=bool(getattr(args, "readonly", False)), theme=getattr(args, "theme", None))
    except ThemeError as exc:
        print(f"vmsh-scheduler: {exc}", file=sys.stderr)
        return 2
    return _run(app, host, args, "detached")


def _run(app: VaultMeshApp, host: Host, args: argparse.Namespace, ended: str) -> int:
    """Run `app` on a real terminal (guarded: tui/terminal.py), then let the host finish
    (the state saved if the orderly stop did not, the lock released). A browser session
    of `attach --web` (cli/web.py) keeps the web driver textual-serve chose instead."""
    if not getattr(args, "web_session", False):
        app.driver_class = host.guard_terminal()
    try:
        app.run(mouse=not getattr(args, "no_mouse", False))
    finally:
        host.finish()
    if app.return_code not in (0, None):
        return int(app.return_code or 1)
    if host.exit_reason:
        print(f"vmsh-scheduler: {ended}: {host.exit_reason}", file=sys.stderr)
    return 0
