"""The dashboard's two entry points: with its own engine (`vmsh-scheduler --config FILE`)
and attached to a running scheduler (`vmsh-scheduler attach`, or a data dir locked by a
live one). Each builds a host (tui/host.py), runs the App (tui/app.py) on it and returns
the process's exit code (see cli/main.py). Imported only when a dashboard opens: it loads
textual and rich.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from core.runtime import CannotStart, Loader, Runtime
from core.store.files.lock import LockHeld
from tui.app import VaultMeshApp
from tui.host import AttachedHost, Host, InProcessHost
from tui.themes import ThemeError

if TYPE_CHECKING:
    from core.config import Config, LoadedConfig
    from core.remote_control import RemoteControl


def run_dashboard(loaded: LoadedConfig, args: argparse.Namespace, loader: Loader | None = None) -> int:
    """Run the dashboard until quit / SIGTERM / SIGINT / the terminal is gone. When the
    terminal is lost (SIGHUP, end of input, failed writes) the engine is stopped and its
    state saved first; if Textual's teardown then cannot finish, the watchdog ends the
    process with exit 0 (1 if state could not be saved)."""
    try:
        runtime = Runtime.open(loaded, loader=loader)
    except CannotStart as exc:
        if isinstance(exc.__cause__, LockHeld):  # a live scheduler runs there: attach to it
            from core.control_client import socket_path

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
    from core.remote_control import NoScheduler

    config = loaded.config if loaded is not None else None
    deadline = time.monotonic() + max(0.0, float(getattr(args, "wait", 0.0) or 0.0))
    try:
        control = connect_within(socket_path, config, deadline)
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


def connect_within(socket_path: Path, config: Config | None, deadline: float) -> RemoteControl:
    """The first snapshot of the scheduler on `socket_path`; while it does not answer and
    `deadline` (attach --wait) has not passed, tried again every 0.2 s."""
    from core.remote_control import NoScheduler, RemoteControl

    while True:
        try:
            return RemoteControl.connect(
                socket_path,
                data_dir=config.scheduler.data_dir if config is not None else None,
                namespaces=dict(config.namespaces) if config is not None else None,
            )
        except NoScheduler:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


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
