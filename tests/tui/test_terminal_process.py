"""The dashboard as a real process on a real pseudo-terminal: what happens when the SSH
session drops (SIGHUP), when the terminal itself is gone (the pty master closed, as
`tmux kill-session` or a dropped SSH connection does), when its input ends, and when
there is no terminal at all."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from core.sources import write_batch
from core.store.files.lock import DataDirLock

from .conftest import config_text, root

# The `vmsh-scheduler` command (cli.main:main), from this checkout.
CLI = [sys.executable, "-m", "cli"]
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"
# `vmsh-scheduler` is cli.main:main; run it from this checkout.
COMMAND = [sys.executable, "-m", "cli"]
# Makes the pty on fd 1 the controlling terminal, then execs the command: a hang-up then
# reaches the dashboard as it reaches a program in an SSH session or a tmux pane.
WITH_CONTROLLING_TTY = (
    "import fcntl, os, sys, termios; fcntl.ioctl(1, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])"
)
JOBS = 4  # of config.example.yaml, those with batches (make run writes demo:live's and demo:flaky's); each anchors once at start
ESC = b"\x1b"


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


def environment() -> dict[str, str]:
    # METRICS_PORT=0: any free port, so parallel runs and a running scheduler never collide.
    return {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor", "METRICS_PORT": "0",
            "PYTHONPATH": str(REPO)}


def open_pty() -> tuple[int, int]:
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    return main, child


def dashboard_args(data: Path) -> list[str]:
    return [*COMMAND, "--config", str(EXAMPLE), "--data-dir", str(data)]


def start_dashboard(data: Path, *, stdin: int, display: int) -> subprocess.Popen:
    """The bundled example config on `data`, drawing on the pty slave `display`, which
    becomes the process's controlling terminal (its own session, as under sshd)."""
    return subprocess.Popen(
        [sys.executable, "-c", WITH_CONTROLLING_TTY, *dashboard_args(data)],
        stdin=stdin, stdout=display, stderr=display, cwd=data.parent, env=environment(),
        start_new_session=True,
    )


def receipt_files(data: Path) -> list[Path]:
    return [p for p in (data / "receipts").glob("*/*.json") if not p.parent.name.startswith(".")]


def wait_for_anchors(main: int, data: Path, proc: subprocess.Popen) -> bytes:
    """Until every job of the example has anchored once and the dashboard has drawn."""
    screen = b""
    deadline = time.monotonic() + 30
    while len(receipt_files(data)) < JOBS or b"demo:ledger" not in screen:
        assert proc.poll() is None, f"the dashboard exited early ({proc.returncode}): {screen[-2000:]!r}"
        assert time.monotonic() < deadline, "no anchors from the dashboard process"
        screen += drain(main, 0.2)
    return screen


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (readable until it is reaped, so also as a zombie)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def running(pid: int) -> bool:
    """`pid` exists and has not exited (a zombie waiting for its parent to reap it has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_members(pgid: int) -> list[int]:
    """Processes of group `pgid` still running (not zombies)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def wait_exited(pid: int, seconds: float, drain_fd: int | None = None) -> tuple[bool, bytes]:
    """Wait for `pid` to exit without reaping it; read `drain_fd` meanwhile."""
    out = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None and info.si_pid == pid:
            return True, out
        if drain_fd is None:
            time.sleep(0.02)
        else:
            out += drain(drain_fd, 0.02)
    return False, out


def assert_released_and_flushed(data: Path, pgid: int) -> None:
    """What the operator needs after the dashboard is gone: no process left, the data dir
    free for the next scheduler, the state on disk knowing every receipt written."""
    assert group_members(pgid) == []  # nothing left running in the dashboard's process group
    with DataDirLock(data):  # a second scheduler can lock the data dir
        pass
    jobs = json.loads((data / "state" / "scheduler.json").read_text())["jobs"]
    newest: dict[str, str] = {}
    for path in sorted(receipt_files(data), key=lambda p: p.name):  # names start with the time
        receipt = json.loads(path.read_text())
        newest[f"{receipt['namespace']}/{receipt['cadence']}"] = path.name
    assert len(newest) == JOBS
    for job, name in newest.items():
        assert Path(jobs[job]["last_receipt"]).name == name, job
    assert list((data / "journal").glob("*.json")) == []  # nothing left in flight


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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
        [*CLI, "--config", str(tmp_path / "config.yaml")],
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


