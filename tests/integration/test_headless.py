"""`vmsh-scheduler --no-ui` as a real process: receipts, verify, the lock, kill -9, signals.

These tests run the real program, so they wait on real time; each wait is a bounded
poll for something the program writes, never a sleep standing in for a schedule.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.receipts import bound_leaf
from core.sources import write_batch

# The `vmsh-scheduler` command (cli.main:main), from this checkout.
CLI = [sys.executable, "-m", "cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(tmp: Path, namespaces: list[str], every: str = "1s", unchanged: bool = False) -> Path:
    lines = [
        "scheduler:",
        "  tick: 0.5",
        f"  data_dir: {tmp / 'data'}",
        "  base_backoff: 0.2",
        "http:",
        f'  listen: "127.0.0.1:{free_port()}"',
        "targets:",
        "  local:",
        "    dev: {}",
        "namespaces:",
    ]
    for ns in namespaces:
        lines += [
            f'  "{ns}":',
            f"    source: {tmp / 'batches' / ns}",
            "    cadence:",
            "      fast:",
            '        target: "local:dev"',
            f'        every: "{every}"',
            f"        anchor_unchanged: {'true' if unchanged else 'false'}",
        ]
    path = tmp / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "--no-ui", "--config", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def receipts(tmp: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp / "data" / "receipts").rglob("*.json"))]


def wait_for(predicate, timeout: float = 20.0, *, what: str = ""):
    """Poll a real process's observable result until `predicate()` is truthy; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" if what else "timed out waiting")


def stop(proc: subprocess.Popen) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    return proc.returncode, out, err


