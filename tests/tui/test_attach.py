"""The dashboard attached to a headless scheduler (issue 16, section 3): a real
`vmsh-scheduler --no-ui` subprocess serving its control socket, and the App driven with
Pilot in this process over that socket (core/remote_control.py RemoteControl).

They run the real program, so they wait on real time: each wait is a bounded poll for
something the program or the screen shows, never a sleep standing in for a schedule.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cli.dashboard import attach_dashboard
from core.control_client import ControlClient
from core.remote_control import RemoteControl
from core.sources import write_batch
from tests.integration.test_headless import wait_for
from tui.app import VaultMeshApp
from tui.host import AttachedHost
from tui.screens import ConfirmScreen
from tui.widgets import DiffTable, LogView

from .conftest import screen_text
from .test_pilot import select

# The `vmsh-scheduler` command (cli.main:main), from this checkout.
CLI = [sys.executable, "-m", "cli"]


class Daemon:
    """A headless scheduler in tmp: "live" anchors every second, "still" once an hour."""

    def __init__(self, tmp: Path) -> None:
        from tests.integration.test_headless import free_port

        self.tmp = tmp
        self.data = tmp / "data"
        self.port = free_port()
        for ns in ("live", "still"):
            write_batch(tmp / "batches" / ns, "000001", "sha256:" + f"{ns.encode().hex():0>64}")
        lines = ["scheduler:", "  tick: 0.2", f"  data_dir: {self.data}", "http:", f'  listen: "127.0.0.1:{self.port}"',
                 "targets:", "  local:", "    dev: {}", "namespaces:"]
        for ns, every in (("live", "1s"), ("still", "1h")):
            lines += [f"  {ns}:", f"    source: {tmp / 'batches' / ns}", "    cadence:", "      fast:",
                      '        target: "local:dev"', f'        every: "{every}"', "        anchor_unchanged: true"]
        self.config = tmp / "config.yaml"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[str] | None = None

    @property
    def socket(self) -> Path:
        return self.data / "control.sock"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "--no-ui", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        wait_for(lambda: self.receipts("still") and self.answers(), what="the scheduler's first anchors and socket")

    def answers(self) -> bool:
        try:
            RemoteControl.connect(self.socket)
        except Exception:
            return False
        return True

    def receipts(self, ns: str) -> list[Path]:
        return sorted((self.data / "receipts" / ns).glob("*.json"))

    def health(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
            return int(response.status)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()


async def until(predicate: Callable[[], object], *, what: str, timeout: float = 20.0) -> object:
    """Poll while the app's loop runs (the event stream, the reconnects)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def attached_app(daemon: Daemon) -> VaultMeshApp:
    return VaultMeshApp(AttachedHost(RemoteControl.connect(daemon.socket)))


def table(app: VaultMeshApp, name: str) -> DiffTable:
    body = app.dashboard.body(name)
    assert isinstance(body, DiffTable)
    return body


def started_lines(app: VaultMeshApp) -> int:
    """"scheduler started" lines in the Logs pane: one per daemon start the dashboard saw."""
    logs = app.dashboard.body("logs")
    assert isinstance(logs, LogView)
    return sum(1 for r in logs.records if r.msg == "scheduler started")


def header(app: VaultMeshApp) -> str:
    return screen_text(app).splitlines()[0]


async def test_attached_dashboard_shows_anchors_live_and_f_anchors_in_the_daemon(daemon: Daemon) -> None:
    assert daemon.proc is not None
    app = attached_app(daemon)
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        assert f"attached to pid {daemon.proc.pid}" in header(app)
        assert isinstance(app.host, AttachedHost)  # no engine, no lock here
        # What the daemon logged before the dashboard attached is in the Logs pane.
        await until(lambda: started_lines(app) == 1, what="the daemon's earlier log lines")
        # "live" anchors every second in the daemon: its receipts arrive in the panes live.
        before = len(daemon.receipts("live"))
        await until(lambda: len(daemon.receipts("live")) >= before + 2, what="the daemon anchoring")
        await until(lambda: str(daemon.receipts("live")[-1]) in table(app, "receipts").shown_keys,
                    what="the newest receipt in the Receipts pane")
        # f (confirmed) on "still" (due in an hour): the daemon writes its second receipt.
        assert len(daemon.receipts("still")) == 1
        await pilot.press("1")
        select(table(app, "jobs"), "still/fast")
        await pilot.press("f")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(lambda: len(daemon.receipts("still")) == 2, what="the forced receipt in the daemon's data dir")
        forced = daemon.receipts("still")[-1]
        await until(lambda: str(forced) in table(app, "receipts").shown_keys, what="the forced receipt shown")
        await pilot.press("q")
        await until(lambda: not app.is_running, what="the dashboard to exit")
    # Quitting the attached dashboard leaves the daemon running and anchoring.
    assert daemon.proc.poll() is None
    assert daemon.health() == 200
    after = len(daemon.receipts("live"))
    wait_for(lambda: len(daemon.receipts("live")) > after, what="anchors after the dashboard quit")


