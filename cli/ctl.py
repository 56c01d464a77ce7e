"""`vmsh-scheduler ctl`: a running scheduler's control socket, from scripts and shells.

status [--json] | force NAMESPACE[/CADENCE] | pause | resume | reload | tail |
receipt ROOT|BATCH_ID [--json] | verify RECEIPT [--json]

Exit codes: 0 done, 1 refused or failed (403, a rejected reload, nothing forced, the
scheduler went away mid-tail), 2 usage or no scheduler answering on the socket (the
message says how to start one). `verify` exits as `vmsh-scheduler verify` does: 0 OK,
1 FAIL, 3 CANNOT CHECK, 4 PENDING (core/verify.py's outcomes). The protocol is docs/control-api.md; the client is
core/control_client.py (shared with the attached dashboard), replies are decoded by
core/wire.py.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.control_client import (
    ControlClient,
    ControlFailed,
    ControlRefused,
    ControlUnreachable,
    socket_path,
)
from core.text import printable

if TYPE_CHECKING:
    import argparse

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
LOG_LINE = b'{"time": '  # how a log line (core/observe/logs.py format_record) starts; an event line starts {"seq":
START_HINT = "start one with `vmsh-scheduler --no-ui --config FILE` (or `systemctl start vmsh-scheduler`)"


class CtlError(Exception):
    def __init__(self, message: str, code: int, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status  # the scheduler's HTTP status when it refused


NO_CONFIG = "no --socket given and no configuration found (no --config, VMSH_CONFIG, VMSH_ROOT or ./config.yaml)"


def resolve_socket(args: argparse.Namespace) -> tuple[Path, str | None]:
    """--socket, else the config's control.socket, else <data_dir>/control.sock; with no
    configuration at all, the default data dir's socket. The second item says why that
    socket when it is a guess (for the message when nothing answers there)."""
    if getattr(args, "socket", None) is not None:
        return Path(args.socket), None
    from cli.common import overrides_from, print_errors
    from core.config import ConfigError, NoConfigFound, SchedulerSettings, load_config
    from core.control_client import default_socket

    try:
        loaded = load_config(overrides=overrides_from(args), allow_unset=True)
    except NoConfigFound:
        found = socket_despite_errors(args)  # --data-dir, VMSH_DATA_DIR
        if found is not None:
            return found, None
        default = default_socket(SchedulerSettings().data_dir)
        return default, f"{NO_CONFIG}: tried the default data dir's socket"
    except ConfigError as exc:
        # The usual moment for `ctl reload` is right after an edit that broke the config: the
        # socket is still found from what can be read (the scheduler reports the errors).
        found = socket_despite_errors(args)
        if found is None:
            print_errors(exc)
            raise CtlError("pass --socket PATH, or a config (--config, --data-dir) that names the data dir", EXIT_USAGE) from None
        return found, None
    return socket_path(loaded.config), None


def socket_despite_errors(args: argparse.Namespace) -> Path | None:
    """The socket from --data-dir, VMSH_DATA_DIR, or the --config file's `control.socket` /
    `scheduler.data_dir` when that file is still YAML; None when none of them says."""
    from core.control_client import default_socket

    data_dir = getattr(args, "data_dir", None) or os.environ.get("VMSH_DATA_DIR")
    if data_dir:
        return default_socket(Path(data_dir))
    config = getattr(args, "config", None)
    if config is None:
        return None
    import yaml

    try:
        doc = yaml.safe_load(Path(config).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(doc, dict):
        return None
    control, scheduler = doc.get("control"), doc.get("scheduler")
    if isinstance(control, dict) and isinstance(control.get("socket"), str):
        return Path(control["socket"])
    if isinstance(scheduler, dict) and isinstance(scheduler.get("data_dir"), str):
        return default_socket(Path(scheduler["data_dir"]))
    return None


def status_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """What `ctl status --json` prints, from a snapshot (a scheduler older than
    `GET /v1/status`, which answers this document itself): the scheduler, its counts,
    health and jobs."""
    from core import wire

    snap = wire.decode_snapshot(doc["snapshot"])
    return {"pid": doc["pid"], "host": doc["host"], "version": doc["version"], "paused": snap.paused,
            "config_hash": snap.config_hash, "counts": wire.encode_status_counts(snap.counts), "health": doc["health"],
            "jobs": [wire.encode_status_job(v, snap.now) for v in snap.views]}


def fetch_status(client: Client) -> bytes:
    """What `ctl status --json` prints: `GET /v1/status` as it comes (the scheduler writes
    it as json.dumps(status_doc(...), ensure_ascii=False) would, in slices), else (an
    older scheduler) from a whole snapshot."""
    try:
        return client.call_raw("GET", "status")
    except CtlError as exc:
        if exc.status != 404:  # 404: a scheduler from before it
            raise
    return (json.dumps(status_doc(client.call("GET", "snapshot")), ensure_ascii=False) + "\n").encode()


def print_status(status: dict[str, Any]) -> None:
    health = status["health"]
    c = status["counts"]
    print(f"scheduler pid {status['pid']} on {printable(status['host'])}, version {status['version']}"
          f"{', PAUSED' if status['paused'] else ''}: {health.get('status', '?')}")
    detail = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("total", "in_backoff") and v)
    print(f"{c['total']} jobs ({detail or 'none'}), {c['in_backoff']} in backoff")
    width = max((len(printable(j["job"])) for j in status["jobs"]), default=3)
    for job in status["jobs"]:
        error = f"  {printable(job['last_error'])}" if job["last_error"] else ""
        print(f"  {printable(job['job']):<{width}}  {job['status']:<11} {printable(job['target'])}{error}")


class Client:
    """The control socket's client (core/control_client.py), its errors as CtlError."""

    def __init__(self, socket: Path, guess: str | None = None) -> None:
        self.socket = socket
        self.guess = guess  # why this socket, when no config named it
        self._client = ControlClient(socket)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def _error(self, exc: Exception) -> CtlError:
        if isinstance(exc, ControlUnreachable):
            if exc.permission:
                return CtlError(f"permission denied on {self.socket}: ask for its group (control.group)", EXIT_FAILED)
            if self.guess:
                return CtlError(
                    f"{self.guess}, {self.socket}: no scheduler is running there.\n"
                    "  pass --socket PATH (a scheduler's <data_dir>/control.sock) or --config FILE, "
                    f"or {START_HINT}",
                    EXIT_USAGE,
                )
            return CtlError(f"no scheduler is running on {self.socket}: {START_HINT}", EXIT_USAGE)
        return CtlError(str(exc), EXIT_FAILED, exc.status if isinstance(exc, ControlRefused) else None)

    def call(
        self, method: str, command: str, body: dict[str, Any] | None = None, *, params: dict[str, str] | None = None
    ) -> Any:
        try:
            return self._client.call(method, command, body, params=params)
        except (ControlUnreachable, ControlFailed, ControlRefused) as exc:
            raise self._error(exc) from None

    def call_raw(self, method: str, command: str) -> bytes:
        try:
            return self._client.call_raw(method, command)
        except (ControlUnreachable, ControlFailed, ControlRefused) as exc:
            raise self._error(exc) from None

    def line_batches(self, after: int | None = None, types: tuple[str, ...] = ()) -> Iterator[list[bytes]]:
        try:
            yield from self._client.line_batches(after, types, log_lines=True)
        except ControlUnreachable as exc:
            raise self._error(exc) from None


