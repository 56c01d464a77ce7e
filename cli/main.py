"""The `vmsh-scheduler` command: dashboard, headless run, check-config, verify.

Never imports textual or rich at module level: the dashboard is imported lazily inside
run_dashboard, so headless runs and check-config work without the UI stack loaded.
Everything else that is not needed to install the start-up signal handlers is imported
on first use too (core.config with pydantic takes ~0.2 s, argparse and typing a few ms):
`main()` installs them (core/signals.py) about 30 ms after exec, before anything slow.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from core.signals import StartupSignals

# seconds a thread that wants the GIL waits at most in a process that runs a scheduler
# (Python's default: 5 ms): after each system call the engine's loop waits for the GIL
# behind the writer thread building receipts, and a /livez answer takes four turns of it.
GIL_SWITCH = 0.001
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing before main() runs
if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from core.config import LoadedConfig


def run_headless(loaded: LoadedConfig, args: argparse.Namespace, startup: StartupSignals) -> int:
    from cli.common import load
    from cli.headless import run_headless as serve

    return serve(loaded, loader=lambda: load(args), startup=startup)


def run_dashboard(loaded: LoadedConfig, args: argparse.Namespace) -> int:
    # Imported here, lazily, so headless runs and check-config never load textual/rich.
    from cli.common import load
    from cli.dashboard import run_dashboard as dashboard

    return dashboard(loaded, args, loader=lambda: load(args))


def cmd_attach(args: argparse.Namespace) -> int:
    """The dashboard as a client of a running scheduler (cli/dashboard.py attach_dashboard). The
    config, when one is found, only says where the socket is and gives the dashboard's
    settings (theme, keys); an unset secret in it does not matter here."""
    from cli.common import overrides_from, print_errors
    from cli.ctl import NO_CONFIG
    from core.config import ConfigError, NoConfigFound, load_config

    web, web_session = bool(getattr(args, "web", False)), bool(getattr(args, "web_session", False))
    if not (web or web_session) and not all(os.isatty(fd) for fd in (0, 1, 2)):
        print("vmsh-scheduler attach: no terminal: use `vmsh-scheduler ctl` from scripts", file=sys.stderr)
        return 2
    loaded = None
    try:
        loaded = load_config(overrides=overrides_from(args), allow_unset=True)
    except NoConfigFound:
        if args.socket is None:
            print(f"vmsh-scheduler attach: {NO_CONFIG}: pass --socket PATH (a scheduler's "
                  "<data_dir>/control.sock) or --config FILE", file=sys.stderr)
            return 2
    except ConfigError as exc:
        if args.socket is None:
            print_errors(exc)
            print("vmsh-scheduler attach: pass --socket PATH, or a config that names the data dir", file=sys.stderr)
            return 2
    from cli.dashboard import attach_dashboard
    from core.control_client import socket_path

    if args.socket is not None:
        socket = args.socket
    else:
        assert loaded is not None  # a config error without --socket returned above
        socket = socket_path(loaded.config)
    if web:
        return cmd_attach_web(socket, args)
    return attach_dashboard(socket, args, loaded)


def cmd_attach_web(socket: Path, args: argparse.Namespace) -> int:
    """`attach --web` (cli/web.py): exit 2 at once when nothing answers on the socket."""
    from cli.web import serve_web
    from core.remote_control import NoScheduler, RemoteControl

    try:
        RemoteControl.connect(socket)
    except NoScheduler as exc:
        print(f"vmsh-scheduler attach --web: {exc}", file=sys.stderr)
        return 2
    return serve_web(socket, args)


def cmd_store(args: argparse.Namespace) -> int:
    """`store migrate` and `export` (cli/store.py), on the loaded configuration."""
    from cli.common import load, print_errors
    from cli.store import cmd_export, cmd_store_import, cmd_store_migrate
    from core.config import ConfigError

    try:
        loaded = load(args)
    except ConfigError as exc:
        print_errors(exc)
        return 2
    if args.command == "export":
        return cmd_export(loaded, args.out, args.formats)
    if args.store_command == "import":
        return cmd_store_import(loaded, args.source)
    return cmd_store_migrate(loaded)


def main(argv: Sequence[str] | None = None) -> int:
    # First of all: SIGHUP/SIGTERM/SIGINT during start are recorded, not fatal (core/signals.py).
    startup = StartupSignals().install()
    try:
        return _main(argv, startup)
    finally:
        startup.restore()


def _main(argv: Sequence[str] | None, startup: StartupSignals) -> int:
    from cli.parser import build_parser

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0)
    if args.command in ("check-config", "verify"):
        startup.replay()  # these stop on a signal as they always did
    if args.command == "check-config":
        from cli.check import cmd_check_config

        return cmd_check_config(args)
    if args.command == "verify":
        from cli.verify import cmd_verify

        return cmd_verify(args)
    if args.command == "ctl":
        startup.replay()
        from cli.ctl import run_ctl  # lazily: httpx and the codecs only for ctl

        return run_ctl(args)
    if args.command == "attach":
        startup.restore()  # the dashboard installs its own handlers
        return cmd_attach(args)
    if args.command in ("store", "export"):
        startup.replay()
        return cmd_store(args)
    # Only what runs a scheduler imports the config's models (ctl starts in a fraction).
    from cli.common import load, print_errors
    from core.config import ConfigError
    from core.text import printable

    if not args.no_ui and not all(os.isatty(fd) for fd in (0, 1, 2)):
        # Textual reads fd 0 and draws on fd 2: elsewhere than a terminal it would write
        # escape codes into a pipe, a file or the journal, and wait for keys forever.
        print("vmsh-scheduler: no terminal: use --no-ui for headless", file=sys.stderr)
        return 2
    try:
        loaded = load(args)
    except ConfigError as exc:
        print_errors(exc)
        return 2
    if args.import_state is not None:  # read on the first start only (core/migrate.py)
        loaded.import_state = args.import_state.absolute()  # logged: say where it was
    for warning in loaded.warnings:
        print(f"warning: {printable(warning)}", file=sys.stderr)
    if startup.stop is not None:
        print(f"vmsh-scheduler: {startup.stop.name} during start: not started", file=sys.stderr)
        return 0
    # Process-wide, so set here, once, for the process's life: an engine that set it while
    # it ran and restored it after undid it for another engine still running.
    sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH))
    if args.no_ui:
        return run_headless(loaded, args, startup)
    startup.restore()  # the dashboard installs its own handlers; it loads the config afresh
    return run_dashboard(loaded, args)


if __name__ == "__main__":
    sys.exit(main())
