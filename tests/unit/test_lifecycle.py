"""One run lifecycle (core/lifecycle.py) for both modes: what stops first, and start-up refusals.

Real parts: a real Runtime on tmp folders, the embedded TSA, HTTP on 127.0.0.1, the real
`run_headless` with its exit code and stderr. Only the failing disk is simulated (as root,
permissions do not stop a listing), by making the listing of one folder fail.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import os
import signal
import socket
from pathlib import Path

import pytest

from cli.headless import EXIT_CANNOT_START, run_headless
from core.clock import FakeClock
from core.config import load_config
from core.lifecycle import running
from core.observe.http import ListenError
from core.runtime import Runtime
from core.sources import write_batch
from core.store.files.journal import IntentJournal


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path) -> Path:
    path = tmp / "config.yaml"
    path.write_text(
        "\n".join([
            "scheduler:",
            f"  data_dir: {tmp / 'data'}",
            "http:",
            f'  listen: "127.0.0.1:{free_port()}"',
            "targets:",
            "  local:",
            "    dev: {}",
            "namespaces:",
            '  "dao:alpha":',
            f"    source: {tmp / 'batches' / 'alpha'}",
            "    cadence:",
            "      fast:",
            '        target: "local:dev"',
            '        every: "60s"',
        ])
        + "\n"
    )
    return path


def messages(stdout: str) -> list[str]:
    return [json.loads(line)["msg"] for line in stdout.splitlines() if line.startswith("{")]


async def http_status(port: int, path: str = "/health") -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


def test_a_journal_folder_it_cannot_list_stops_the_start_with_exit_2_naming_it(tmp_path, monkeypatch, capsys):
    loaded = load_config(write_config(tmp_path), env={})
    journal = tmp_path / "data" / "journal"
    real_scandir = os.scandir

    def scandir(path=".", *args):
        if Path(path) == journal:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    code = run_headless(loaded)
    out, err = capsys.readouterr()
    assert code == EXIT_CANNOT_START, err  # was 1: the engine failed at recovery
    assert err.startswith(f"vmsh-scheduler: cannot list {journal}: Permission denied\n")
    assert "scheduler started" not in messages(out)
    assert (tmp_path / "data" / "scheduler.lock").read_text() == ""  # released


def test_a_journal_unreadable_at_recovery_is_a_refusal_to_start_exit_2_naming_it(tmp_path, monkeypatch, capsys):
    loaded = load_config(write_config(tmp_path), env={})
    journal = tmp_path / "data" / "journal"

    def unreadable(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(journal))

    monkeypatch.setattr(IntentJournal, "remove_stale_temps", unreadable)  # listed fine at open, not after
    code = run_headless(loaded)
    out, err = capsys.readouterr()
    assert code == EXIT_CANNOT_START, err  # was 1, as for a bug in the engine
    assert err.startswith("vmsh-scheduler: cannot read what was in flight: recover: Permission denied")
    assert str(journal) in err.splitlines()[0]
    assert "cannot start" in messages(out) and "engine failed" not in messages(out)


async def test_the_engine_stops_while_health_is_still_served_and_everything_closes_after(tmp_path):
    # a batch to anchor (on the embedded TSA): the job stays ok whether its first anchor has
    # run when the run stops or not (a folder missing or empty backs it off: /health 503)
    write_batch(tmp_path / "batches" / "alpha", "000001", "sha256:" + "1" * 64)
    loaded = load_config(write_config(tmp_path), env={})
    runtime = Runtime(loaded, clock=FakeClock())
    port = int(loaded.config.http.listen.rsplit(":", 1)[1])
    seen: list[str] = []
    engine_stop, backends_close = runtime.engine.stop, runtime.backends.close

    async def stop(grace: float = 0.0) -> None:
        seen.append(f"engine stop, /health {await http_status(port)}")
        await engine_stop(grace)

    async def close() -> None:
        try:
            await http_status(port)
            seen.append("backends close, HTTP still open")
        except OSError:
            seen.append("backends close, HTTP closed")
        await backends_close()

    runtime.engine.stop, runtime.backends.close = stop, close
    async with running(runtime, http_required=True, grace=1.0) as run:
        assert await http_status(port, "/livez") == 200
        assert run.engine is not None and not run.engine.done()
    assert seen == ["engine stop, /health 200", "backends close, HTTP closed"]
    assert run.engine.done() and run.failure is None
    assert (tmp_path / "data" / "state" / "scheduler.json").exists()  # the state was saved


async def test_a_port_it_cannot_bind_when_required_leaves_nothing_running_and_says_nothing_started(tmp_path):
    loaded = load_config(write_config(tmp_path), env={})
    runtime = Runtime(loaded, clock=FakeClock())
    said: list[str] = []
    runtime.bus.subscribe(lambda event: said.append(getattr(event, "msg", "")))
    backends_close = runtime.backends.close

    async def close() -> None:
        said.append("backends closed")
        await backends_close()

    runtime.backends.close = close
    host, port = loaded.config.http.listen.rsplit(":", 1)
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        with pytest.raises(ListenError):
            async with running(runtime, http_required=True):
                raise AssertionError("the run must not start")
    assert "scheduler started" not in said and said[-1] == "backends closed"
    assert "serving /metrics, /health, /livez, /readyz" not in said


def test_a_headless_start_runs_no_garbage_collection_and_the_run_has_the_collector_on(tmp_path, monkeypatch, capsys):
    """At 100,000 namespaces the full collections the start set off while it built the job
    table and the services took 1.6 s of CPU (bench/scale_bench.py): none runs between
    the config load and "scheduler started"; the run then has the collector on."""
    loaded = load_config(write_config(tmp_path), env={})
    collections: list[int] = []
    seen: dict[str, object] = {}

    def collected(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    announce = Runtime.announce

    def announced(self: Runtime) -> None:
        seen["during start"] = list(collections)
        announce(self)

        def running_now() -> None:  # once running() has started the engine
            seen["collector on while running"] = gc.isenabled()
            os.kill(os.getpid(), signal.SIGTERM)  # headless stops on it: exit 0

        asyncio.get_running_loop().call_soon(running_now)

    monkeypatch.setattr(Runtime, "announce", announced)
    gc.callbacks.append(collected)
    try:
        code = run_headless(loaded)
    finally:
        gc.callbacks.remove(collected)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "scheduler started" in messages(out)
    assert seen == {"during start": [], "collector on while running": True}
    assert gc.isenabled()


def test_a_lone_scheduler_with_a_development_target_is_not_told_it_runs_in_cluster_mode(tmp_path):
    loaded = load_config(write_config(tmp_path), env={})
    runtime = Runtime(loaded, clock=FakeClock())
    said: list[str] = []
    runtime.bus.subscribe(lambda event: said.append(getattr(event, "msg", "")))
    runtime.announce()
    assert said[0] == "scheduler started"
    assert "target is the embedded development TSA: it proves nothing to third parties" in said
    assert not [line for line in said if "cluster mode" in line]  # it was said to every file-store run
