"""The `vmsh-scheduler` argument parser: the run options and every subcommand.

Imported by main() after the start-up signal handlers are in (cli/main.py): argparse and
core.config load here, not before.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import add_common
from core import __version__

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


class _Parser(argparse.ArgumentParser):
    """The top-level parser: its epilog (the environment variables, from core.config) is
    written when help is shown, so a command that never loads a config (ctl) never
    imports the config's models."""

    def format_help(self) -> str:
        if self.epilog is None:
            from core.config import env_help  # here, not at the top: see the module docstring

            self.epilog = EPILOG.format(environment=env_help())
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vmsh-scheduler",
        description="Anchor VaultMesh Merkle roots to RFC 3161, EVM and Bitcoin targets on cadence.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=argparse.ArgumentParser)
    add_check_config(sub)
    add_verify(sub)
    add_attach(sub)
    add_ctl(sub)
    add_store(sub)
    return parser


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of a run: the dashboard or --no-ui."""
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


def add_check_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser(
        "check-config",
        help="validate the configuration and print a summary",
        description="Validate the configuration; print a summary and exit 0, "
        "or print every error and exit 2.",
    )
    check.add_argument("file", nargs="?", type=Path, metavar="FILE", help="config file to check")
    add_common(check, suppress=True)


def add_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verify = sub.add_parser(
        "verify",
        help="verify receipts (no config or secret needed; writes nothing)",
        description="Check receipts: the audit path from the leaf that binds namespace, batch id "
        "and root, then the attestation (RFC 3161 token against a trust bundle, or the transaction "
        "on a node), then anchored_at against the attested time. Needs no config file and no "
        "secret, and writes nothing. Prints per receipt OK <namespace> <batch id> <root> existed "
        "at <attested time> (<target>), FAIL (the receipt is wrong), CANNOT CHECK (something "
        "needed is missing; the line says what to pass) or PENDING (genuine, not final yet: "
        "the line says how far).",
        epilog="exit codes: 0 all OK, 1 a receipt failed, 3 a receipt could not be checked "
        "(and none failed), 4 a receipt is pending (and none failed or could not be checked), 2 usage",
    )
    verify.add_argument(
        "files", nargs="*", type=Path, metavar="RECEIPT|DIR",
        help="receipt JSON files, or folders to verify every receipt below; with --root or "
        "--batch and none given, the config's store",
    )
    verify.add_argument(
        "--root", metavar="sha256:HEX",
        help="only the receipts of this root (a batch root, or an anchored tree hash)",
    )
    verify.add_argument("--batch", metavar="ID", help="only the receipts of this batch id")
    verify.add_argument(
        "--trust-bundle", action="append", type=Path, default=[], metavar="PEM|DIR",
        help="CA certificate(s) to check RFC 3161 tokens against (rfc3161: and local: "
        "receipts): a PEM file or a folder of them; repeatable, in any order (every "
        "replica's local-tsa.pem for a cluster's local: receipts); instead of the config's "
        "trust_bundle or the data dir's local-tsa.pem",
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


def add_attach(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    attach = sub.add_parser(
        "attach",
        help="open the dashboard on a running scheduler (its control socket)",
        description="Open the dashboard on a scheduler that runs elsewhere (headless, under "
        "systemd): no engine and no lock here; quitting or the terminal going away never "
        "stops that scheduler. The socket is --socket, else the config's control.socket, "
        "else <data_dir>/control.sock.",
        epilog="exit codes: 0 detached (--web: stopped), 2 usage, no terminal, no scheduler answers "
        "on the socket, or --web's port is taken",
    )
    attach.add_argument("--socket", type=Path, metavar="PATH", help="the scheduler's control socket")
    attach.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS",
        help="wait up to SECONDS for a scheduler that is still starting (default: 0, none)",
    )
    attach.add_argument(
        "--web", action="store_true",
        help="serve the dashboard to a browser instead (textual-serve), on 127.0.0.1 only, behind "
        "a random token: open the URL it prints; read-only unless --web-actions",
    )
    attach.add_argument("--web-port", type=int, default=0, metavar="PORT",
                        help="--web's port on 127.0.0.1 (default 0: any free port)")
    attach.add_argument("--web-actions", action="store_true",
                        help="let --web's browser sessions force, pause and reload")
    # One browser session of --web: textual-serve runs it with the web driver on its pipes.
    attach.add_argument("--web-session", action="store_true", help=argparse.SUPPRESS)
    add_common(attach, suppress=True)


def add_ctl(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ctl = sub.add_parser(
        "ctl",
        help="control a running scheduler from scripts: status, force, pause, resume, reload, tail, receipt, verify",
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
    receipt = ctl_sub.add_parser(
        "receipt", help="the store's receipts of a root (sha256:...) or a batch id, newest first (exit 1: none)"
    )
    receipt.add_argument("key", metavar="ROOT|BATCH_ID")
    receipt.add_argument("--json", action="store_true", help="one JSON object per receipt and line")
    check = ctl_sub.add_parser(
        "verify", help="the scheduler checks one of its receipts: exit 0 OK, 1 FAIL, 3 CANNOT CHECK, 4 PENDING"
    )
    check.add_argument("path", type=Path, metavar="RECEIPT", help="a receipt file under <data_dir>/receipts")
    check.add_argument("--json", action="store_true", help="the outcome as one JSON object")
    for action in ctl_sub.choices.values():
        action.add_argument("--socket", type=Path, metavar="PATH", default=argparse.SUPPRESS,
                            help="the scheduler's control socket")


def add_store(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`store migrate`, `store import DATA_DIR`, `export` (run by cli/store.py); here, so that
    parsing a command line never imports the stores."""
    store = sub.add_parser("store", help="the PostgreSQL store: store migrate, store import DATA_DIR")
    store_sub = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    migrate = store_sub.add_parser("migrate", help="create or migrate the PostgreSQL store's schema")
    add_common(migrate, suppress=True)
    imp = store_sub.add_parser(
        "import", help="copy a file store (a stopped scheduler's data dir) into the PostgreSQL store"
    )
    imp.add_argument("source", type=Path, metavar="DATA_DIR", help="the data dir to copy from")
    add_common(imp, suppress=True)
    export = sub.add_parser("export", help="write every receipt of the store as files verify checks offline")
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write into")
    export.add_argument(
        "--format", action="append", choices=["json", "tsr", "ots"], default=[], dest="formats",
        help="tsr: also each RFC 3161 token as a DER <receipt>.tsr beside its receipt "
        "(openssl ts -verify -in X.tsr -token_in ...); ots: each btc receipt's OpenTimestamps "
        "proof of its batch root as <receipt>.ots (ots verify -d <root hex> X.ots); repeatable",
    )
    add_common(export, suppress=True)
