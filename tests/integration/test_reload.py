"""Hot reload with the real file system: the watcher, SIGHUP-style reloads, and their metrics."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from core.jobs import JobKey
from core.observe.watch import start_watch
from core.sources import write_batch

APPLY_WITHIN = 2.0  # seconds, from the write on disk to the new config being live


@pytest.fixture
async def watching():
    """`await watching(stack, **kw)` starts the watcher on the stack's runtime; stopped after."""
    started: list[tuple[asyncio.Event, asyncio.Task]] = []

    async def start(s, **kw):
        stop, ready = asyncio.Event(), asyncio.Event()
        task = start_watch(s.runtime, stop, ready=ready, **kw)
        started.append((stop, task))
        await asyncio.wait_for(ready.wait(), 5.0)
        return task

    yield start
    for stop, task in started:
        stop.set()
        await asyncio.wait_for(task, 5.0)


async def reloads(s, obs, result: str) -> float:
    _, samples = await s.scrape()
    return obs.value(samples, "vmsh_config_reloads_total", result=result)


def rejections(s) -> list[str]:
    return [r.fields.get("error", "") for r in s.logs if r.msg.startswith("config reload rejected")]


async def anchors_and_answers(s: Any) -> None:
    """Namespace "a" gets a new batch, comes due and is anchored in a pass; /health says so."""
    s.batch("a", 2)
    s.clock.advance(10)
    await s.anchor_pass()
    code, body = await s.health()
    assert code == 200 and body["namespaces"]["a"]["lastAnchor"]["fast"] == int(s.clock.now())


async def test_an_edit_on_disk_is_applied_within_two_seconds(stack, watching, obs):
    s = await stack({"a": {"fast": "10s"}})
    await s.anchor_pass()
    await watching(s)

    # In place, as `echo >>` or a simple editor would.
    s.batch("b", 1)
    edited = time.monotonic()
    s.config_path.write_text(obs.config_text({"a": {"fast": "10s"}, "b": {"fast": "10s"}}))

    async def b_listed():
        code, body = await s.health()
        return "b" in body["namespaces"]

    await obs.eventually(b_listed, APPLY_WITHIN, "namespace b appears in /health")
    assert time.monotonic() - edited < APPLY_WITHIN
    assert await reloads(s, obs, "ok") == 1
    assert await reloads(s, obs, "error") == 0

    # Atomically, as most editors save: temp file, then rename over the original.
    edited = time.monotonic()
    obs.replace_file(s.config_path, obs.config_text({"a": {"fast": "20s"}, "b": {"fast": "10s"}}))
    await obs.eventually(
        lambda: s.engine.jobs[JobKey("a", "fast")].every == 20, APPLY_WITHIN, "a/fast every 20s"
    )
    assert time.monotonic() - edited < APPLY_WITHIN
    assert await reloads(s, obs, "ok") == 2

    # The new job anchors and shows up everywhere.
    await s.anchor_pass()
    code, body = await s.health()
    assert code == 200 and body["namespaces"]["b"]["lastAnchor"]["fast"] == int(s.clock.now())
    _, samples = await s.scrape()
    assert obs.value(samples, "vmsh_anchors_succeeded_total", namespace="b", cadence="fast", target="local:dev") == 1


async def test_a_broken_edit_keeps_the_old_config_and_reports_file_and_line(stack, watching, obs):
    s = await stack({"a": {"fast": "10s"}})
    await s.anchor_pass()
    before = s.runtime.loaded.hash
    await watching(s)

    good = obs.config_text({"a": {"fast": "10s"}})
    bad_value = good.replace('every: "10s"', 'every: "banana"')
    line = next(n for n, text in enumerate(bad_value.splitlines(), 1) if "banana" in text)
    obs.replace_file(s.config_path, bad_value)

    async def errors_counted(n):
        return await reloads(s, obs, "error") == n

    await obs.eventually(lambda: errors_counted(1), APPLY_WITHIN, "error reload counted")
    assert s.runtime.loaded.hash == before
    assert list(s.engine.jobs) == [JobKey("a", "fast")]
    assert s.engine.jobs[JobKey("a", "fast")].every == 10
    assert any(re.search(rf"config\.yaml:{line}(:\d+)?: .*every", e) for e in rejections(s)), rejections(s)

    # A YAML syntax error: same, with its own line.
    broken_yaml = good + "namespaces_file: [unclosed\n"
    obs.replace_file(s.config_path, broken_yaml)
    await obs.eventually(lambda: errors_counted(2), APPLY_WITHIN, "second error reload counted")
    assert s.runtime.loaded.hash == before
    assert any(re.search(r"config\.yaml:\d+", e) for e in rejections(s)[1:]), rejections(s)

    # The old config is still the live one: the scheduler keeps anchoring and stays healthy.
    s.clock.advance(10)
    await s.anchor_pass()
    code, body = await s.health()
    assert code == 200 and body["namespaces"]["a"]["lastAnchor"]["fast"] == int(s.clock.now())

    # Fixing the file applies it.
    obs.replace_file(s.config_path, obs.config_text({"a": {"fast": "30s"}}))
    await obs.eventually(
        lambda: s.engine.jobs[JobKey("a", "fast")].every == 30, APPLY_WITHIN, "fixed config applied"
    )
    assert await reloads(s, obs, "ok") == 1
    assert await reloads(s, obs, "error") == 2


