"""`vmsh-scheduler store import DATA_DIR`: an operator moving from the file store to
PostgreSQL keeps the job states (nothing anchors again at once) and the receipts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg

from core.clock import FakeClock
from core.config import load_config
from core.runtime import Runtime
from core.store.files.lock import DataDirLock

from .cluster_rig import CLI
from .engines import NAMESPACES, Replica, publish, receipts_by_job, write_config
from .postgres import PASSWORD


def store_import(tmp: Path, url: str, source: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VMSH_STORE": url, "VMSH_STORE_PASSWORD": PASSWORD}
    return subprocess.run(
        [*CLI, "store", "import", str(source), "--config", str(tmp / "config-a.yaml")],
        env=env, cwd=tmp, capture_output=True, text=True, timeout=60,
    )


async def test_a_file_stores_states_and_receipts_move_to_postgresql_and_nothing_anchors_again(
    tmp_path: Path, pg_url: str
) -> None:
    clock = FakeClock()
    publish(tmp_path, 1)
    config = write_config(tmp_path, "a")
    source = tmp_path / "data-a"
    runtime = Runtime.open(load_config(config, env={}, cwd=tmp_path), clock=clock)
    await runtime.engine.run_once()  # the file store's scheduler anchors every job once
    await runtime.engine.stop(1.0)
    await runtime.close()
    runtime.release()
    files = sorted((source / "receipts").glob("*/*.json"))
    assert len(files) == len(NAMESPACES)

    holder = DataDirLock(source).acquire()  # a scheduler still runs on it
    refused = store_import(tmp_path, pg_url, source)
    holder.release()
    assert refused.returncode == 2 and "stop that scheduler first" in refused.stderr

    done = store_import(tmp_path, pg_url, source)
    assert done.returncode == 0, done.stderr
    assert f"{len(NAMESPACES)} job state(s)" in done.stdout and f"{len(NAMESPACES)} receipt(s)" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr
    again = store_import(tmp_path, pg_url, source)
    assert again.returncode == 0 and f"0 receipt(s) ({len(NAMESPACES)} already there)" in again.stdout
    with psycopg.connect(pg_url, password=PASSWORD) as conn:
        names = sorted(name for (name,) in conn.execute("SELECT name FROM receipts"))
        last = conn.execute("SELECT state->>'last_receipt' FROM jobs WHERE job = %s", (f"{NAMESPACES[0]}/fast",)).fetchone()
    assert names == sorted(f.name for f in files)
    assert last is not None and last[0].startswith("postgresql:/receipts/")

    # A replica on the store: the imported states say every root is anchored already.
    clock.advance(61)
    replica = Replica(tmp_path, "b", pg_url, clock)
    try:
        await replica.engine.run_once()
        assert all(len(roots) == 1 for roots in receipts_by_job(pg_url).values())
        assert sum(len(r) for r in receipts_by_job(pg_url).values()) == len(NAMESPACES)
    finally:
        await replica.close()