def test_headless_writes_receipts_that_verify_and_stops_cleanly_on_sigterm(tmp_path):
    for ns in ("alpha", "beta"):
        write_batch(tmp_path / "batches" / ns, "000001", "sha256:" + f"{ns.encode().hex():0>64}")
    config = make_config(tmp_path, ["alpha", "beta"])
    proc = start(config)
    try:
        wait_for(lambda: len(receipts(tmp_path)) >= 2)
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert {"time", "level", "msg"} <= set(lines[0])
    assert any(line["msg"] == "anchored" for line in lines)
    assert lines[-1]["msg"] == "stopped"
    files = sorted(str(p) for p in (tmp_path / "data" / "receipts").rglob("*.json"))
    verify = subprocess.run([*CLI, "verify", *files], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.count("OK ") == len(files)
    # A folder stands for every receipt below it; one that is tampered with fails alone.
    tampered = json.loads(Path(files[0]).read_text())
    tampered["anchored_root"] = "sha256:" + "00" * 32
    Path(files[0]).write_text(json.dumps(tampered))
    folder = subprocess.run(
        [*CLI, "verify", str(tmp_path / "data" / "receipts")], capture_output=True, text=True
    )
    assert folder.returncode == 1
    assert folder.stdout.splitlines()[0].startswith(f"FAIL {files[0]}: ")
    assert [line.split()[0] for line in folder.stdout.splitlines()[1:]] == ["OK"] * (len(files) - 1)
    assert folder.stderr == f"{len(files)} receipts: {len(files) - 1} OK, 1 failed\n"


def test_single_job_receipt_passes_openssl_ts_verify_and_a_tampered_one_fails(tmp_path):
    write_batch(tmp_path / "batches" / "alpha", "000001", "sha256:" + "ab" * 32)
    proc = start(make_config(tmp_path, ["alpha"]))
    try:
        wait_for(lambda: receipts(tmp_path))
    finally:
        stop(proc)
    path = next((tmp_path / "data" / "receipts").rglob("*.json"))
    receipt = json.loads(path.read_text())
    # a group of one anchors its leaf itself: the root bound to namespace and batch id
    leaf = bound_leaf(receipt["namespace"], receipt["batch"]["id"], receipt["batch"]["root"])
    assert receipt["tree_size"] == 1 and receipt["anchored_root"] == "sha256:" + leaf.hex()
    token = tmp_path / "token.der"
    token.write_bytes(base64.b64decode(receipt["attestation"]["token"]))
    openssl = subprocess.run(
        ["openssl", "ts", "-verify", "-digest", receipt["anchored_root"].removeprefix("sha256:"),
         "-in", str(token), "-token_in", "-CAfile", str(tmp_path / "data" / "tsa" / "local-tsa.pem")],
        capture_output=True, text=True,
    )
    assert openssl.returncode == 0 and "Verification: OK" in openssl.stdout, openssl.stderr
    receipt["batch"]["root"] = "sha256:" + "cd" * 32
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(receipt))
    result = subprocess.run(
        [*CLI, "verify", "--data-dir", str(tmp_path / "data"), str(path), str(bad)],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert result.stdout.startswith("OK ") and f"): {path}\n" in result.stdout
    assert f"FAIL {bad}: " in result.stdout


def test_a_second_scheduler_on_the_same_data_dir_exits_2_naming_the_holder(tmp_path):
    write_batch(tmp_path / "batches" / "alpha", "000001", "sha256:" + "ab" * 32)
    config = make_config(tmp_path, ["alpha"])
    first = start(config)
    try:
        wait_for(lambda: receipts(tmp_path))
        second = subprocess.run(
            [*CLI, "--no-ui", "--config", str(config)], capture_output=True, text=True, timeout=30
        )
        assert second.returncode == 2
        assert f"pid {first.pid}, running " in second.stderr
        assert f"{' '.join(CLI[1:])} --no-ui --config {config}" in second.stderr  # the holder's command line
        assert f"stop it with `kill -TERM {first.pid}`" in second.stderr
    finally:
        stop(first)


def run_on_terminal(args: list[str]) -> tuple[int, str]:
    """Run `args` on a pty (stdin, stdout and stderr), as from an operator's shell: the
    dashboard refuses to start without a terminal. Its exit code and what it printed."""
    import pty
    import select

    main, child = pty.openpty()
    proc = subprocess.Popen(args, stdin=child, stdout=child, stderr=child, start_new_session=True)
    os.close(child)
    out = b""
    try:
        while select.select([main], [], [], 30)[0]:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the program exited, nothing holds the terminal
                break
            if not chunk:
                break
            out += chunk
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    return code, out.decode(errors="replace").replace("\r\n", "\n")


@pytest.mark.parametrize("mode", [["--no-ui"], []], ids=["headless", "dashboard"])
def test_a_corrupt_state_file_stops_the_start_with_its_line_and_a_way_out(tmp_path, mode):
    write_batch(tmp_path / "batches" / "alpha", "000001", "sha256:" + "ab" * 32)
    config = make_config(tmp_path, ["alpha"])
    state = tmp_path / "data" / "state" / "scheduler.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"version": 1,\n "jobs": {oops}}\n')
    if mode:
        result = subprocess.run(
            [*CLI, *mode, "--config", str(config)], capture_output=True, text=True, timeout=30,
            stdin=subprocess.DEVNULL,
        )
        code, stderr = result.returncode, result.stderr
    else:  # the dashboard starts only on a terminal
        code, stderr = run_on_terminal([*CLI, "--config", str(config)])
    assert code == 2
    assert stderr.startswith(f"vmsh-scheduler: {state}:2:11: state file is not valid JSON")
    assert "move it aside to start afresh" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "data" / "receipts").exists()  # nothing anchored on unknown state
    # Moved aside, the next start anchors from scratch.
    state.rename(state.with_suffix(".json.bad"))
    proc = start(config)
    try:
        wait_for(lambda: receipts(tmp_path))
    finally:
        assert stop(proc)[0] == 0


