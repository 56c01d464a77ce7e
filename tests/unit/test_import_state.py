"""Moving from the original VaultMesh service: its state file's last-anchored times are
imported on the first start, so jobs it anchored a minute ago are not anchored again at
once; jobs it never anchored are due at once; never imported twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import sources
from core.clock import FakeClock
from core.config import ENV_VARS, load_config
from core.events import LogRecord, ReceiptWritten
from core.runtime import CannotStart, Runtime
from core.sources import write_batch

REPO = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600.0  # FakeClock's start
CONFIG = """\
scheduler: {data_dir: data}
namespaces:
  "dao:vaultmesh": {source: batches/dao, cadence: {fast: {target: "local:dev", every: "89s"}, cold: {target: "local:dev", every: "1d"}}}
  "fin:clearing": {source: batches/fin, cadence: {fast: {target: "local:dev", every: "120s"}}}
"""
# The original service's state (its VMSH_STATE): dao fast a minute ago, dao cold an hour
# ago, fin never; a namespace it had that is not configured here.
ORIGINAL = {
    "dao:vaultmesh": {"last": {"fast": T0 - 60, "cold": T0 - 3600}, "backoff": 0},
    "fin:clearing": {"last": {}, "backoff": 3},
    "old:gone": {"last": {"fast": T0 - 30}, "backoff": 0},
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(CONFIG)
    for ns in ("dao", "fin"):
        write_batch(tmp_path / "batches" / ns, "000001", "sha256:" + ns.encode().hex().rjust(64, "0"))
    yield
    sources.configure({})


def original_file(tmp_path: Path, doc=ORIGINAL) -> Path:
    path = tmp_path / "vmsh-state.json"
    path.write_text(json.dumps(doc))
    return path


def start(tmp_path: Path, env: dict[str, str] | None = None, import_state: Path | None = None):
    loaded = load_config(tmp_path / "config.yaml", env=env or {}, cwd=tmp_path)
    loaded.import_state = import_state
    runtime = Runtime.open(loaded, clock=FakeClock(T0))
    logs: list[LogRecord] = []
    runtime.bus.subscribe(lambda e: logs.append(e) if isinstance(e, LogRecord) else None)
    runtime.announce()
    return runtime, logs


async def anchored(runtime: Runtime) -> list[str]:
    """The jobs one pass anchors."""
    events: list = []
    unsubscribe = runtime.bus.subscribe(events.append)
    await runtime.engine.run_once()
    await runtime.engine.settle()
    runtime.engine.flush()
    unsubscribe()
    return sorted(str(e.job) for e in events if isinstance(e, ReceiptWritten))


def imports(logs: list[LogRecord]) -> list[LogRecord]:
    return [r for r in logs if "original VaultMesh service" in r.msg]


async def test_jobs_anchored_a_minute_earlier_are_not_anchored_again_at_once(tmp_path):
    runtime, logs = start(tmp_path, import_state=original_file(tmp_path))
    try:
        # fin never anchored by the original: due at once; dao's are not
        assert await anchored(runtime) == ["fin:clearing/fast"]
        runtime.clock.advance(28)
        assert await anchored(runtime) == []
        runtime.clock.advance(1)  # 89 s after the original's anchor
        assert await anchored(runtime) == ["dao:vaultmesh/fast"]
    finally:
        await runtime.close()
        runtime.release()
    [record] = imports(logs)  # logged once, at INFO, with the counts
    assert record.level == "INFO"
    assert record.fields == {
        "file": str(tmp_path / "vmsh-state.json"),
        "imported": 2,
        "never_anchored": 1,
        "not_configured": 1,
    }


async def test_never_imported_again_once_our_state_exists(tmp_path):
    source = original_file(tmp_path)
    runtime, _ = start(tmp_path, import_state=source)
    await anchored(runtime)
    await runtime.close()
    runtime.release()
    ours = tmp_path / "data" / "state" / "scheduler.json"
    saved = json.loads(ours.read_text())["jobs"]["dao:vaultmesh/fast"]
    assert saved["last_anchored_at"] == T0 - 60
    # The original file changes (it ran once more): our state is what counts now.
    original_file(tmp_path, {"dao:vaultmesh": {"last": {"fast": T0 - 5}}})
    runtime, logs = start(tmp_path, import_state=source)
    try:
        assert await anchored(runtime) == []  # fin anchored in the first run: not due
        runtime.clock.advance(29)
        assert await anchored(runtime) == ["dao:vaultmesh/fast"]  # T0 - 60 + 89, not T0 - 5 + 89
    finally:
        await runtime.close()
        runtime.release()
    assert [r.msg for r in imports(logs)] == []
    assert any("--import-state not applied" in r.msg for r in logs)


async def test_vmsh_state_naming_the_original_file_is_imported_into_the_data_dir(tmp_path):
    source = original_file(tmp_path)
    before = source.read_bytes()
    runtime, logs = start(tmp_path, env={"VMSH_STATE": str(source)})
    try:
        assert runtime.state_file == tmp_path / "data" / "state" / "scheduler.json"
        assert await anchored(runtime) == ["fin:clearing/fast"]
    finally:
        await runtime.close()
        runtime.release()
    assert source.read_bytes() == before  # the original's file is only read
    assert len(imports(logs)) == 1
    # Started again with the same environment: our state is used, nothing imported or said.
    runtime, logs = start(tmp_path, env={"VMSH_STATE": str(source)})
    runtime.release()
    assert logs and not [r for r in logs if "import" in r.msg]


def test_vmsh_state_naming_our_own_state_file_stays_our_state_file(tmp_path):
    ours = tmp_path / "elsewhere" / "state.json"
    runtime, logs = start(tmp_path, env={"VMSH_STATE": str(ours)})
    runtime.release()
    assert runtime.state_file == ours
    assert imports(logs) == []


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"dao:vaultmesh": {"last": {"fast": "yesterday"}}}',
         "namespace 'dao:vaultmesh': \"last\".\"fast\" must be epoch seconds"),
        ('{"dao:vaultmesh": {"last": ', "the state file to import is not valid JSON"),
        ('["dao:vaultmesh"]', "expected the original VaultMesh service's state"),
        ('{"dao:vaultmesh": {"last": [1, 2]}}', '"last" must map cadences to epoch seconds'),
    ],
)
def test_a_malformed_file_to_import_stops_the_start_naming_it(tmp_path, content, needle):
    bad = tmp_path / "vmsh-state.json"
    bad.write_text(content)
    loaded = load_config(tmp_path / "config.yaml", env={}, cwd=tmp_path)
    loaded.import_state = bad
    with pytest.raises(CannotStart) as info:
        Runtime.open(loaded, clock=FakeClock(T0))
    assert str(bad) in str(info.value) and needle in str(info.value)
    assert "start without importing" in str(info.value)
    assert not (tmp_path / "data" / "state" / "scheduler.json").exists()  # nothing half-made
    Runtime.open(load_config(tmp_path / "config.yaml", env={}, cwd=tmp_path)).release()  # lock freed


def test_the_import_state_flag_of_a_real_start_exits_2_naming_the_file(tmp_path):
    bad = tmp_path / "vmsh-state.json"
    bad.write_text('{"dao:vaultmesh": {"last": {"fast": true}}}')
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "--no-ui", "--config", "config.yaml", "--import-state", str(bad)],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}: namespace 'dao:vaultmesh'" in proc.stderr
    assert "must be epoch seconds (a number >= 0), got true" in proc.stderr


def test_our_own_state_file_given_to_import_is_refused_clearly(tmp_path):
    ours = tmp_path / "ours.json"
    ours.write_text('{"version": 1, "jobs": {}}')
    loaded = load_config(tmp_path / "config.yaml", env={}, cwd=tmp_path)
    loaded.import_state = ours
    with pytest.raises(CannotStart, match="this is a vmsh-scheduler state file"):
        Runtime.open(loaded, clock=FakeClock(T0))