async def test_F_forces_the_namespace_with_one_request_over_the_socket(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forcing a namespace is one command of the control API (`{"namespace": ns}`), not one
    request per job."""
    sent: list[tuple[str, str, object]] = []
    request = ControlClient.request

    async def counted(self: ControlClient, method: str, command: str, body: dict[str, object] | None = None):
        sent.append((method, command, body))
        return await request(self, method, command, body)

    monkeypatch.setattr(ControlClient, "request", counted)
    app = attached_app(daemon)
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        assert len(daemon.receipts("still")) == 1
        await pilot.press("1")
        select(table(app, "jobs"), "still/fast")
        await pilot.press("F")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(lambda: len(daemon.receipts("still")) == 2, what="the namespace's forced receipt")
        assert [s for s in sent if s[1] == "force"] == [("POST", "force", {"namespace": "still"})]
        await pilot.press("q")
        await until(lambda: not app.is_running, what="the dashboard to exit")


async def test_kill9_and_restart_shows_disconnected_then_resynchronises(daemon: Daemon) -> None:
    app = attached_app(daemon)
    async with app.run_test(size=(100, 30)) as pilot:
        daemon.kill9()
        await until(lambda: "disconnected — reconnecting" in header(app), what="the header to say disconnected")
        await pilot.pause(1.2)
        assert "disconnected — reconnecting (1s)" in header(app) or "reconnecting (2s)" in header(app)
        forced_before = len(daemon.receipts("still"))
        daemon.start()
        assert daemon.proc is not None
        new_pid = daemon.proc.pid
        await until(lambda: f"attached to pid {new_pid}" in header(app), what="the header to show the new daemon")
        assert "disconnected" not in header(app)
        # The new daemon's log lines since its start: its own "scheduler started" too.
        await until(lambda: started_lines(app) == 2, what="the restarted daemon's log lines")
        # The receipts the new daemon wrote before the dashboard was back are listed too.
        written = [str(p) for p in daemon.receipts("live")]
        await until(lambda: set(written) <= set(table(app, "receipts").shown_keys),
                    what="the receipts written while disconnected")
        # Resynchronised: events flow again, and commands reach the new daemon.
        await pilot.press("1")
        select(table(app, "jobs"), "still/fast")
        await pilot.press("f", "y")
        await until(lambda: len(daemon.receipts("still")) > forced_before, what="a forced anchor after the restart")
        newest = daemon.receipts("still")[-1]
        await until(lambda: str(newest) in table(app, "receipts").shown_keys, what="the new receipt shown")


async def test_two_dashboards_at_once_each_see_the_others_force(daemon: Daemon) -> None:
    one, two = attached_app(daemon), attached_app(daemon)
    async with one.run_test(size=(100, 30)) as p1, two.run_test(size=(100, 30)):
        await p1.press("1")
        select(table(one, "jobs"), "still/fast")
        await p1.press("f", "y")
        await until(lambda: len(daemon.receipts("still")) == 2, what="the forced receipt")
        forced = str(daemon.receipts("still")[-1])
        await until(lambda: all(forced in table(a, "receipts").shown_keys for a in (one, two)),
                    what="the forced receipt in both dashboards")
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_attach_with_no_scheduler_says_how_to_start_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    code = attach_dashboard(tmp_path / "control.sock", argparse.Namespace())
    err = capsys.readouterr().err
    assert code == 2
    assert f"no scheduler answers on {tmp_path / 'control.sock'}" in err
    assert "vmsh-scheduler --no-ui --config FILE" in err


def test_cli_attach_without_a_terminal_exits_2_and_names_ctl(tmp_path: Path) -> None:
    result = subprocess.run([*CLI, "attach", "--socket", str(tmp_path / "control.sock")],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert result.returncode == 2
    assert "no terminal" in result.stderr and "ctl" in result.stderr


def test_plain_dashboard_on_a_locked_data_dir_attaches_and_a_hangup_leaves_the_daemon(daemon: Daemon) -> None:
    """`vmsh-scheduler --config X` while a scheduler holds X's data dir: the dashboard
    attaches (no "data dir locked", no exit 2); the SSH session dropping ends only it."""
    from .test_terminal_process import COMMAND, WITH_CONTROLLING_TTY, drain, environment, open_pty

    assert daemon.proc is not None
    main, child = open_pty()
    proc = subprocess.Popen(
        [sys.executable, "-c", WITH_CONTROLLING_TTY, *COMMAND, "--config", str(daemon.config)],
        stdin=child, stdout=child, stderr=child, cwd=daemon.tmp, env=environment(), start_new_session=True,
    )
    os.close(child)
    try:
        screen = b""
        deadline = time.monotonic() + 30
        # 80 columns: the header says `pid N@host` for "attached to pid N on host".
        while f"pid {daemon.proc.pid}@".encode() not in screen:
            assert proc.poll() is None, f"the dashboard exited ({proc.returncode}): {screen[-2000:]!r}"
            assert time.monotonic() < deadline, f"no 'attached to pid' in the header: {screen[-2000:]!r}"
            screen += drain(main, 0.2)
        os.killpg(proc.pid, signal.SIGHUP)  # what the kernel sends when the SSH session drops
        deadline = time.monotonic() + 10
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the attached dashboard did not exit on SIGHUP"
            drain(main, 0.1)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(main)
    assert daemon.proc.poll() is None and daemon.health() == 200
    after = len(daemon.receipts("live"))
    wait_for(lambda: len(daemon.receipts("live")) > after, what="anchors after the dashboard hung up")



def test_attach_wait_connects_to_a_scheduler_that_starts_after_it(tmp_path: Path) -> None:
    """`attach --wait`: the README's walk-through starts replicas in the background and
    attaches at once; the dashboard must wait for the socket, not exit 2 because the
    scheduler is still starting. Without --wait it still says no at once."""
    import threading

    from cli.dashboard import connect_within
    from core.remote_control import NoScheduler

    d = Daemon(tmp_path)
    began = time.monotonic()
    with pytest.raises(NoScheduler):
        connect_within(d.socket, None, time.monotonic())  # no --wait: refused at once
    assert time.monotonic() - began < 5
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(_or_error(connect_within, d.socket, None, time.monotonic() + 60)))
    waiter.start()  # before the scheduler exists
    try:
        d.start()
        waiter.join(timeout=60)
        assert not waiter.is_alive()
        assert got and isinstance(got[0], RemoteControl), got
        assert {str(v.spec.key) for v in got[0].snapshot().views} >= {"live/fast", "still/fast"}
    finally:
        d.stop()


def _or_error(fn: Callable[..., object], *args: object) -> object:
    try:
        return fn(*args)
    except Exception as exc:
        return exc


async def test_the_first_page_is_shown_before_the_whole_table_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attaching to a scheduler with more jobs than the first page: the dashboard shows the
    first page's rows, then asks for every job (10,000 jobs: 8 MB read and parsed in this
    process, which held up the first screen by 0.1-0.25 s when both ran at once)."""
    from core.remote_control import FIRST_PAGE
    from tests.integration.test_control import headless, serving, sock_path, stop
    from tests.integration.test_headless import receipts

    names = [f"ns{i:03d}" for i in range(FIRST_PAGE + 20)]
    _, proc = headless(tmp_path, names, every="1h")
    try:
        wait_for(lambda: serving(tmp_path) and len(receipts(tmp_path)) >= len(names), timeout=90,
                 what="the scheduler's first round")
        app = VaultMeshApp(AttachedHost(RemoteControl.connect(sock_path(tmp_path))))
        rows_when_asked: list[int] = []
        request = ControlClient.request

        async def noted(self: ControlClient, method: str, command: str, body: dict[str, object] | None = None):
            if command == "snapshot":
                rows_when_asked.append(table(app, "jobs").row_count)
            return await request(self, method, command, body)

        monkeypatch.setattr(ControlClient, "request", noted)
        async with app.run_test(size=(160, 48)):
            await until(lambda: table(app, "jobs").row_count == len(names), what="every job in the jobs table")
    finally:
        stop(proc)
    assert rows_when_asked == [FIRST_PAGE]
