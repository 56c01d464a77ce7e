"""The dashboard losing its terminal, as a real process on a pty (tests/tui/test_terminal_process.py
checks the behaviour; this prints the figures).

    .venv/bin/python bench/run.py terminal

- close -> exit: the pty master closed (what `tmux kill-session` or a dropped SSH
  connection does) until the process has exited, median and worst of 5 runs;
- CPU at end of input: the input terminal closed while the display stays, CPU time used
  from then until the process has exited (Textual alone spins at 100 % there).
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = 5
JOBS = 4  # of config.example.yaml, those with batches (make run writes demo:live's and demo:flaky's), each anchors at start
WITH_CONTROLLING_TTY = (
    "import fcntl, os, sys, termios; fcntl.ioctl(1, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])"
)


def _pty() -> tuple[int, int]:
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    return main, child


def _start(data: Path, stdin: int, display: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "cli", "--config", str(ROOT / "config.example.yaml"), "--data-dir", str(data)]
    env = {**os.environ, "TERM": "xterm-256color", "METRICS_PORT": "0", "PYTHONPATH": str(ROOT)}
    data.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", WITH_CONTROLLING_TTY, *command], stdin=stdin, stdout=display,
                            stderr=display, cwd=data.parent, env=env, start_new_session=True)


def _read(fd: int, seconds: float) -> None:
    ready, _, _ = select.select([fd], [], [], seconds)
    if ready:
        try:
            os.read(fd, 65536)
        except OSError:
            pass


def _wait_for_anchors(main: int, data: Path) -> None:
    deadline = time.monotonic() + 30
    while len([p for p in (data / "receipts").glob("*/*.json") if not p.parent.name.startswith(".")]) < JOBS:
        if time.monotonic() > deadline:
            raise RuntimeError("no anchors from the dashboard")
        _read(main, 0.1)
    end = time.monotonic() + 0.5  # and a few frames drawn
    while time.monotonic() < end:
        _read(main, 0.05)


def _exited(pid: int) -> bool:
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None and info.si_pid == pid


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _finish(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.kill()
    return proc.wait()


def close_to_exit(data: Path) -> float:
    main, child = _pty()
    proc = _start(data, child, child)
    os.close(child)
    try:
        _wait_for_anchors(main, data)
    except BaseException:
        os.close(main)
        _finish(proc)
        raise
    os.close(main)
    t0 = time.monotonic()
    while not _exited(proc.pid) and time.monotonic() - t0 < 30:
        time.sleep(0.005)
    took = time.monotonic() - t0
    if _finish(proc) != 0:
        raise RuntimeError(f"exit {proc.returncode} after the terminal closed")
    return took


def cpu_at_end_of_input(data: Path) -> tuple[float, float]:
    keys_main, keys = _pty()
    main, child = _pty()
    proc = _start(data, keys, child)
    os.close(keys)
    os.close(child)
    try:
        _wait_for_anchors(main, data)
        before = _cpu(proc.pid)
        os.close(keys_main)
        t0 = time.monotonic()
        while not _exited(proc.pid) and time.monotonic() - t0 < 10:
            _read(main, 0.01)
        return _cpu(proc.pid) - before, time.monotonic() - t0
    finally:
        _finish(proc)
        os.close(main)


def run() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        times = [close_to_exit(Path(tmp) / f"close{n}" / "data") for n in range(RUNS)]
        cpu, wall = cpu_at_end_of_input(Path(tmp) / "eof" / "data")
    return [
        ("terminal closed -> exit, median of 5", f"{statistics.median(times):.2f} s",
         f"< 5 s (worst {max(times):.2f} s)"),
        ("CPU from end of input to exit", f"{cpu:.2f} s", f"in {wall:.2f} s; Textual alone spins at 100 % here"),
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from bench.run import table

    print(table(run()))