async def test_sighup_reloads_count_too_and_removed_jobs_lose_their_series(stack, obs):
    s = await stack({"a": {"fast": "10s"}, "b": {"fast": "10s", "strong": "2*fast"}})
    await s.anchor_pass()
    _, samples = await s.scrape()
    assert obs.value(samples, "vmsh_anchors_succeeded_total", namespace="b", cadence="strong", target="local:dev") == 1

    # What the SIGHUP handler does: runtime.reload().
    s.batch("c", 1)
    obs.replace_file(s.config_path, obs.config_text({"a": {"fast": "10s"}, "c": {"fast": "10s"}}))
    result = s.runtime.reload()
    assert result.applied and result.changed
    _, samples = await s.scrape()
    assert await reloads(s, obs, "ok") == 1
    names = {(name, dict(labels).get("namespace")) for name, labels in samples}
    assert not any(ns == "b" for _, ns in names), sorted(n for n in names if n[1] == "b")
    c = {"namespace": "c", "cadence": "fast", "target": "local:dev"}
    assert obs.value(samples, "vmsh_anchors_attempted_total", **c) == 0
    assert obs.value(samples, "vmsh_backoff_state", namespace="c", cadence="fast") == 0
    a = {"namespace": "a", "cadence": "fast", "target": "local:dev"}
    assert obs.value(samples, "vmsh_anchors_succeeded_total", **a) == 1

    # A rejected SIGHUP reload counts as an error.
    s.config_path.write_text("scheduler: [\n")
    assert not s.runtime.reload().applied
    assert await reloads(s, obs, "error") == 1

    code, body = await s.health()
    assert set(body["namespaces"]) == {"a", "c"}


async def test_saving_without_a_change_does_not_reload(stack, watching, obs):
    s = await stack({"a": {"fast": "10s"}})
    results: list[Any] = []
    await watching(s, on_reload=results.append)
    text = s.config_path.read_text()
    os.utime(s.config_path)  # touch
    obs.replace_file(s.config_path, text)  # saved, same bytes
    obs.replace_file(s.config_path, obs.config_text({"a": {"fast": "15s"}}))
    await obs.eventually(lambda: results, APPLY_WITHIN, "a reload")
    await obs.eventually(
        lambda: s.engine.jobs[JobKey("a", "fast")].every == 15, APPLY_WITHIN, "edit applied"
    )
    assert len(results) == 1 and results[0].changed


async def test_vaultmesh_layout_files_in_other_folders_are_watched(stack, watching, obs, tmp_path):
    ns_dir = tmp_path / "vault" / "vmsh" / "config"
    an_dir = tmp_path / "anchors"
    ns_dir.mkdir(parents=True)
    an_dir.mkdir()
    (an_dir / "anchors.yaml").write_text("local:\n  dev: {}\n")
    (ns_dir / "namespaces.yaml").write_text(obs.namespaces_yaml({"a": {"fast": "10s"}}))
    text = (
        "scheduler:\n  tick: 1.0\n  data_dir: data\n"
        'http:\n  listen: "127.0.0.1:0"\n'
        "namespaces_file: vault/vmsh/config/namespaces.yaml\n"
        "anchors_file: anchors/anchors.yaml\n"
    )
    s = await stack(text=text)
    assert {p.name for p in s.runtime.loaded.files} >= {"config.yaml", "namespaces.yaml", "anchors.yaml"}
    await s.anchor_pass()
    await watching(s)

    s.batch("b", 1)
    obs.replace_file(ns_dir / "namespaces.yaml", obs.namespaces_yaml({"a": {"fast": "10s"}, "b": {"fast": "10s"}}))
    await obs.eventually(lambda: JobKey("b", "fast") in s.engine.jobs, APPLY_WITHIN, "namespaces.yaml edit applied")

    obs.replace_file(an_dir / "anchors.yaml", "local:\n  dev: {}\nrfc3161:\n  default:\n    timeout: -1\n")

    async def error_counted():
        return await reloads(s, obs, "error") == 1

    await obs.eventually(error_counted, APPLY_WITHIN, "anchors.yaml error counted")
    assert any("anchors.yaml:" in e for e in rejections(s)), rejections(s)
    assert JobKey("b", "fast") in s.engine.jobs


BILLION_LAUGHS = "\n".join(
    ["lol1: &lol1 [" + ", ".join(['"lol"'] * 9) + "]"]
    + [f"lol{n}: &lol{n} [" + ", ".join([f"*lol{n - 1}"] * 9) + "]" for n in range(2, 10)]
) + "\n"


