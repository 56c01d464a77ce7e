"""`vmsh-scheduler attach --web` (issue 26 item 5): the attached dashboard in a real headless
Chromium (tests/browser.py), served by textual-serve from a real `attach --web` process
on a real `--no-ui` scheduler (tests/tui/test_attach.py Daemon).

They run the real programs, so they wait on real time: each wait is a bounded poll for
something a program prints or the browser shows, never a sleep standing in for a schedule.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import Browser, chromium
from tests.integration.test_headless import wait_for

from .test_attach import CLI, Daemon, daemon  # noqa: F401  (the daemon fixture)


class WebAttach:
    """A running `vmsh-scheduler attach --web` on the daemon's socket."""

    def __init__(self, daemon: Daemon, *extra: str) -> None:  # noqa: F811
        self.proc = subprocess.Popen(
            [*CLI, "attach", "--web", "--socket", str(daemon.socket), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        self.start_line = self.proc.stdout.readline()  # the one line, printed once it listens
        assert "?token=" in self.start_line, self.start_line + self.proc.stderr.read()  # type: ignore[union-attr]
        self.url = self.start_line.split("open ", 1)[1].split()[0]
        self.base, self.token = self.url.split("/?token=")

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err


@pytest.fixture
def web(daemon: Daemon) -> Iterator[WebAttach]:  # noqa: F811
    served = WebAttach(daemon)
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if chromium() is None:
        pytest.fail("chromium not found: run scripts/ensure-tools.sh (installs Debian's chromium package)")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    yield Browser(profile)


def status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sessions_on(socket_path: Path) -> list[int]:
    """The pids of the browser sessions' dashboard processes attached to `socket_path`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"--web-session" in args and str(socket_path).encode() in args:
            found.append(int(proc.name))
    return found


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port` (/proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def test_without_the_token_every_request_is_403_and_it_listens_on_127_0_0_1_only(web: WebAttach) -> None:
    assert web.base.startswith("http://127.0.0.1:")
    port = int(web.base.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing else
    for path in ("/", "/ws", "/static/js/textual.js", "/?token=wrong" + web.token[6:]):
        code, body = status(web.base + path)
        assert code == 403, path
        assert "token is required" in body
    assert status(web.url)[0] == 200
    code, out, err = web.stop()
    assert code == 0
    # The token is in the one start line and nowhere else.
    assert web.token not in out + err
    assert web.start_line.count(web.token) == 1


async def test_a_browser_with_the_token_sees_the_namespaces_read_only(
    daemon: Daemon, web: WebAttach, browser: Browser, tmp_path: Path  # noqa: F811
) -> None:
    try:
        await browser.open()
        await browser.navigate(web.base + "/")
        await browser.until_page_shows("token is required")  # no token: refused

        await browser.navigate(web.url)
        await browser.until_terminal_shows("live", "still", "READONLY")
        await browser.focus_terminal()
        screen = await browser.until_terminal_shows("live", "still", "READONLY", "q Quit")
        assert "attached to pid" in screen and "Force" not in screen and "Pause" not in screen
        shot = await browser.screenshot(tmp_path / "attach-web.png")
        assert shot.startswith(b"\x89PNG") and len(shot) > 10_000

        # Read-only: space (pause) is refused on the page, and the scheduler is not paused.
        await browser.press(" ", " ")
        await browser.until_terminal_shows("read-only: pause is disabled")
        assert sessions_on(daemon.socket)

        # Stopping the server with the page open ends its session and its dashboard process.
        started = time.monotonic()
        code, _, _ = web.stop()
        assert code == 0 and time.monotonic() - started < 15
        await browser.until_page_shows("Session ended")
        assert not sessions_on(daemon.socket)
    finally:
        await browser.close()
    result = subprocess.run([*CLI, "ctl", "status", "--json", "--socket", str(daemon.socket)],
                            capture_output=True, text=True, timeout=30)
    assert json.loads(result.stdout)["paused"] is False


async def test_with_web_actions_a_browser_session_can_pause(daemon: Daemon, browser: Browser) -> None:  # noqa: F811
    served = WebAttach(daemon, "--web-actions")
    try:
        assert "read-only" not in served.start_line
        await browser.open()
        await browser.navigate(served.url)
        await browser.until_terminal_shows("live", "still")
        await browser.focus_terminal()
        screen = await browser.until_terminal_shows("live", "still", "q Quit")
        assert "f Force" in screen and "READONLY" not in screen
        await browser.press(" ", " ")

        def paused() -> bool:
            result = subprocess.run([*CLI, "ctl", "status", "--json", "--socket", str(daemon.socket)],
                                    capture_output=True, text=True, timeout=30)
            return bool(json.loads(result.stdout)["paused"])

        wait_for(paused, what="the scheduler paused from the browser")
    finally:
        await browser.close()
        served.stop()


def test_attach_web_with_no_scheduler_exits_2_at_once(tmp_path: Path) -> None:
    result = subprocess.run([*CLI, "attach", "--web", "--socket", str(tmp_path / "control.sock")],
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "no such socket" in result.stderr and "token" not in result.stdout


def test_attach_web_on_a_taken_port_exits_2_naming_it(daemon: Daemon) -> None:  # noqa: F811
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*CLI, "attach", "--web", "--web-port", str(port), "--socket", str(daemon.socket)],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--web-port" in result.stderr
    assert result.stdout == ""