def test_a_data_dir_that_cannot_be_created_is_a_message_not_a_traceback(tmp_path):
    (tmp_path / "file").write_text("")
    config = make_config(tmp_path, ["alpha"])
    result = subprocess.run(
        [*CLI, "--no-ui", "--config", str(config), "--data-dir", str(tmp_path / "file" / "data")],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr == f"vmsh-scheduler: cannot use the data dir {tmp_path / 'file' / 'data'}: Not a directory\n"


def test_kill_9_mid_run_loses_no_receipt_and_anchors_no_root_twice(tmp_path):
    names = [f"ns{i}" for i in range(6)]
    counter = 0

    def new_roots() -> None:
        nonlocal counter
        counter += 1
        for ns in names:
            write_batch(tmp_path / "batches" / ns, f"{counter:06d}", "sha256:" + os.urandom(32).hex())

    new_roots()
    config = make_config(tmp_path, names, every="1s")
    rng = random.Random(7)
    for _ in range(4):
        proc = start(config)
        before = len(receipts(tmp_path))
        try:
            wait_for(lambda before=before: len(receipts(tmp_path)) > before)
            new_roots()
            time.sleep(rng.uniform(0.0, 1.2))  # kill at an arbitrary instant, mid-anchor or not
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=20)
    new_roots()
    before = len(receipts(tmp_path))
    proc = start(config)
    state_file = tmp_path / "data" / "state" / "scheduler.json"
    try:
        # Running again: new roots get anchored, and every interrupted anchor is resolved.
        wait_for(lambda: len(receipts(tmp_path)) >= before + len(names))
        wait_for(lambda: not list((tmp_path / "data" / "journal").glob("*.json")))
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    state = json.loads(state_file.read_text())  # readable after every kill
    all_receipts = receipts(tmp_path)
    seen: set[tuple[str, str]] = set()
    for r in all_receipts:
        key = (r["namespace"], r["batch"]["root"])
        assert key not in seen, f"{key} anchored twice"
        seen.add(key)
    for job, entry in state["jobs"].items():
        ns = job.split("/")[0]
        if entry.get("last_root"):
            assert (ns, entry["last_root"]) in seen, f"state says {job} anchored but no receipt"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_shutdown_signals_flush_state(tmp_path, sig):
    write_batch(tmp_path / "batches" / "alpha", "000001", "sha256:" + "ab" * 32)
    proc = start(make_config(tmp_path, ["alpha"]))
    wait_for(lambda: receipts(tmp_path))
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    state = json.loads((tmp_path / "data" / "state" / "scheduler.json").read_text())
    assert state["jobs"]["alpha/fast"]["last_root"] == "sha256:" + "ab" * 32


def _listen(config: Path) -> str:
    line = next(line for line in config.read_text().splitlines() if "listen:" in line)
    return "http://" + line.split('"')[1]


def _succeeded(metrics_text: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "vmsh_anchors_succeeded_total"
    )


def test_headless_serves_health_and_metrics_and_applies_an_edit_without_restart(tmp_path):
    """What an operator checks with curl while `--no-ui` runs."""
    import httpx

    for ns in ("alpha", "beta"):
        write_batch(tmp_path / "batches" / ns, "000001", "sha256:" + f"{ns.encode().hex():0>64}")
    config = make_config(tmp_path, ["alpha"], unchanged=True)
    base = _listen(config)
    proc = start(config)
    try:
        wait_for(lambda: len(receipts(tmp_path)) >= 2)

        def healthy():
            try:
                r = httpx.get(base + "/health", timeout=2)
            except httpx.TransportError:
                return None
            return r if r.status_code == 200 else None

        health = wait_for(healthy)
        assert health.json()["status"] == "healthy"
        assert httpx.get(base + "/livez").status_code == 200
        assert httpx.get(base + "/readyz").status_code == 200
        text = httpx.get(base + "/metrics").text
        on_disk = len(receipts(tmp_path))
        assert on_disk - 1 <= _succeeded(text) <= on_disk + 1  # an anchor may land in between
        assert 'vmsh_job_period_seconds{cadence="fast",namespace="alpha",target="local:dev"} 1.0' in text

        # Add beta on disk: the watcher applies it, no restart, no signal.
        edited = make_config(tmp_path, ["alpha", "beta"], unchanged=True)
        edited.write_text(edited.read_text().replace(_listen(edited)[7:], base[7:]))
        wait_for(lambda: any(r["namespace"] == "beta" for r in receipts(tmp_path)))
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    assert any(json.loads(line)["msg"] == "config files changed; reloading" for line in out.splitlines())


