"""The control socket and `vmsh-scheduler ctl` against a real headless scheduler process.

Real processes, a real Unix socket, real files. Waits are bounded polls for something the
program writes or answers, never sleeps standing in for a schedule (the throughput test
measures over fixed windows of real time on purpose).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import httpx
import pytest

from core.sources import write_batch
from tests.integration.test_headless import CLI, make_config, receipts, wait_for


def start(config: Path) -> subprocess.Popen:
    # Output to files, not pipes: a busy scheduler fills a pipe nobody reads and blocks.
    out = (config.parent / "stdout.log").open("w")
    err = (config.parent / "stderr.log").open("w")
    with out, err:
        return subprocess.Popen([*CLI, "--no-ui", "--config", str(config)], stdout=out, stderr=err)


def stop(proc: subprocess.Popen) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    args = proc.args
    assert isinstance(args, list)
    folder = Path(args[-1]).parent
    return proc.returncode, (folder / "stdout.log").read_text(), (folder / "stderr.log").read_text()


def sock_path(tmp: Path) -> Path:
    return tmp / "data" / "control.sock"


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "ctl", "--config", str(config), *args], capture_output=True, text=True, timeout=60)


def serving(tmp: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock_path(tmp)))
        return True
    except OSError:
        return False


def headless_config(tmp: Path, namespaces: list[str], extra: str = "", **kw) -> Path:
    """A headless scheduler's config (and a batch for each namespace), `extra` appended."""
    for ns in namespaces:
        write_batch(tmp / "batches" / ns, "000001", "sha256:" + f"{ns.encode().hex():0>64}"[-64:])
    config = make_config(tmp, namespaces, **kw)
    if extra:
        config.write_text(config.read_text() + extra)
    return config


def headless(tmp: Path, namespaces: list[str], extra: str = "", **kw) -> tuple[Path, subprocess.Popen]:
    config = headless_config(tmp, namespaces, extra, **kw)
    return config, start(config)


def health_url(config: Path) -> str:
    found = re.search(r'listen: "127\.0\.0\.1:(\d+)"', config.read_text())
    assert found is not None
    return f"http://127.0.0.1:{found.group(1)}/health"


def test_ctl_status_json_matches_health_and_pause_shows(tmp_path):
    config, proc = headless(tmp_path, ["alpha", "beta"])
    try:
        wait_for(lambda: serving(tmp_path) and len(receipts(tmp_path)) >= 2)
        got = ctl(config, "status", "--json")
        assert got.returncode == 0, got.stderr
        status = json.loads(got.stdout)
        health = httpx.get(health_url(config)).json()
        assert status["health"]["status"] == health["status"]
        assert status["pid"] == proc.pid and status["paused"] is False
        assert {j["job"] for j in status["jobs"]} == {"alpha/fast", "beta/fast"}
        assert status["counts"]["total"] == 2
        paused = ctl(config, "pause")
        assert paused.returncode == 0, paused.stderr
        assert json.loads(ctl(config, "status", "--json").stdout)["paused"] is True
        assert "PAUSED" in ctl(config, "status").stdout
        assert ctl(config, "resume").returncode == 0
        assert json.loads(ctl(config, "status", "--json").stdout)["paused"] is False
    finally:
        stop(proc)
    # Stopped: the socket is gone and ctl says how to start one (exit 2).
    gone = ctl(config, "status")
    assert gone.returncode == 2 and "no scheduler is running" in gone.stderr and "--no-ui" in gone.stderr


def test_ctl_force_writes_a_receipt_and_an_audit_line_naming_the_uid(tmp_path):
    config, proc = headless(tmp_path, ["alpha"], every="1h")
    try:
        wait_for(lambda: serving(tmp_path) and len(receipts(tmp_path)) == 1)  # the first pass
        forced = ctl(config, "force", "alpha/fast")
        assert forced.returncode == 0, forced.stderr
        assert "forced alpha/fast" in forced.stdout
        wait_for(lambda: len(receipts(tmp_path)) == 2)
        unknown = ctl(config, "force", "nope/fast")
        assert unknown.returncode == 1 and "no job nope/fast is configured" in unknown.stderr
    finally:
        stop(proc)
    audit = tmp_path / "data" / "audit.jsonl"
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert lines[0]["command"] == "force" and lines[0]["uid"] == os.getuid()
    assert lines[0]["arguments"] == {"job": "alpha/fast"} and lines[0]["result"]["forced"] == ["alpha/fast"]
    assert lines[0]["user"]
    assert lines[1]["status"] == 404
    assert audit.stat().st_mode & 0o777 == 0o640