def test_closing_the_terminal_stops_the_dashboard_and_frees_the_data_dir(tmp_path):
    """The pty master closed (not a signal sent by hand): the kernel hangs the terminal up,
    every read sees end-of-file and every write fails with EIO."""
    data = tmp_path / "data"
    main, child = open_pty()
    proc = start_dashboard(data, stdin=child, display=child)
    os.close(child)
    try:
        wait_for_anchors(main, data, proc)
        os.close(main)  # the terminal is gone
        t0 = time.monotonic()
        exited, _ = wait_exited(proc.pid, 10)
        stopped_in = time.monotonic() - t0
        assert exited, "the dashboard outlived its terminal"
        assert proc.wait() == 0
    finally:
        stop(proc)
    assert stopped_in < 5
    assert_released_and_flushed(data, proc.pid)


def test_end_of_input_stops_the_dashboard_without_spinning(tmp_path):
    """Input and display on two terminals; the input one is closed. Textual's input thread
    would loop on end-of-file at 100 % CPU; the dashboard stops instead, and the display,
    still there, is given back restored with the reason on it."""
    data = tmp_path / "data"
    keys_main, keys = open_pty()
    main, child = open_pty()
    proc = start_dashboard(data, stdin=keys, display=child)
    os.close(keys)
    os.close(child)
    try:
        wait_for_anchors(main, data, proc)
        before = cpu_seconds(proc.pid)
        os.close(keys_main)  # end of input
        t0 = time.monotonic()
        exited, after_eof = wait_exited(proc.pid, 5, drain_fd=main)
        elapsed = time.monotonic() - t0
        used = cpu_seconds(proc.pid) - before
        assert exited, f"still running {elapsed:.1f} s after end of input, {used:.2f} s CPU"
        after_eof += drain(main, 0.3)
        assert proc.wait() == 0, after_eof[-2000:].decode(errors="replace")
    finally:
        stop(proc)
        os.close(main)
    assert used < 0.5, f"{used:.2f} s CPU in {elapsed:.1f} s after end of input"
    assert b"\x1b[?1049l" in after_eof  # left the alternate screen: the terminal is usable
    assert b"stopped: terminal hung up (stdin)" in after_eof
    assert_released_and_flushed(data, proc.pid)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_tmux_kill_session_leaves_no_process_and_no_lock(tmp_path):
    """What the operator does: the dashboard in a tmux pane at 80x24, then kill-session."""
    data = tmp_path / "data"
    tmux = ["tmux", "-L", f"vmsh-test-{os.getpid()}", "-f", os.devnull]
    env = environment()
    command = " ".join(["exec", "env", f"PYTHONPATH={REPO}", "METRICS_PORT=0", *dashboard_args(data)])
    subprocess.run([*tmux, "new-session", "-d", "-s", "dash", "-x", "80", "-y", "24", command],
                   env=env, cwd=tmp_path, check=True)
    pid = None
    try:
        pane = subprocess.run([*tmux, "list-panes", "-t", "dash", "-F", "#{pane_pid}"],
                              env=env, capture_output=True, text=True, check=True)
        pid = int(pane.stdout.split()[0])
        deadline = time.monotonic() + 30
        screen = ""
        while len(receipt_files(data)) < JOBS or "demo:ledger" not in screen:
            assert time.monotonic() < deadline, f"no anchors from the dashboard in tmux: {screen}"
            time.sleep(0.2)
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", "dash"],
                                    env=env, capture_output=True, text=True).stdout
        subprocess.run([*tmux, "kill-session", "-t", "dash"], env=env, check=True)
        t0 = time.monotonic()
        while running(pid) and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        stopped_in = time.monotonic() - t0
        assert not running(pid), "the dashboard outlived its tmux session"
    finally:
        subprocess.run([*tmux, "kill-server"], env=env, capture_output=True)
        if pid is not None and running(pid):
            os.kill(pid, signal.SIGKILL)
    assert stopped_in < 5
    assert_released_and_flushed(data, pid)