def test_a_second_scheduler_on_a_taken_port_exits_2_and_says_so(tmp_path):
    write_batch(tmp_path / "a" / "batches" / "alpha", "000001", "sha256:" + "ab" * 32)
    first_cfg = make_config(tmp_path / "a", ["alpha"])
    (tmp_path / "b").mkdir()
    second_cfg = make_config(tmp_path / "b", ["alpha"])
    second_cfg.write_text(second_cfg.read_text().replace(_listen(second_cfg)[7:], _listen(first_cfg)[7:]))
    first = start(first_cfg)
    try:
        wait_for(lambda: receipts(tmp_path / "a"))
        second = subprocess.run(
            [*CLI, "--no-ui", "--config", str(second_cfg)], capture_output=True, text=True, timeout=30
        )
    finally:
        stop(first)
    assert second.returncode == 2
    assert _listen(first_cfg)[7:] in second.stderr and "in use" in second.stderr


def _health(base: str):
    import httpx

    try:
        return httpx.get(base + "/health", timeout=2)
    except httpx.TransportError:
        return None


def _at_50_ms(proc: subprocess.Popen, sig: signal.Signals) -> None:
    """Wait 50 ms after exec; if the interpreter has not reached our first instruction yet
    (a loaded machine: Python's own start takes 20-40 ms here), wait for it, at most 150 ms
    in all. Our first instruction catches SIGHUP, SIGTERM and SIGINT together (SIGINT alone
    is caught by the interpreter from its own start, so SIGHUP is the marker); code that
    catches them only once its event loop runs (after ~0.3 s of imports and loading) is
    still starting when `sig` arrives."""
    started = time.monotonic()
    time.sleep(0.05)
    mask = 1 << (signal.SIGHUP - 1)
    while time.monotonic() - started < 0.15:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
        if caught & mask:
            break
        time.sleep(0.002)
    proc.send_signal(sig)


