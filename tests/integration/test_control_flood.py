"""A flood on the control socket cannot stop anchoring (core/control_server.py).

A real headless scheduler (its descriptors limited to 1,024, as under systemd without
LimitNOFILE), real Unix-socket clients, /health and /metrics on 127.0.0.1. Waits are
bounded polls; the flood and the latency probes run over fixed windows of real time on
purpose (they measure).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from core.store.files.audit import FileAudit
from tests.integration.test_control import headless_config, health_url
from tests.integration.test_headless import CLI, wait_for

CAP = 32
WRITE_TIMEOUT = 2.0
CLIENTS = 1100


def start_limited(config: Path, nofile: int = 1024) -> subprocess.Popen:
    def limit() -> None:  # the systemd default when a unit sets no LimitNOFILE
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    out = (config.parent / "stdout.log").open("w")
    err = (config.parent / "stderr.log").open("w")
    with out, err:
        return subprocess.Popen([*CLI, "--no-ui", "--config", str(config)], stdout=out, stderr=err,
                                preexec_fn=limit)


def stop(proc: subprocess.Popen, config: Path) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return proc.returncode, (config.parent / "stdout.log").read_text(), (config.parent / "stderr.log").read_text()


def scheduler(tmp: Path, namespaces: list[str], extra: str, **kw) -> tuple[Path, subprocess.Popen]:
    config = headless_config(tmp, namespaces, extra, **kw)
    return config, start_limited(config)


def base_url(config: Path) -> str:
    return health_url(config).removesuffix("/health")


def receipt_count(tmp: Path) -> int:
    return sum(1 for _ in (tmp / "data" / "receipts").rglob("*.json"))


def serving(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(path))
        return True
    except OSError:
        return False


def metric(config: Path, name: str, reason: str) -> float:
    text = httpx.get(base_url(config) + "/metrics", timeout=10).text
    found = re.search(rf'^{name}\{{reason="{reason}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else -1.0


def unlabelled(config: Path, name: str) -> float:
    text = httpx.get(base_url(config) + "/metrics", timeout=10).text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else -1.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def request(path: Path, raw: bytes, timeout: float = 10.0) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:  # a full backlog answers EAGAIN at once: wait as a blocking connect would
            try:
                s.connect(str(path))
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        s.sendall(raw)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_clients_that_never_read_events_cannot_stop_anchoring(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < CLIENTS + 200:
        pytest.skip("this test process cannot hold 1,100 sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    names = [f"ns{i:03d}" for i in range(60)]
    extra = f"control:\n  max_connections: {CAP}\n  write_timeout: {WRITE_TIMEOUT}\n"
    config, proc = scheduler(tmp_path, names, extra, every="1s", unchanged=True)
    control = tmp_path / "data" / "control.sock"
    stuck: list[socket.socket] = []
    latencies: list[float] = []
    peak_fds = connected = 0
    try:
        wait_for(lambda: serving(control) and receipt_count(tmp_path) >= len(names), timeout=60)
        before = receipt_count(tmp_path)
        flood_started = time.monotonic()
        budget = flood_started + 20.0
        for _ in range(CLIENTS):  # open /v1/events and never read
            s = socket.socket(socket.AF_UNIX)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            while True:  # a full backlog answers EAGAIN at once: retry, as a blocking connect waits
                try:
                    s.connect(str(control))
                    break
                except BlockingIOError:
                    if time.monotonic() > budget:
                        break
                    time.sleep(0.005)
            try:
                s.sendall(b"GET /v1/events HTTP/1.1\r\nHost: vmsh\r\n\r\n")
            except OSError:  # not connected within the budget, or refused and closed already
                s.close()
                continue
            stuck.append(s)
            peak_fds = max(peak_fds, fds(proc.pid)) if len(stuck) % 100 == 0 else peak_fds
        connected = len(stuck)
        assert connected > CAP
        peak_fds = max(peak_fds, fds(proc.pid))
        # Beyond the cap: a clear refusal naming it.
        answer = request(control, b"GET /v1/snapshot HTTP/1.1\r\nHost: vmsh\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert f"cap of {CAP} connections" in error and "control.max_connections" in error
        # /health stays quick and anchoring goes on while the flood holds its connections.
        window_end = time.monotonic() + 6.0
        while time.monotonic() < window_end:  # probes over a fixed window of real time
            t0 = time.monotonic()
            got = httpx.get(base_url(config) + "/health", timeout=5.0)
            latencies.append(time.monotonic() - t0)
            assert got.status_code in (200, 503)
            peak_fds = max(peak_fds, fds(proc.pid))
            time.sleep(0.25)
        assert max(latencies) < 1.0, latencies
        assert receipt_count(tmp_path) - before >= len(names), (before, receipt_count(tmp_path))
        # The readers that got in and never read are dropped once their buffers fill and
        # WRITE_TIMEOUT passes; counted, with a reason.
        dropped = wait_for(lambda: metric(config, "vmsh_control_dropped_total", "write_timeout") >= CAP,
                           timeout=30)
        assert dropped
        dropped_after = time.monotonic() - flood_started
        assert metric(config, "vmsh_control_refused_total", "connections") >= 1
        peak_fds = max(peak_fds, fds(proc.pid))
        assert peak_fds < 600, peak_fds  # the cap, not 1,024
        # With the flood closed, the socket serves again.
        for s in stuck:
            s.close()
        stuck.clear()
        wait_for(lambda: request(control, b"GET /v1/snapshot HTTP/1.1\r\nHost: vmsh\r\n\r\n").startswith(
            b"HTTP/1.1 200"), timeout=20)
    finally:
        for s in stuck:
            s.close()
        code, out, err = stop(proc, config)
    print(f"{connected} of {CLIENTS} clients connected; peak fds {peak_fds}, /health max {max(latencies or [0]) * 1000:.0f} ms "
          f"over {len(latencies)} probes, {CAP} readers dropped within {dropped_after:.1f} s")
    assert code == 0, err[-2000:]
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    drops = [json.loads(line) for line in out.splitlines() if '"control client dropped"' in line]
    assert drops and all("took nothing for 2 s" in d["reason"] for d in drops), drops[:3]


def flood_as(uid: int, control: Path, seconds: float) -> int:
    """Refused force requests with 60 KiB bodies, as fast as one client can, as `uid` in a
    forked child; how many were answered 403."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to `uid`, never return to pytest
        sent = 0
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            body = json.dumps({"job": "alpha/fast", "pad": "x" * 60_000}).encode()
            raw = (b"POST /v1/force HTTP/1.1\r\nHost: vmsh\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if request(control, raw).startswith(b"HTTP/1.1 403"):
                    sent += 1
        finally:
            os.write(write, str(sent).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return int(text or 0)


def test_a_readonly_flood_of_refused_commands_keeps_the_audit_log_small(tmp_path):
    if os.getuid() != 0:
        pytest.skip("needs root to run the client as another uid")
    nobody = 65534
    public = Path(tempfile.mkdtemp(prefix="vmsh-control-"))  # tmp_path's parents are root-only
    public.chmod(0o755)
    control = public / "control.sock"
    extra = f'control:\n  socket: "{control}"\n  mode: "0666"\n  readonly_group: "{nobody}"\n'
    config, proc = scheduler(tmp_path, ["alpha"], extra, every="1h")
    audit = tmp_path / "data" / "audit.jsonl"
    try:
        wait_for(lambda: serving(control) and receipt_count(tmp_path) >= 1)
        refused = flood_as(nobody, control, 8.0)
        assert refused > 50, refused  # a real flood
        accepted = request(control, b"POST /v1/pause HTTP/1.1\r\nHost: vmsh\r\nContent-Length: 0\r\n\r\n")
        assert accepted.startswith(b"HTTP/1.1 200")  # root is not in that group
        during = sum(p.stat().st_size for p in audit.parent.glob("audit.jsonl*"))
        suppressed = unlabelled(config, "vmsh_control_audit_suppressed_total")
    finally:
        code, out, err = stop(proc, config)
        shutil.rmtree(public)
    print(f"{refused} refused force requests (60 KiB bodies) in 8 s: audit.jsonl {during} bytes")
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert during < 16 * 1024, during  # 10 compact records a minute, not the bodies
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    records = [x for x in lines if x.get("status") == 403]
    assert 1 <= len(records) <= 10
    assert all(x["uid"] == nobody and x["command"] == "force" and x["arguments"] == {"job": "alpha/fast"}
               and "read-only group" in x["reason"] for x in records)
    summaries = [x for x in lines if "summary" in x]
    assert summaries and summaries[0]["uid"] == nobody
    assert summaries[0]["suppressed"] == refused - len(records)
    assert f"{refused - len(records)} refused commands from uid {nobody} suppressed" in summaries[0]["summary"]
    assert suppressed == refused - len(records)
    assert [x["command"] for x in lines if x.get("status") == 200] == ["pause"]  # accepted: recorded


def test_the_audit_log_rotates_by_size(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = FileAudit(path, max_bytes=4096, keep=3)
    for i in range(400):
        audit.append({"time": i, "command": "force", "arguments": {"job": "a/b"}, "status": 200})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())
    assert json.loads(path.read_text().splitlines()[-1])["time"] == 399  # the newest in the live file
    assert path.stat().st_mode & 0o777 == 0o640