def run_ctl(args: argparse.Namespace) -> int:
    try:
        with Client(*resolve_socket(args)) as client:
            return _run(args, client)
    except CtlError as exc:
        print(f"vmsh-scheduler ctl: {printable(str(exc), lines=True)}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `ctl tail | head`: the reader is done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK


def _run(args: argparse.Namespace, client: Client) -> int:

    action = args.ctl_command
    if action == "status":
        status = fetch_status(client)
        if args.json:
            sys.stdout.flush()
            sys.stdout.buffer.write(status)
            sys.stdout.buffer.flush()
        else:
            print_status(json.loads(status))
        return EXIT_OK
    if action == "force":
        body = {"job": args.target} if "/" in args.target else {"namespace": args.target}
        doc = client.call("POST", "force", body)
        for job in doc["forced"]:
            print(f"forced {printable(job)}: anchors at the next pass")
        for job in doc["skipped"]:
            print(f"not forced {printable(job)}: already anchoring, or disabled", file=sys.stderr)
        return EXIT_OK if doc["forced"] else EXIT_FAILED
    if action in ("pause", "resume"):
        doc = client.call("POST", action)
        print("paused: no new anchors start" if doc["paused"] else "resumed: anchoring")
        return EXIT_OK
    if action == "reload":
        from core import wire

        result = wire.decode_reload_result(client.call("POST", "reload"))
        for error in result.errors:
            print(printable(error, lines=True), file=sys.stderr)
        print(printable(result.summary, lines=True), file=sys.stdout if result.applied or not result.errors else sys.stderr)
        return EXIT_FAILED if result.errors and not result.applied else EXIT_OK
    if action == "tail":
        return _tail(client)
    if action == "receipt":
        return _receipt(client, args.key, as_json=args.json)
    if action == "verify":
        return _verify(client, args.path, as_json=args.json)
    raise CtlError(f"unknown action {action!r}", EXIT_USAGE)


def _depth(receipt: dict[str, Any]) -> str:
    """A chain receipt's confirmations, observed/required (as written, or as confirmed)."""
    c = receipt.get("confirmations") or {}
    return f"{c.get('observed', '?')}/{c.get('required', '?')}"


def _receipt(client: Client, key: str, *, as_json: bool) -> int:
    """The store's receipts of a root (sha256:...) or a batch id, newest first; 1 if none."""
    params = {"root": key} if key.startswith("sha256:") else {"batch": key}
    found = client.call("GET", "receipts", params=params)["receipts"]
    for item in found:
        if as_json:
            print(json.dumps(item, ensure_ascii=False))
            continue
        r = item["receipt"]
        att = r.get("attestation") or {}
        print(printable(
            f"{item['path']}\n  {r['namespace']}/{r['cadence']}  batch {r['batch']['id']}  {r['batch']['root']}\n"
            f"  {r['target']}  anchored {r['anchored_at']}  {r['status']}"
            + (f"  gen_time {att['gen_time']}" if att.get("gen_time") else "")
            + (f"\n  tx {att['tx_hash']}  confirmations {_depth(r)}" if att.get("tx_hash") else "")
        , lines=True))
    if not found:
        print(f"vmsh-scheduler ctl: no receipt of {printable(key)} in the store", file=sys.stderr)
    return EXIT_OK if found else EXIT_FAILED


def _verify(client: Client, path: Path, *, as_json: bool) -> int:
    """The scheduler checks one of its receipts (POST /v1/verify); the exit code and the
    words of `vmsh-scheduler verify` for its outcome."""
    from core import wire
    from core.verify import Outcome

    result = wire.decode_verify_result(client.call("POST", "verify", {"path": str(path.resolve())}))
    code = {o.label: o.exit_code for o in Outcome}[result.outcome.value]
    if as_json:
        print(json.dumps(wire.encode_verify_result(result) | {"exit_code": code}, ensure_ascii=False))
    elif result.outcome.value == "OK":
        print(printable(f"OK {result.message}: {path}"))
    else:
        print(printable(f"{result.outcome.value} {path}: {result.message}"))
    return code


def _tail(client: Client) -> int:
    from core import wire_events as wire  # the events' codec alone: core.wire imports the stores
    from core.events import LogRecord
    from core.observe.logs import format_record

    # The logs and seq only: no job table, no receipts (read from disk for the answer).
    doc = client.call("GET", "snapshot", params={"views": "0", "receipts": "0"})
    for fields in doc["logs"][-10:]:
        record = wire.decode_event({"type": "LogRecord", "event": fields})
        assert isinstance(record, LogRecord)
        print(printable(format_record(record), lines=True), flush=True)
    # LogRecords come as the scheduler's log prints them (`{"time": ...}`, nothing to decode
    # and format here); other lines, and every line from an older scheduler, as events.
    for batch in client.line_batches(after=doc["seq"], types=("LogRecord",)):  # not the other 2/3 of a pass's events
        shown: list[str] = []
        for raw in batch:
            if raw.startswith(LOG_LINE):
                shown.append(printable(raw.decode("utf-8", "replace"), lines=True))
                continue
            line = json.loads(raw)
            if line.get("type") == "resync":
                _show(shown)
                print("(fell behind: some log records were skipped)", file=sys.stderr, flush=True)
            elif line.get("type") == "dropped":
                _show(shown)
                raise CtlError(f"dropped by the scheduler: {line.get('reason')}", EXIT_FAILED)
            elif line.get("type") == "LogRecord":
                record = wire.decode_event(line)
                if isinstance(record, LogRecord):
                    shown.append(printable(format_record(record), lines=True))
        _show(shown)
    print("vmsh-scheduler ctl: the scheduler closed the stream (stopped or restarted)", file=sys.stderr)
    return EXIT_FAILED


def _show(lines: list[str]) -> None:
    """Print `lines` with one write (a batch of the stream), and forget them."""
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        lines.clear()
