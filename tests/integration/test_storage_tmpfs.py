"""A real full disk: the data dir on a 512 KiB tmpfs, filled mid-run, then freed.

Needs root (mount); skipped with the reason otherwise. The whole stack runs: the real
Runtime, the embedded TSA, the HTTP server answering /health, /readyz and /metrics.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def tmpfs_data(tmp_path: Path):
    """`tmp_path/data` is a 512 KiB tmpfs for the test; unmounted after the stack closes."""
    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(data)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def fill(folder: Path) -> Path:
    """Write zeros until the file system says ENOSPC; the filler's path."""
    filler = folder / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as out:
        while True:
            try:
                out.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


async def test_a_full_disk_mid_run_degrades_health_and_anchoring_resumes_once_freed(tmpfs_data, stack, obs):
    s = await stack({"a": {"fast": "10s"}, "b": {"fast": "10s"}})
    await s.anchor_pass()
    assert len([e for e in s.logs if e.msg == "anchored"]) == 2
    assert (await s.client.get("/readyz")).status_code == 200

    filler = fill(tmpfs_data)  # the disk fills up while the scheduler runs
    s.clock.advance(10)
    await s.anchor_pass()

    assert s.engine.in_flight() == frozenset()
    failures = [e for e in s.logs if e.level == "ERROR" and e.fields.get("errno") == errno.ENOSPC]
    assert failures and all(str(tmpfs_data) in (e.fields.get("path") or "") for e in failures)
    code, body = await s.health()
    assert (code, body["status"]) == (503, "degraded")
    assert "ENOSPC" in body["storage"]
    assert (await s.client.get("/readyz")).status_code == 503
    _, samples = await s.scrape()
    assert obs.value(samples, "vmsh_anchor_failures_by_kind_total", kind="storage") == 2
    assert sum(
        v for (name, _), v in samples.items() if name == "vmsh_storage_errors_total"
    ) >= 1

    os.unlink(filler)  # an operator frees the disk; nobody restarts anything
    s.clock.advance(10)  # one backoff period (5 s x PHI, +-10 %) and one cadence
    await s.anchor_pass()

    code, body = await s.health()
    assert (code, body["status"]) == (200, "healthy"), body
    assert (await s.client.get("/readyz")).status_code == 200
    anchored = [e.fields["job"] for e in s.logs if e.msg == "anchored"]
    assert sorted(anchored[2:]) == ["a/fast", "b/fast"]  # both resumed on their own
    assert not list((tmpfs_data / "journal").glob("*.json"))