def test_a_control_command_is_a_cloudevent_when_a_sink_is_set(tmp_path):
    events = tmp_path / "events.jsonl"
    config, proc = headless(
        tmp_path, ["alpha"], every="1h",
        extra=f'cloudevents:\n  file: "{events}"\n  types: [control.command]\n',
    )
    try:
        wait_for(lambda: serving(tmp_path) and len(receipts(tmp_path)) == 1)
        assert ctl(config, "pause").returncode == 0
        wait_for(lambda: events.exists() and "control.command" in events.read_text())
    finally:
        stop(proc)
    emitted = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["type"] for e in emitted] == ["org.vaultmesh.scheduler.control.command"]
    assert emitted[0]["subject"] == "pause"
    assert emitted[0]["data"]["uid"] == os.getuid() and emitted[0]["data"]["status"] == 200


def test_ctl_reload_of_a_broken_config_prints_file_line_and_exits_1(tmp_path):
    config, proc = headless(tmp_path, ["alpha"])
    try:
        wait_for(lambda: serving(tmp_path))
        text = config.read_text()
        config.write_text(text.replace('every: "1s"', 'every: "banana"'))
        line = text.splitlines().index('        every: "1s"') + 1
        got = ctl(config, "reload")
        assert got.returncode == 1
        assert f"{config}:{line}" in got.stderr, got.stderr
        assert serving(tmp_path)  # the old config stays live
    finally:
        stop(proc)


def test_a_client_that_never_reads_events_does_not_slow_the_engine(tmp_path):
    names = [f"ns{i:03d}" for i in range(150)]
    config, proc = headless(tmp_path, names, every="1s", unchanged=True)
    window = 4.0

    def anchors_in_window() -> int:
        before = len(list((tmp_path / "data" / "receipts").rglob("*.json")))
        time.sleep(window)  # a measurement over real time, not a wait for a schedule
        return len(list((tmp_path / "data" / "receipts").rglob("*.json"))) - before

    stuck = socket.socket(socket.AF_UNIX)
    try:
        wait_for(lambda: serving(tmp_path) and len(receipts(tmp_path)) >= len(names), timeout=60)
        alone = anchors_in_window()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(str(sock_path(tmp_path)))
        stuck.sendall(b"GET /v1/events HTTP/1.1\r\nHost: vmsh\r\n\r\n")  # and never reads
        with_stuck = anchors_in_window()
        assert with_stuck >= 0.7 * alone, (alone, with_stuck)
        answered = ctl(config, "status", "--json")  # others are still served
        assert answered.returncode == 0 and json.loads(answered.stdout)["counts"]["total"] == len(names)
    finally:
        stuck.close()
        stop(proc)


def ctl_as(uid: int, argv: list[str]) -> tuple[int, str]:
    """`vmsh-scheduler ctl ARGV` run as `uid` in a forked child (the interpreter lives under
    /root, which another uid cannot exec): (exit code, what it wrote to stdout and stderr)."""
    # Imported here, by the parent: the child's uid may not read the interpreter's stdlib
    # under /root nor a checkout in a 0700 folder (a `mktemp -d` clone). build_parser()
    # imports what the parser's subcommands need (cli.store, ...); main() imports the rest.
    import cli.check  # noqa: F401
    import cli.ctl  # noqa: F401
    import cli.verify  # noqa: F401
    from cli.main import main
    from cli.parser import build_parser

    build_parser()

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to `uid`, answer through the pipe, never return to pytest
        code = 99
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            sys.stdout = sys.stderr = os.fdopen(write, "w")  # not pytest's capture
            code = main(["ctl", *argv])
            sys.stdout.flush()
        except BaseException:
            traceback.print_exc()
            sys.stdout.flush()
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), text


