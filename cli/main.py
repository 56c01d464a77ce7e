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
from pathlib import Path

from core import __version__
from core.signals import StartupSignals

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing before main() runs
if TYPE_CHECKING:
    import argparse
    from typing import TextIO

    from core.config import Config, ConfigError, LoadedConfig

# {environment} is core.config.env_help(), filled in by build_parser (ENV_TABLE is the one list).
EPILOG = """\
examples:
  vmsh-scheduler --config config.example.yaml          dashboard (Textual)
  vmsh-scheduler --no-ui --config /etc/vmsh/config.yaml headless, for systemd/Kubernetes
  vmsh-scheduler check-config config.yaml               validate, print a summary (exit 0/2)
  VMSH_ROOT=~/vaultmesh vmsh-scheduler check-config     the VaultMesh layout:
                                                        vmsh/config/{{namespaces,anchors}}.yaml
  vmsh-scheduler verify .vmsh-demo/receipts             check receipts offline (files, folders)

configuration, highest precedence first:
  flags > environment (below) > ./.env
  > config file (--config, VMSH_CONFIG, VMSH_ROOT layout, ./config.yaml) > defaults

{environment}

exit codes: 0 ok (or stopped by SIGTERM/SIGINT, or the dashboard's terminal was lost:\n  SIGHUP, closed), 1 a receipt failed verify or the engine failed, 3 verify could not check a receipt (it says what to pass), 2 invalid configuration, usage, data dir locked or unusable, a corrupt state\n  file, HTTP port taken, or no terminal for the dashboard (use --no-ui)
"""


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from core.config import env_help  # here, not at the top: see the module docstring

    parser = argparse.ArgumentParser(
        prog="vmsh-scheduler",
        description="Anchor VaultMesh Merkle roots to RFC 3161, EVM and Bitcoin targets on cadence.",
        epilog=EPILOG.format(environment=env_help()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_common(parser)
    parser.add_argument("--no-ui", action="store_true", help="run headless (logs to stdout)")
    parser.add_argument(
        "--import-state", type=Path, metavar="FILE",
        help="on the first start (no state of ours yet), import the last-anchored times of "
        "the original VaultMesh service's state file, so jobs are not all anchored at once "
        "(a VMSH_STATE file in that format is imported the same way)",
    )
    parser.add_argument("--theme", metavar="NAME", help="dashboard theme")
    parser.add_argument("--no-mouse", action="store_true", help="dashboard without mouse support")
    parser.add_argument(
        "--readonly", action="store_true", help="dashboard only watches: no force, pause or reload"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser(
        "check-config",
        help="validate the configuration and print a summary",
        description="Validate the configuration; print a summary and exit 0, "
        "or print every error and exit 2.",
    )
    check.add_argument("file", nargs="?", type=Path, metavar="FILE", help="config file to check")
    add_common(check, suppress=True)
    verify = sub.add_parser(
        "verify",
        help="verify receipts (no config or secret needed; writes nothing)",
        description="Check receipts: the audit path, then the attestation (RFC 3161 token "
        "against a trust bundle, or the transaction on a node). Needs no config file and no "
        "secret, and writes nothing. Prints OK, FAIL (the receipt is wrong) or CANNOT CHECK "
        "(something needed is missing; the line says what to pass) per receipt.",
        epilog="exit codes: 0 all OK, 1 a receipt failed, 3 a receipt could not be checked "
        "(and none failed), 2 usage",
    )
    verify.add_argument(
        "files", nargs="+", type=Path, metavar="RECEIPT|DIR",
        help="receipt JSON files, or folders to verify every receipt below",
    )
    verify.add_argument(
        "--trust-bundle", action="append", type=Path, default=[], metavar="PEM",
        help="CA certificate(s) to check RFC 3161 tokens against (rfc3161: and local: "
        "receipts); repeatable; instead of the config's trust_bundle or the data dir's "
        "local-tsa.pem",
    )
    verify.add_argument(
        "--rpc-url", action="append", default=[], metavar="eip155:<id>=URL",
        help="JSON-RPC node of that chain for eip155 receipts; repeatable; instead of the "
        "config's rpcUrl",
    )
    verify.add_argument("--json", action="store_true", help="one JSON object per receipt and line")
    verify.add_argument(
        "--explain", action="store_true",
        help="print the stock-tool commands (python3, openssl, curl) that check the same "
        "receipts independently, instead of checking them",
    )
    add_common(verify, suppress=True)
    attach = sub.add_parser(
        "attach",
        help="open the dashboard on a running scheduler (its control socket)",
        description="Open the dashboard on a scheduler that runs elsewhere (headless, under "
        "systemd): no engine and no lock here; quitting or the terminal going away never "
        "stops that scheduler. The socket is --socket, else the config's control.socket, "
        "else <data_dir>/control.sock.",
        epilog="exit codes: 0 detached, 2 usage, no terminal, or no scheduler answers on the socket",
    )
    attach.add_argument("--socket", type=Path, metavar="PATH", help="the scheduler's control socket")
    add_common(attach, suppress=True)
    ctl = sub.add_parser(
        "ctl",
        help="control a running scheduler from scripts: status, force, pause, resume, reload, tail",
        description="Talk to a running scheduler over its control socket (docs/control-api.md). "
        "The socket is --socket, else the config's control.socket, else <data_dir>/control.sock.",
        epilog="exit codes: 0 done, 1 refused or failed, 2 usage or no scheduler running",
    )
    ctl.add_argument("--socket", type=Path, metavar="PATH", help="the scheduler's control socket")
    add_common(ctl, suppress=True)
    ctl_sub = ctl.add_subparsers(dest="ctl_command", metavar="ACTION", required=True)
    status = ctl_sub.add_parser("status", help="jobs, counts, paused, health")
    status.add_argument("--json", action="store_true", help="the whole status as one JSON object")
    force = ctl_sub.add_parser("force", help="anchor NAMESPACE (all cadences) or NAMESPACE/CADENCE now")
    force.add_argument("target", metavar="NAMESPACE[/CADENCE]")
    ctl_sub.add_parser("pause", help="stop starting anchors (in-flight ones finish)")
    ctl_sub.add_parser("resume", help="start anchoring again")
    ctl_sub.add_parser("reload", help="load the config again; prints file:line errors (exit 1)")
    ctl_sub.add_parser("tail", help="follow the scheduler's log records (Ctrl-C stops)")
    from core.store_cli import add_parsers as add_store_parsers

    add_store_parsers(sub)
    for action in ctl_sub.choices.values():
        action.add_argument("--socket", type=Path, metavar="PATH", default=argparse.SUPPRESS,
                            help="the scheduler's control socket")
    return parser


def add_common(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """Options accepted before and after the subcommand."""
    import argparse

    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--config", type=Path, metavar="FILE", default=default,
                        help="config file (default: VMSH_CONFIG, the VMSH_ROOT layout, ./config.yaml)")
    parser.add_argument("--data-dir", type=Path, metavar="DIR", default=default,
                        help="state, receipts and lock folder (overrides scheduler.data_dir)")
    parser.add_argument("--log-level", metavar="LEVEL", default=default,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"],
                        help="DEBUG, INFO, WARNING or ERROR")


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    return {
        "config": getattr(args, "file", None) or args.config,
        "data_dir": args.data_dir,
        "log_level": args.log_level.upper() if args.log_level else None,
        "theme": getattr(args, "theme", None),
    }


def load(args: argparse.Namespace) -> LoadedConfig:
    from core.config import load_config

    return load_config(overrides=overrides_from(args))


def print_errors(error: ConfigError, *, file: TextIO | None = None) -> None:
    from core.text import printable

    out = file or sys.stderr
    for issue in error.issues:
        print(printable(str(issue), lines=True), file=out)  # names and values come from the files
    n = len(error.issues)
    print(f"configuration invalid: {n} error{'s' if n != 1 else ''}", file=out)


def summary(loaded: LoadedConfig) -> str:
    from core.cadence import format_seconds
    from core.text import printable

    cfg = loaded.config
    lines: list[str] = []
    files = loaded.files
    lines.append("files:")
    lines += [f"  {f}" for f in files] or ["  (none)"]
    lines.append(f"data dir: {cfg.scheduler.data_dir}")
    if cfg.scheduler.store == "file":
        lines.append("store: file (the data dir; one scheduler)")
    else:  # never the user name or a password: host, port and database only
        from core.pgstore import display_url

        lines.append(f"store: {display_url(cfg.scheduler.store)} (cluster mode, lease {format_seconds(cfg.scheduler.lease)})")
    lines.append(f"http: {cfg.http.listen}   log level: {cfg.log.level}")
    lines.append(f"namespaces ({len(cfg.namespaces)}):")
    for name, ns in cfg.namespaces.items():
        desc = f"  {ns.description}" if ns.description else ""
        lines.append(f"  {name}{desc}")
        lines.append(f"    batches: {batch_source_line(cfg, name)}")
    jobs = cfg.jobs()
    lines.append(f"jobs ({len(jobs)}):")
    width = max((len(str(j.key)) for j in jobs), default=0)
    twidth = max((len(j.target) for j in jobs), default=0)
    for job in jobs:
        extra = []
        if job.confirmations:
            extra.append(f"confirmations {job.confirmations}")
        if job.anchor_unchanged:
            extra.append("anchor_unchanged")
        refusal = cfg.target_mismatch(job.target)
        if refusal:  # the engine never runs it (core.engine: disabled), for this reason
            extra.append(f"disabled: {refusal}")
        tail = ("  " + ", ".join(extra)) if extra else ""
        lines.append(
            f"  {str(job.key):<{width}}  {job.target:<{twidth}}  every {format_seconds(job.every)}{tail}"
        )
    used = sorted({j.target for j in jobs})
    lines.append(f"targets ({len(used)}):")
    for target in used:
        lines.append(f"  {target} -> {cfg.resolved_entry(target)}{_target_detail(cfg, target)}")
    if loaded.warnings:
        lines.append(f"warnings ({len(loaded.warnings)}):")
        lines += [f"  {w}" for w in loaded.warnings]
    lines.append(f"config hash: {loaded.hash}")
    lines.append("configuration OK")
    return "\n".join(printable(line) for line in lines)  # names and values come from the files


def _target_detail(cfg: Config, target: str) -> str:
    """What check-config shows after a target: its scheme's describe() (a host, never a
    secret or a URL's path), or nothing."""
    from core.anchors.schemes import SCHEMES

    try:
        settings = cfg.resolve_target(target)
    except LookupError:
        return ""
    shown = SCHEMES[target.partition(":")[0]].describe(settings)
    return f"  {shown}" if shown else ""


def batch_source_line(cfg: Config, namespace: str) -> str:
    """Where the namespace's batches are read from now, and whether any are there."""
    from core.sources import has_batch_files, source_folder

    own, fallbacks = cfg.batches_dir(namespace), cfg.batch_fallbacks(namespace)
    folder = source_folder(own, fallbacks)
    if folder is None:
        shared = f", nor {fallbacks[-1]}" if fallbacks else ""
        return f"MISSING: no folder {own}{shared} (each pass looks again)"
    shown = str(folder)
    if folder == cfg.shared_batches_dir and folder != own:
        shown += f" (shared: no folder {own})"
    elif folder != own:
        shown += f" (the name of earlier versions: rename it to {own.name})"
    if not has_batch_files(folder):
        shown += "  EMPTY: no batch files (*.json) yet"
    return shown


def cmd_check_config(args: argparse.Namespace) -> int:
    from core.config import ConfigError, load_config

    try:  # thorough: the dashboard's settings and the files the config names, too
        loaded = load_config(overrides=overrides_from(args), thorough=True)
    except ConfigError as exc:
        print_errors(exc)
        return 2
    print(summary(loaded))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """OK / FAIL / CANNOT CHECK per receipt (exit 0 / 1 / 3). Trust comes from the flags,
    else from a config if one is found, read leniently: only trust bundles, node URLs and
    the data dir matter, so an unset secret variable does not stop verify."""
    from core.config import ConfigError, load_config
    from core.verify import ReadOnlyVerifiers, parse_rpc_urls, run_verify

    try:
        rpc_urls = parse_rpc_urls(args.rpc_url)
    except ValueError as exc:
        print(f"vmsh-scheduler verify: {exc}", file=sys.stderr)
        return 2
    settings_for = config_data_dir = config_problem = None
    try:
        config = load_config(overrides=overrides_from(args), allow_unset=True).config
    except ConfigError as exc:
        if not (len(exc.issues) == 1 and "no configuration found" in str(exc.issues[0])):
            config_problem = "; ".join(str(i) for i in exc.issues[:3])
    except Exception as exc:  # verify works without a config: never stop on one
        config_problem = f"it could not be read: {exc}"
    else:
        settings_for, config_data_dir = config.resolve_target, config.scheduler.data_dir
    verifiers = ReadOnlyVerifiers(
        trust_bundles=args.trust_bundle,
        rpc_urls=rpc_urls,
        settings_for=settings_for,
        config_data_dir=config_data_dir,
        config_problem=config_problem,
        data_dir=getattr(args, "data_dir", None),
    )
    if args.explain:
        from core.explain import explain_files

        return explain_files(list(args.files), sys.stdout, verifiers)
    return run_verify(list(args.files), sys.stdout, as_json=args.json, verifiers=verifiers)


def run_headless(loaded: LoadedConfig, args: argparse.Namespace, startup: StartupSignals) -> int:
    from core.headless import run_headless as serve

    return serve(loaded, loader=lambda: load(args), startup=startup)


def run_dashboard(loaded: LoadedConfig, args: argparse.Namespace) -> int:
    # Imported here, lazily, so core (headless, check-config) never loads textual/rich.
    from tui.app import run_dashboard as dashboard

    return dashboard(loaded, args, loader=lambda: load(args))


def cmd_attach(args: argparse.Namespace) -> int:
    """The dashboard as a client of a running scheduler (tui/app.py attach_dashboard). The
    config, when one is found, only says where the socket is and gives the dashboard's
    settings (theme, keys); an unset secret in it does not matter here."""
    from core.config import ConfigError, load_config

    if not all(os.isatty(fd) for fd in (0, 1, 2)):
        print("vmsh-scheduler attach: no terminal: use `vmsh-scheduler ctl` from scripts", file=sys.stderr)
        return 2
    loaded = None
    try:
        loaded = load_config(overrides=overrides_from(args), allow_unset=True)
    except ConfigError as exc:
        if args.socket is None:
            print_errors(exc)
            print("vmsh-scheduler attach: pass --socket PATH, or a config that names the data dir", file=sys.stderr)
            return 2
    from core.control_server import socket_path
    from tui.app import attach_dashboard

    if args.socket is not None:
        socket = args.socket
    else:
        assert loaded is not None  # a config error without --socket returned above
        socket = socket_path(loaded.config)
    return attach_dashboard(socket, args, loaded)


def cmd_store(args: argparse.Namespace) -> int:
    """`store migrate` and `export` (core/store_cli.py), on the loaded configuration."""
    from core.config import ConfigError
    from core.store_cli import cmd_export, cmd_store_import, cmd_store_migrate

    try:
        loaded = load(args)
    except ConfigError as exc:
        print_errors(exc)
        return 2
    if args.command == "export":
        return cmd_export(loaded, args.out)
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
    from core.config import ConfigError
    from core.text import printable

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0)
    if args.command in ("check-config", "verify"):
        startup.replay()  # these stop on a signal as they always did
    if args.command == "check-config":
        return cmd_check_config(args)
    if args.command == "verify":
        return cmd_verify(args)
    if args.command == "ctl":
        startup.replay()
        from core.ctl import run_ctl  # lazily: httpx and the codecs only for ctl

        return run_ctl(args)
    if args.command == "attach":
        startup.restore()  # the dashboard installs its own handlers
        return cmd_attach(args)
    if args.command in ("store", "export"):
        startup.replay()
        return cmd_store(args)
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
    if args.no_ui:
        return run_headless(loaded, args, startup)
    startup.restore()  # the dashboard installs its own handlers; it loads the config afresh
    return run_dashboard(loaded, args)


if __name__ == "__main__":
    sys.exit(main())
