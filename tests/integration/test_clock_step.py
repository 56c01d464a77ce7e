"""A wall-clock step under a running `vmsh-scheduler --no-ui`: libfaketime on the real process.

libfaketime shifts only the wall clock (FAKETIME_DONT_FAKE_MONOTONIC=1 leaves
CLOCK_MONOTONIC and CLOCK_BOOTTIME alone, as an NTP step or `date -s` does), and with
FAKETIME_TIMESTAMP_FILE + FAKETIME_NO_CACHE=1 the offset is re-read on every call, so
the test steps the clock mid-run by rewriting that file. Every wait is a bounded poll
for something the program writes; nothing sleeps to stand in for a schedule.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from core.sources import write_batch

# The `vmsh-scheduler` command (cli.main:main), from this checkout.
CLI = [sys.executable, "-m", "cli"]
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
FAST = 2  # seconds between anchors of the fast job

pytestmark = pytest.mark.skipif(not LIBFAKETIME.exists(), reason=f"libfaketime not installed ({LIBFAKETIME})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path, port: int) -> Path:
    lines = [
        "scheduler:",
        "  tick: 0.5",
        f"  data_dir: {tmp / 'data'}",
        "http:",
        f'  listen: "127.0.0.1:{port}"',
        "targets:",
        "  local:",
        "    dev: {}",
        "namespaces:",
    ]
    for ns, every in (("fast", f"{FAST}s"), ("hourly", "1h")):
        write_batch(tmp / "batches" / ns, "000001", "sha256:" + f"{ns.encode().hex():0>64}")
        lines += [
            f"  {ns}:",
            f"    source: {tmp / 'batches' / ns}",
            "    cadence:",
            "      fast:",
            '        target: "local:dev"',
            f'        every: "{every}"',
            "        anchor_unchanged: true",
        ]
    path = tmp / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def anchors(tmp: Path, ns: str) -> int:
    return len(list((tmp / "data" / "receipts" / ns).glob("*.json")))


def health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for_anchors(tmp: Path, port: int, want: int, timeout: float, seen: list | None) -> None:
    """Poll until the fast job has `want` receipts; each /health answer on the way goes to `seen`."""
    deadline = time.monotonic() + timeout
    while anchors(tmp, "fast") < want:
        if time.monotonic() > deadline:
            raise AssertionError(f"{anchors(tmp, 'fast')} anchors of the fast job, {want} expected within {timeout}s")
        if seen is not None:
            seen.append(health(port))
        time.sleep(0.1)
    if seen is not None:
        seen.append(health(port))


def test_a_wall_clock_step_back_an_hour_or_ahead_a_day_changes_neither_cadence_nor_health(tmp_path):
    port = free_port()
    config = write_config(tmp_path, port)
    offset = tmp_path / "faketime.rc"
    offset.write_text("+0\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    proc = subprocess.Popen(
        [*CLI, "--no-ui", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    seen: list[tuple[int, dict]] = []
    try:
        wait_for_anchors(tmp_path, port, 2, 20, None)
        seen.append(health(port))
        for step in ("-3600", "+86400"):  # back an hour, then a day ahead of real time
            offset.write_text(step + "\n")
            before = anchors(tmp_path, "fast")
            started = time.monotonic()
            # Two more periods: anchors keep coming at the cadence (give each a period of slack).
            wait_for_anchors(tmp_path, port, before + 2, 4 * FAST, seen)
            assert time.monotonic() - started < 3 * FAST + 1
        # The hourly job was anchored once at start: a day's jump forward made it due no earlier.
        assert anchors(tmp_path, "hourly") == 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err[-2000:]
    unhealthy = [(code, body.get("status"), body.get("reason")) for code, body in seen if code != 200]
    assert not unhealthy, f"{len(unhealthy)} of {len(seen)} /health answers not healthy: {unhealthy[:3]}"
    stale = [body["namespaces"] for _, body in seen if any(ns["status"] != "ok" for ns in body["namespaces"].values())]
    assert not stale
