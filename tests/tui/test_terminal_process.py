"""The dashboard as a real process on a real pseudo-terminal: what happens when the SSH
session drops (SIGHUP) or the operator's terminal is gone mid-run."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from core.sources import write_batch

from .conftest import config_text, root

BIN = Path(sys.executable).with_name("vmsh-scheduler")


def drain(fd: int, seconds: float) -> bytes:
    """Read what the app draws for `seconds` (a terminal that nobody reads would block it)."""
    out = b""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], min(left, 0.1))
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:  # the child closed its side
                break
    return out


def test_sighup_stops_the_dashboard_cleanly_with_state_flushed(tmp_path):
    (tmp_path / "config.yaml").write_text(
        config_text({"ops:metrics": {"fast": "1s"}}).replace("tick: 5.0", "tick: 0.2")
        + 'http:\n  listen: "127.0.0.1:0"\n'
    )
    write_batch(tmp_path / "data" / "batches" / "ops%3Ametrics", "000001", root(1))
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor"}
    proc = subprocess.Popen(
        [str(BIN), "--config", str(tmp_path / "config.yaml")],
        stdin=child, stdout=child, stderr=child, cwd=tmp_path, env=env, start_new_session=True,
    )
    os.close(child)
    try:
        receipts = tmp_path / "data" / "receipts" / "ops%3Ametrics"
        deadline = time.monotonic() + 30
        screen = b""
        while not (receipts.exists() and len(list(receipts.glob("*.json"))) >= 2):
            assert time.monotonic() < deadline, "no anchors from the dashboard process"
            screen += drain(main, 0.2)
        assert b"ops:metrics" in screen  # it drew the Namespaces pane
        os.killpg(proc.pid, signal.SIGHUP)  # what the kernel sends when the SSH session drops
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 15:
            drain(main, 0.1)
        stopped_in = time.monotonic() - t0
        assert proc.returncode == 0, f"exit {proc.returncode}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    assert stopped_in < 5
    state = json.loads((tmp_path / "data" / "state" / "scheduler.json").read_text())
    job = state["jobs"]["ops:metrics/fast"]
    anchored = sorted(receipts.glob("*.json"))
    last = json.loads(anchored[-1].read_text())
    # State flushed: it knows the last receipt written before the hang-up.
    assert job["last_receipt"] is not None and Path(job["last_receipt"]).name == anchored[-1].name
    assert job["last_root"] == last["batch"]["root"]
    assert list((tmp_path / "data" / "journal").glob("*.json")) == []  # nothing left in flight