async def test_an_alias_bomb_written_over_the_config_is_rejected_while_anchoring_goes_on(stack, watching, obs):
    s = await stack({"a": {"fast": "10s"}})
    await s.anchor_pass()
    before = s.runtime.loaded.hash
    await watching(s)

    good = obs.config_text({"a": {"fast": "10s"}})
    obs.replace_file(s.config_path, good + BILLION_LAUGHS)
    bomb_line = len(good.splitlines()) + 6  # lol6: the first level past the limit

    async def rejected():
        return await reloads(s, obs, "error") == 1

    await obs.eventually(rejected, APPLY_WITHIN, "the alias bomb rejected")
    assert s.runtime.loaded.hash == before
    assert any(
        re.match(rf"config\.yaml:{bomb_line}:\d+: aliases here expand to \d+ values", e) for e in rejections(s)
    ), rejections(s)

    # Anchoring goes on with the old config.
    await anchors_and_answers(s)


async def test_a_reload_reads_the_files_off_the_loop_and_gives_up_after_its_time_limit(stack, obs):
    """A loader that hangs (a file on a dead network mount) never holds up anchoring."""
    s = await stack({"a": {"fast": "10s"}})
    await s.anchor_pass()
    released = threading.Event()
    real_loader = s.runtime._loader

    def hanging_loader():
        released.wait(30)
        return real_loader()

    s.runtime._loader = hanging_loader
    obs.replace_file(s.config_path, obs.config_text({"a": {"fast": "20s"}}))
    reload = asyncio.create_task(s.runtime.reload_off_loop(timeout=0.5))
    try:
        # While the files are being read, the loop anchors and answers.
        await anchors_and_answers(s)
        assert not reload.done()

        result = await reload
        assert not result.applied
        assert result.errors == ["reading the config files took more than 0.5 s"]
        assert rejections(s)[-1] == "reading the config files took more than 0.5 s"
        # The hung read still holds its thread: no second one is started beside it.
        again = await s.runtime.reload_off_loop(timeout=0.5)
        assert again.errors == ["a previous reload is still reading the config files"]
    finally:
        released.set()
    await obs.eventually(lambda: s.runtime._reading.done(), 5.0, "the hung read ends")
    result = await s.runtime.reload_off_loop()
    assert result.applied and result.changed
    assert s.engine.jobs[JobKey("a", "fast")].every == 20


async def test_a_reload_plans_the_new_config_off_the_loop(stack, obs, monkeypatch):
    """What applying a config takes beside the engine's own apply (the settings only a
    restart applies, the batch limits, the jobs: 10,000 namespaces held the loop 50-150 ms)
    is made on the reload's worker thread: meanwhile the loop anchors and answers."""
    import core.runtime

    s = await stack({"a": {"fast": "10s"}})
    await s.anchor_pass()
    planning, released = threading.Event(), threading.Event()
    real = core.runtime.restart_needed

    def slow_restart_needed(running, loaded):
        planning.set()
        released.wait(5)
        return real(running, loaded)

    monkeypatch.setattr(core.runtime, "restart_needed", slow_restart_needed)
    obs.replace_file(s.config_path, obs.config_text({"a": {"fast": "20s"}}))
    reload = asyncio.create_task(s.runtime.reload_off_loop())
    try:
        await obs.eventually(planning.is_set, 5.0, "the reload planning")
        await anchors_and_answers(s)
        assert not reload.done()
    finally:
        released.set()
    result = await reload
    assert result.applied and result.changed
    assert s.engine.jobs[JobKey("a", "fast")].every == 20


def test_the_daemon_survives_an_alias_bomb_written_over_its_config_and_signalled(tmp_path):
    """The attack as it happened: the real program, the bomb saved over its config, a SIGHUP.
    The program runs in at most 2 GiB of memory (the old reader took 3 GB, then crashed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write_batch(tmp_path / "batches", "000001", "sha256:" + "ab" * 32)
    good = (
        f"scheduler: {{tick: 0.2, data_dir: {tmp_path / 'data'}}}\n"
        f'http: {{listen: "127.0.0.1:{port}"}}\n'
        "namespaces:\n"
        f"  a:\n    source: {tmp_path / 'batches'}\n"
        '    cadence: {fast: {target: "local:dev", every: "1s", anchor_unchanged: true}}\n'
    )
    config = tmp_path / "config.yaml"
    config.write_text(good)

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "--no-ui", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit_memory,
    )

    def receipt_count() -> int:
        return len(list((tmp_path / "data" / "receipts").rglob("*.json")))

    def wait_for(predicate, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert proc.poll() is None, f"the scheduler died: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
            time.sleep(0.05)

    try:
        wait_for(lambda: receipt_count() >= 1, "a first receipt")
        temp = tmp_path / "config.yaml.tmp"
        temp.write_text(good + BILLION_LAUGHS)
        os.replace(temp, config)  # as an editor saves
        proc.send_signal(signal.SIGHUP)
        after = receipt_count()
        wait_for(lambda: receipt_count() >= after + 3, "three more receipts after the bomb")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    rejected = [
        json.loads(line).get("error", "") for line in out.splitlines()
        if json.loads(line)["msg"].startswith("config reload rejected")
    ]
    bomb_line = len(good.splitlines()) + 6  # lol6: the first level past the limit
    assert rejected, out[-2000:]
    assert all(re.search(rf"config\.yaml:{bomb_line}:\d+: aliases here expand", e) for e in rejected), rejected