@pytest.mark.parametrize("missing", ["stdout", "stdin"])
def test_without_a_terminal_it_refuses_and_says_use_no_ui(tmp_path, missing):
    """Under cron, systemd or a pipe the dashboard must not write escape codes and wait
    for keys forever: exit 2 with the way out, before touching the data dir."""
    data = tmp_path / "data"
    if missing == "stdout":
        result = subprocess.run(dashboard_args(data), stdin=subprocess.DEVNULL, capture_output=True,
                                cwd=tmp_path, env=environment(), timeout=20)
        output = result.stdout + result.stderr
        assert result.stderr == b"vmsh-scheduler: no terminal: use --no-ui for headless\n"
        code = result.returncode
    else:
        main, child = open_pty()
        proc = subprocess.Popen(dashboard_args(data), stdin=subprocess.PIPE, stdout=child, stderr=child,
                                cwd=tmp_path, env=environment(), start_new_session=True)
        os.close(child)
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            exited, output = wait_exited(proc.pid, 20, drain_fd=main)
            output += drain(main, 0.2)
            assert exited, f"still running without a terminal on stdin: {output[-500:]!r}"
            code = proc.wait()
        finally:
            stop(proc)
            os.close(main)
        assert b"vmsh-scheduler: no terminal: use --no-ui for headless" in output
    assert code == 2
    assert ESC not in output
    assert not data.exists()  # nothing started, nothing locked


def test_sigint_stops_the_dashboard_like_sigterm(tmp_path):
    """`kill -INT` (ctrl+c reaches the app as a key in raw mode): an orderly stop, exit 0,
    the terminal given back, not a KeyboardInterrupt traceback."""
    data = tmp_path / "data"
    main, child = open_pty()
    proc = start_dashboard(data, stdin=child, display=child)
    os.close(child)
    try:
        wait_for_anchors(main, data, proc)
        os.kill(proc.pid, signal.SIGINT)
        exited, output = wait_exited(proc.pid, 10, drain_fd=main)
        assert exited, "SIGINT did not stop the dashboard"
        output += drain(main, 0.3)
        assert proc.wait() == 0
    finally:
        stop(proc)
        os.close(main)
    assert b"\x1b[?1049l" in output and b"stopped: SIGINT" in output
    assert b"Traceback" not in output
    assert_released_and_flushed(data, proc.pid)


def test_a_terminal_that_stops_reading_never_stops_the_engine(tmp_path):
    """An SSH connection that stalls without closing: sshd stops reading the pty and its
    buffer fills. Textual's writes would then block the app's loop, and with it every
    anchor, until sshd gives up (hours by default). The dashboard drops what the terminal
    cannot take, keeps anchoring, and draws the whole screen anew once it reads again."""
    namespaces = {f"ns:{n:02d}": {"fast": "1s"} for n in range(12)}
    (tmp_path / "config.yaml").write_text(
        config_text(namespaces).replace("tick: 5.0", "tick: 0.2") + 'http:\n  listen: "127.0.0.1:0"\n'
    )
    for ns in namespaces:
        write_batch(tmp_path / "data" / "batches" / ns.replace(":", "%3A"), "000001", root(1))
    data = tmp_path / "data"
    main, child = open_pty()
    proc = subprocess.Popen(
        [sys.executable, "-c", WITH_CONTROLLING_TTY, *COMMAND, "--config", str(tmp_path / "config.yaml")],
        stdin=child, stdout=child, stderr=child, cwd=tmp_path, env=environment(), start_new_session=True,
    )
    os.close(child)
    try:
        deadline = time.monotonic() + 30
        screen = b""
        while len(receipt_files(data)) < len(namespaces) or b"ns:11" not in screen:
            assert time.monotonic() < deadline, "no anchors from the dashboard process"
            screen += drain(main, 0.2)
        # Nobody reads the terminal any more: it is full within 2 s; Textual's own writer
        # then blocks, and its queue of 30 frames is full (the loop blocked) in about 18 s.
        time.sleep(25)
        before = len(receipt_files(data))
        time.sleep(5)
        anchored = len(receipt_files(data)) - before
        assert anchored >= len(namespaces), f"{anchored} anchors in the last 5 s of 30 s unread"
        after = drain(main, 5)  # reading again
        assert b"\x18" in after  # the escape sequence cut short is cancelled ...
        assert after.rindex(b"Namespaces") > after.index(b"\x18")  # ... and all drawn anew
        os.close(main)
        main = -1
        exited, _ = wait_exited(proc.pid, 10)
        assert exited and proc.wait() == 0
    finally:
        stop(proc)
        if main >= 0:
            os.close(main)
