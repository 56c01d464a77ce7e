"""A config path that is not a regular file (a FIFO, a directory), with the real program.

Such a file must never be waited on: it is refused at start (exit 2, naming it) and at
reload (the old config stays live), and SIGTERM still stops the scheduler within its
grace. Every wait here is bounded: a hang is a failure, not a stuck test run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.lifecycle import GRACE_SECONDS
from core.sources import write_batch
from tests.integration.test_headless import CLI, free_port, receipts, wait_for

START_WITHIN = 10.0  # seconds for a refused start (it takes well under one)
EXIT_WITHIN = GRACE_SECONDS + 5.0  # from SIGTERM to the process's end


def write_config(tmp: Path, namespaces: list[str], *, extra: str = "") -> str:
    text = (
        f"scheduler: {{tick: 0.2, data_dir: {tmp / 'data'}}}\n"
        f'http: {{listen: "127.0.0.1:{free_port()}"}}\n'
        "targets: {local: {dev: {}}}\n"
        + extra
        + "namespaces:\n"
        + "".join(
            f"  {ns}:\n    source: {tmp / 'batches' / ns}\n"
            '    cadence: {fast: {target: "local:dev", every: "1s", anchor_unchanged: true}}\n'
            for ns in namespaces
        )
    )
    return text


def replace_with_fifo(path: Path) -> None:
    """As a careless `mkfifo` + `mv` would: the config's name now names a FIFO."""
    temp = path.with_name(path.name + ".fifo")
    os.mkfifo(temp)
    os.replace(temp, path)


def replace_with_file(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)


class Daemon:
    """`vmsh-scheduler --no-ui` with its JSON log lines collected as they come."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "--no-ui", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[dict] = []
        self.err = ""
        self._out = threading.Thread(target=self._read_out, daemon=True)
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._out.start()
        self._err.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"msg": line})

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.err = self.proc.stderr.read()

    def logged(self, prefix: str) -> list[dict]:
        return [r for r in list(self.lines) if str(r.get("msg", "")).startswith(prefix)]

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the scheduler died ({self.proc.returncode}): {self.err[-2000:]}")
        return True

    def terminate(self) -> tuple[int | None, float]:
        """SIGTERM; (exit code or None if still running after EXIT_WITHIN, seconds taken)."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=EXIT_WITHIN)
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - sent
        took = time.monotonic() - sent
        self._out.join(timeout=5)  # the rest of its log
        self._err.join(timeout=5)
        return self.proc.returncode, took

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def run_once(config: Path) -> tuple[int | None, str, float]:
    began = time.monotonic()
    proc = subprocess.Popen(
        [*CLI, "--no-ui", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _, err = proc.communicate(timeout=START_WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        return None, err, time.monotonic() - began
    return proc.returncode, err, time.monotonic() - began


@pytest.mark.parametrize("which", ["config", "namespaces_file", "anchors_file", "directory"])
def test_a_fifo_or_folder_as_a_config_file_stops_the_start_with_exit_2_naming_it(tmp_path, which):
    config = tmp_path / "config.yaml"
    if which == "config":
        os.mkfifo(config)
        named = config.name
    elif which == "directory":
        (tmp_path / "ns.yaml").mkdir()
        config.write_text(write_config(tmp_path, [], extra="namespaces_file: ns.yaml\n"))
        named = "ns.yaml"
    else:
        os.mkfifo(tmp_path / "other.yaml")
        config.write_text(write_config(tmp_path, ["a"], extra=f"{which}: other.yaml\n"))
        named = "other.yaml"
    code, err, took = run_once(config)
    assert code == 2, f"exit {code} after {took:.1f}s (None: still running, blocked?): {err}"
    assert named in err and "not a" in err, err
    assert "Traceback" not in err, err
    assert took < START_WITHIN


def test_a_config_replaced_by_a_fifo_is_refused_at_reload_and_a_later_edit_applied(tmp_path):
    for ns in ("a", "b"):
        write_batch(tmp_path / "batches" / ns, "000001", "sha256:" + ns.encode().hex().rjust(64, "0"))
    config = tmp_path / "config.yaml"
    config.write_text(write_config(tmp_path, ["a"]))
    daemon = Daemon(config)
    try:
        wait_for(lambda: daemon.alive() and len(receipts(tmp_path)) >= 1, what="a first receipt")
        replace_with_fifo(config)
        rejected = wait_for(
            lambda: daemon.alive() and daemon.logged("config reload rejected"), 15.0,
            what="the reload of the FIFO refused",
        )
        assert "config.yaml" in rejected[0]["error"] and "not a" in rejected[0]["error"], rejected

        # The old config stays live: anchoring goes on.
        after = len(receipts(tmp_path))
        wait_for(lambda: daemon.alive() and len(receipts(tmp_path)) >= after + 2, what="more receipts")

        # A real file again, with namespace b: applied.
        replace_with_file(config, write_config(tmp_path, ["a", "b"]))
        wait_for(
            lambda: daemon.alive()
            and any(r["namespace"] == "b" for r in receipts(tmp_path)),
            15.0, what="a receipt for namespace b after the edit",
        )
        code, took = daemon.terminate()
        assert code == 0, f"exit {code} {took:.1f}s after SIGTERM: {daemon.err[-2000:]}"
    finally:
        daemon.kill()


def test_sigterm_while_the_watcher_has_seen_a_fifo_exits_0_within_the_grace(tmp_path):
    write_batch(tmp_path / "batches" / "a", "000001", "sha256:" + "ab" * 32)
    config = tmp_path / "config.yaml"
    config.write_text(write_config(tmp_path, ["a"]))
    daemon = Daemon(config)
    try:
        wait_for(lambda: daemon.alive() and len(receipts(tmp_path)) >= 1, what="a first receipt")
        replace_with_fifo(config)
        # The watcher's debounce is 1.6 s: by 4 s it has read the FIFO's name (and, before
        # the fix, was stuck opening it). Whichever comes first.
        seen_by = time.monotonic() + 4.0
        wait_for(
            lambda: daemon.alive()
            and (daemon.logged("config reload rejected") or time.monotonic() > seen_by),
            10.0, what="the watcher to see the FIFO",
        )
        code, took = daemon.terminate()
        assert code == 0, f"exit {code} {took:.1f}s after SIGTERM (None: still running): {daemon.err[-2000:]}"
        assert took < EXIT_WITHIN
        print(f"exited {took:.2f}s after SIGTERM")
    finally:
        daemon.kill()
    assert daemon.logged("stopped")


def test_a_config_read_stuck_in_a_thread_does_not_keep_the_process_from_exiting(tmp_path):
    """What reloads and the watcher read on (`off_loop`): a thread stuck in a plain,
    blocking open() of a FIFO (as a read on a hung mount would be) is not waited for,
    by the loop's end or by the interpreter's exit; asyncio.to_thread's would be."""
    fifo = tmp_path / "stuck.yaml"
    os.mkfifo(fifo)
    script = (
        "import asyncio, sys\n"
        "from core.readers import off_loop\n"
        "async def main():\n"
        f"    stuck = off_loop(lambda: open({str(fifo)!r}, 'rb'))\n"
        "    try:\n"
        "        await asyncio.wait_for(asyncio.shield(stuck), 0.3)\n"
        "    except TimeoutError:\n"
        "        print('gave up', flush=True)\n"
        "asyncio.run(main())\n"
    )
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise AssertionError("the process waited for the stuck thread") from None
    assert proc.returncode == 0 and out == "gave up\n"
    assert time.monotonic() - began < 10
