"""The README's two-replica walk-through, run from the README's own text.

The ```sh block under "Two replicas on one machine" is taken from README.md as it is and
run by bash in a real terminal (tmux), against a PostgreSQL this test starts fresh (no
role, no database: the walk-through creates them), in a folder holding what a checkout
has for it (config.example.yaml, examples/, .venv/bin/vmsh-scheduler running this
checkout). Only the host, ports and paths are substituted: the server's socket folder for
/var/run/postgresql, its port for 5432, free ports for METRICS_PORT. `make install` is
left out (this test already runs from the installed venv). The dashboard it attaches must
show both replicas (key 5) with no log line on the terminal; q leaves it; the block's
last line stops both replicas, whose logs are in their files.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.tsa_servers import free_port

from .cluster_rig import wait_until
from .pg_fixtures import running_server
from .postgres import PostgresServer

REPO = Path(__file__).resolve().parents[2]
MARKER = "**Two replicas on one machine, one dashboard showing both**"


def walkthrough(readme: str) -> str:
    """The first ```sh block after MARKER, as written."""
    start = readme.index(MARKER)
    match = re.compile(r"```sh\n(.*?)```", re.DOTALL).search(readme, start)
    assert match is not None, "no ```sh block after the walk-through's title"
    return match.group(1)


def localised(block: str, server: PostgresServer, ports: tuple[int, int]) -> str:
    """The block with this machine's host, ports and paths; `make install` left out."""
    lines = block.splitlines()
    assert "make install" in lines
    text = "\n".join(line for line in lines if line != "make install") + "\n"
    for old, new in (("/var/run/postgresql", str(server.socket_dir)), ("-p 5432", f"-p {server.port}"),
                     ("127.0.0.1:5432", f"127.0.0.1:{server.port}"), ("METRICS_PORT=9101", f"METRICS_PORT={ports[0]}"),
                     ("METRICS_PORT=9102", f"METRICS_PORT={ports[1]}")):
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.fixture
def fresh_server() -> Iterator[PostgresServer]:
    """A PostgreSQL of its own, as freshly installed: no role `vmsh`, no database `vmsh`."""
    for server in running_server():
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            conn.execute("DROP DATABASE vmsh")
            conn.execute("DROP ROLE vmsh")
        yield server


class Tmux:
    """A tmux server of its own (-L), one session 100x30 running a command."""

    def __init__(self, tmp: Path) -> None:
        self.socket = f"vmsh-walk-{tmp.name[-20:]}"

    def run(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=20)
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "walk")

    def shows(self, *patterns: str) -> str:
        """The screen when every pattern is on it, else ""."""
        screen = self.screen()
        return screen if all(re.search(p, screen) for p in patterns) else ""

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "walk", *keys)

    def kill(self) -> None:
        self.run("kill-server")


def test_the_two_replica_walkthrough_runs_as_written(tmp_path, fresh_server):
    if shutil.which("tmux") is None or shutil.which("psql") is None:
        pytest.skip("needs tmux and psql (scripts/ensure-tools.sh installs them)")
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copy(REPO / "config.example.yaml", work)
    shutil.copytree(REPO / "examples", work / "examples")
    venv_bin = work / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    command = venv_bin / "vmsh-scheduler"
    command.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" -m cli "$@"\n')
    command.chmod(0o755)
    ports = (free_port(), free_port())
    script = work / "walkthrough.sh"
    script.write_text(localised(walkthrough((REPO / "README.md").read_text()), fresh_server, ports))
    tmux = Tmux(tmp_path)
    tmux.run("new-session", "-d", "-s", "walk", "-x", "100", "-y", "30", "-c", str(work),
             f"bash {script}; echo WALKTHROUGH-EXIT $?; sleep 600")
    try:
        wait_until(lambda: "demo:ledger" in tmux.screen(), 60, "the dashboard on the terminal")
        tmux.keys("5")
        # both replicas: the one attached ("this") and the other ("alive")
        wait_until(lambda: tmux.shows(r"\bthis\b", r"\balive\b"), 30, "both replicas in the Replicas pane")
        time.sleep(2)  # the replicas keep logging: none of it may reach this terminal
        screen = tmux.screen()
        assert '"level"' not in screen and '{"' not in screen, screen
        tmux.keys("q")
        final = wait_until(lambda: tmux.shows("WALKTHROUGH-EXIT"), 60, "the block's end")
        assert "WALKTHROUGH-EXIT 0" in final, final
    finally:
        tmux.kill()
        stop_left_in(work)  # a failed run leaves the replicas it started in the background
    for name in ("a", "b"):
        log = (work / f".vmsh-{name}.log").read_text()
        assert "store" in log and "stopped" in log.lower(), log[-2000:]
    url = f"postgresql://vmsh@127.0.0.1:{fresh_server.port}/vmsh"
    with psycopg.connect(url, password="change-me") as conn:
        row = conn.execute("SELECT count(*) FROM receipts").fetchone()
    assert row is not None and row[0] > 0


def stop_left_in(folder: Path) -> None:
    """SIGTERM, then SIGKILL, every process still running in `folder` (the walk-through's
    background replicas: when the block does not reach its `kill %1 %2`, nothing else stops
    them, and a daemon takes the SIGHUP of the closed terminal as a reload)."""
    def left() -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == folder.resolve():
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 15
        while left() and time.monotonic() < deadline:
            time.sleep(0.1)