def test_sighup_50_ms_after_start_and_during_start_neither_kills_nor_stops_it(tmp_path):
    """A reload request while the config loads, the lock is taken and the state is read:
    recorded, then acted on once the loop runs; never the default action (exit 129)."""
    write_batch(tmp_path / "batches" / "alpha", "000001", "sha256:" + "ab" * 32)
    config = make_config(tmp_path, ["alpha"])
    proc = start(config)
    try:
        _at_50_ms(proc, signal.SIGHUP)
        for _ in range(15):  # and again through the rest of the start
            time.sleep(0.02)
            assert proc.poll() is None, proc.communicate()[1]
            proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: _health(_listen(config))).status_code in (200, 503)
        wait_for(lambda: receipts(tmp_path))
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in err
    messages = [json.loads(line)["msg"] for line in out.splitlines()]
    assert "config reload: no change" in messages
    assert messages[-1] == "stopped"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_during_start_exits_0_without_a_traceback(tmp_path, sig):
    write_batch(tmp_path / "batches" / "alpha", "000001", "sha256:" + "ab" * 32)
    config = make_config(tmp_path, ["alpha"])
    proc = start(config)
    _at_50_ms(proc, sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert f"{sig.name} during start" in err or "stopped during start" in out
    lock = tmp_path / "data" / "scheduler.lock"
    assert not lock.exists() or lock.read_text() == ""  # released (emptied) if it was taken


def test_a_taken_port_names_the_way_out_and_never_says_started(tmp_path):
    write_batch(tmp_path / "batches" / "alpha", "000001", "sha256:" + "ab" * 32)
    config = make_config(tmp_path, ["alpha"])
    host, port = _listen(config)[7:].split(":")
    with socket.socket() as holder:
        holder.bind((host, int(port)))
        holder.listen()
        result = subprocess.run(
            [*CLI, "--no-ui", "--config", str(config)], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 2
    assert f"{host}:{port}" in result.stderr
    assert "http.listen" in result.stderr and "METRICS_PORT" in result.stderr
    messages = [json.loads(line)["msg"] for line in result.stdout.splitlines()]
    assert "scheduler started" not in messages and "cannot start" in messages


def _run_once(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "--no-ui", "--config", str(config)], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("folder", ["state", "receipts", "journal"])
def test_a_folder_it_cannot_write_stops_the_start_with_exit_2_naming_it(tmp_path, folder):
    write_batch(tmp_path / "batches" / "alpha", "000001", "sha256:" + "ab" * 32)
    config = make_config(tmp_path, ["alpha"])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / folder).write_text("a file where a folder should be\n")
    result = _run_once(config)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        f"vmsh-scheduler: cannot write to {tmp_path / 'data' / folder}: it is a file, not a folder\n"
    )
    assert "Traceback" not in result.stderr
    assert (tmp_path / "data" / "scheduler.lock").read_text() == ""  # released


def test_a_read_only_receipts_mount_stops_the_start_with_exit_2_naming_it(tmp_path):
    write_batch(tmp_path / "batches" / "alpha", "000001", "sha256:" + "ab" * 32)
    config = make_config(tmp_path, ["alpha"])
    receipts_dir = tmp_path / "data" / "receipts"
    receipts_dir.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(receipts_dir)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        result = _run_once(config)
    finally:
        subprocess.run(["umount", str(receipts_dir)], check=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        f"vmsh-scheduler: cannot write to {receipts_dir}: Read-only file system\n"
    )


def test_a_lock_left_by_a_killed_scheduler_is_taken_over_and_said_so(tmp_path):
    write_batch(tmp_path / "batches" / "alpha", "000001", "sha256:" + "ab" * 32)
    config = make_config(tmp_path, ["alpha"])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "scheduler.lock").write_text(f"{2**30}\n")  # its holder was kill -9'd
    proc = start(config)
    try:
        wait_for(lambda: receipts(tmp_path))
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    [line] = [json.loads(x) for x in out.splitlines() if "took over the data dir lock" in x]
    assert line["level"] == "WARNING" and line["previous_pid"] == 2**30


def test_a_log_file_it_cannot_write_stops_the_start_with_exit_2_naming_it(tmp_path):
    config = make_config(tmp_path, ["alpha"])
    (tmp_path / "not-a-folder").write_text("")
    log_file = tmp_path / "not-a-folder" / "vmsh.log"
    config.write_text(config.read_text().replace("http:", f"log:\n  file: {log_file}\nhttp:"))
    result = _run_once(config)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"vmsh-scheduler: cannot write the log file {log_file}: "
        f"{tmp_path / 'not-a-folder'} is a file, not a folder\n"
    )
    assert not (tmp_path / "data" / "scheduler.lock").exists()  # stopped before taking the lock


def test_a_start_error_prints_no_terminal_escape_from_a_path(tmp_path):
    config = make_config(tmp_path, ["alpha"])
    data = tmp_path / "data\x1b[2J"
    data.mkdir()
    (data / "receipts").write_text("")
    result = subprocess.run(
        [*CLI, "--no-ui", "--config", str(config), "--data-dir", str(data)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "\x1b" not in result.stderr
    assert f"cannot write to {tmp_path}/data\\x1b[2J/receipts: it is a file, not a folder\n  " in result.stderr