def test_a_peer_in_the_readonly_group_is_refused_force(tmp_path):
    if os.getuid() != 0:
        pytest.skip("needs root to run the client as another uid")
    nobody = 65534
    public = Path(tempfile.mkdtemp(prefix="vmsh-control-"))  # tmp_path's parents are root-only
    public.chmod(0o755)
    control = public / "control.sock"
    extra = f'control:\n  socket: "{control}"\n  mode: "0666"\n  readonly_group: "{nobody}"\n'
    config, proc = headless(tmp_path, ["alpha"], extra=extra, every="1h")
    try:
        wait_for(control.exists)
        where = ["--socket", str(control)]
        code, text = ctl_as(nobody, [*where, "force", "alpha/fast"])
        assert code == 1, text
        assert f"(uid {nobody}) is in the read-only group {nobody}: force is refused" in text
        code, text = ctl_as(nobody, [*where, "status", "--json"])
        assert code == 0, text  # reading is allowed
        assert ctl(config, "force", "alpha/fast").returncode == 0  # root is not in that group
    finally:
        stop(proc)
        shutil.rmtree(public)
    lines = [json.loads(line) for line in (tmp_path / "data" / "audit.jsonl").read_text().splitlines()]
    assert (lines[0]["uid"], lines[0]["status"], lines[0]["command"]) == (nobody, 403, "force")
    assert (lines[1]["uid"], lines[1]["status"]) == (0, 200)


def test_a_path_that_is_not_a_socket_is_left_alone_and_anchoring_goes_on(tmp_path):
    (tmp_path / "data").mkdir()
    squatter = sock_path(tmp_path)
    squatter.write_text("not a socket\n")
    config, proc = headless(tmp_path, ["alpha"])
    try:
        wait_for(lambda: receipts(tmp_path))
        got = ctl(config, "status")
        assert got.returncode == 2
    finally:
        code, out, err = stop(proc)
    assert code == 0
    assert squatter.read_text() == "not a socket\n"
    errors = [json.loads(line) for line in out.splitlines() if "control socket is off" in line]
    assert errors and "exists and is not a socket" in errors[0]["error"], out[-2000:]


def test_a_stale_socket_of_a_dead_process_is_replaced(tmp_path):
    (tmp_path / "data").mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path(tmp_path)))
    stale.close()  # the file stays; nobody accepts on it
    config, proc = headless(tmp_path, ["alpha"])
    try:
        wait_for(lambda: serving(tmp_path))
        got = ctl(config, "status", "--json")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["pid"] == proc.pid
    finally:
        stop(proc)


def test_snapshot_carries_receipts_and_logs_and_events_resume_after_its_seq(tmp_path):
    config, proc = headless(tmp_path, ["alpha"], every="1h")
    transport = httpx.HTTPTransport(uds=str(sock_path(tmp_path)))
    try:
        wait_for(lambda: serving(tmp_path) and receipts(tmp_path))
        with httpx.Client(transport=transport, base_url="http://vmsh", timeout=30) as client:
            snap = client.get("/v1/snapshot").json()
            assert snap["receipts"] and snap["receipts"][0]["receipt"]["namespace"] == "alpha"
            assert any(r["msg"] == "serving the control API" for r in snap["logs"])
            verdict = client.post("/v1/verify", json={"path": snap["receipts"][0]["path"]})
            assert verdict.json()["outcome"] == "OK" and verdict.json()["job"] == "alpha/fast"
            outside = client.post("/v1/verify", json={"path": "/etc/passwd"})
            assert outside.status_code == 403 and "receipts under" in outside.json()["error"]
            # A body nested deeper than a parser may go is bad JSON, not a crashed handler.
            deep = client.post("/v1/force", content=b"[" * 30_000 + b"]" * 30_000)  # < MAX_BODY
            assert deep.status_code == 400 and "not JSON" in deep.json()["error"]
            assert ctl(config, "pause").returncode == 0  # after the snapshot: replayed from its seq
            seen = []
            with client.stream("GET", f"/v1/events?after={snap['seq']}", timeout=10) as stream:
                for line in stream.iter_lines():
                    seen.append(json.loads(line))
                    if seen[-1]["type"] == "Paused":
                        break
            assert seen[-1]["event"]["paused"] is True and seen[0]["seq"] == snap["seq"] + 1
        tail = subprocess.Popen([*CLI, "ctl", "--config", str(config), "tail"], stdout=subprocess.PIPE, text=True)
        threading.Timer(20, tail.terminate).start()  # a tail that never shows it fails, not hangs
        try:
            assert ctl(config, "resume").returncode == 0
            assert tail.stdout is not None
            lines = iter(tail.stdout.readline, "")
            assert any('"command": "resume"' in line for line in lines)  # followed live
        finally:
            tail.terminate()
            tail.wait(timeout=10)
    finally:
        stop(proc)
