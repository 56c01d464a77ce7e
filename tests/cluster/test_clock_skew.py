"""A replica whose clock it cannot trust claims nothing (core/cluster.py MAX_CLOCK_OFFSET).

A replica an hour off (libfaketime on the real process, as tests/integration/
test_clock_step.py runs one) would claim its share of the jobs, have the TSA sign tokens,
then refuse each one as clock skew: tokens paid for and thrown away. Each heartbeat reads
the database's clock between two readings of its own; past the bound it leaves the claim
rotation, says so once, and /health is degraded naming the clock. The other replica
anchors everything.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import psycopg
import pytest

from core.cluster import MAX_CLOCK_OFFSET, clock_decision
from core.replicas import ClockReading, ReplicaInfo
from tests.integration.tsa_servers import OpenSSLTSA

from .cluster_rig import ClusterRig, wait_until
from .postgres import PASSWORD

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
# What `faketime -f '+1h'` sets. (FAKETIME_DONT_FAKE_MONOTONIC=1 would leave the monotonic
# clocks alone, but with this libfaketime it makes time.sleep fail with EINVAL; a constant
# offset on them changes no interval.)
HOUR_AHEAD = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "+1h"}


# ----- the decision (a pure function) -------------------------------------------------------


def test_a_reading_is_the_midpoint_and_half_the_round_trip() -> None:
    reading = ClockReading.measure(before=1000.0, database=1000.5 - 3600, after=1001.0)
    assert reading == ClockReading(offset=3600.0, uncertainty=0.5)
    assert ClockReading.measure(10.0, 10.0, 10.0) == ClockReading(0.0, 0.0)
    assert ClockReading.measure(10.2, 10.0, 10.0).uncertainty == 0.0  # a clock stepped back mid-read


@pytest.mark.parametrize(
    ("offset", "uncertainty", "out"),
    [
        (0.0, 0.001, False),
        (1.9, 0.0, False),
        (2.0, 0.0, False),  # the bound itself is allowed
        (2.1, 0.0, True),
        (-2.1, 0.0, True),  # behind as much as ahead
        (2.4, 0.5, False),  # could be within: the round trip was slow
        (2.6, 0.5, True),
        (3600.0, 0.002, True),
        (-86400.0, 0.002, True),
    ],
)
def test_a_replica_leaves_the_rotation_only_when_its_clock_is_surely_off(offset, uncertainty, out) -> None:
    problem = clock_decision(ClockReading(offset, uncertainty))
    assert (problem is not None) == out
    if out:
        assert problem is not None and problem.startswith(f"clock is {offset:+.1f} s off the database's")
        assert f"at most {MAX_CLOCK_OFFSET:g} s" in problem


@pytest.mark.parametrize(
    ("offset", "uncertainty", "back"),
    [
        (1.0, 0.1, True),
        (2.0, 0.0, True),
        (1.8, 0.5, False),  # could still be off: stays out until a reading says it is within
        (2.1, 0.0, False),
        (-1.0, 0.9, True),
    ],
)
def test_it_comes_back_only_when_its_clock_is_surely_within(offset, uncertainty, back) -> None:
    problem = clock_decision(ClockReading(offset, uncertainty), refusing=True)
    assert (problem is None) == back


def test_the_bound_can_be_given() -> None:
    assert clock_decision(ClockReading(0.5, 0.0), bound=0.25) is not None
    assert clock_decision(ClockReading(0.5, 0.0), bound=1.0) is None


def test_a_replica_row_carries_its_clock_over_the_wire_and_leaves_it_out_when_unknown() -> None:
    row = ReplicaInfo(id="h-1-ab", host="h", pid=1, version="v", config_hash="c", in_flight=0,
                      heartbeat_at=1.0, started_at=0.5, alive=True, this=True)
    assert "clock_offset" not in row.to_json() and "refusal" not in row.to_json()
    assert ReplicaInfo.from_json(json.loads(json.dumps(row.to_json()))) == row
    off = dataclasses.replace(row, clock_offset=3600.0, refusal="clock is +3600.0 s off")
    assert ReplicaInfo.from_json(json.loads(json.dumps(off.to_json()))) == off


# ----- real processes -------------------------------------------------------------------------


@pytest.fixture
def tsa(tmp_path: Path):
    server = OpenSSLTSA(tmp_path / "tsa")
    yield server
    server.http.stop()


def health(rig: ClusterRig, name: str) -> dict:
    code, body = rig.http(name, "/health")
    assert isinstance(body, dict), (code, body)
    return body


def replica_id(rig: ClusterRig, name: str) -> str:
    """A replica's id (its registry row), found by its pid in another's /health."""
    pid = rig.procs[name].pid
    rows = [r for r in health(rig, name)["replicas"] if r["pid"] == pid]
    assert len(rows) == 1, rows
    return str(rows[0]["id"])


def writers(url: str) -> dict[str, int]:
    with psycopg.connect(url, password=PASSWORD) as conn:
        return dict(conn.execute("SELECT written_by, count(*) FROM receipts GROUP BY written_by").fetchall())


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason=f"libfaketime not installed ({LIBFAKETIME})")
def test_a_replica_an_hour_ahead_claims_nothing_and_the_other_anchors_everything(tmp_path, pg_url, tsa):
    namespaces = [f"ns{n:02d}" for n in range(20)]
    rig = ClusterRig(tmp_path, pg_url, tsa, namespaces, every="2s", lease=3)
    for ns in namespaces:
        rig.publish(ns)
    migrated = rig.migrate()
    assert migrated.returncode == 0, migrated.stderr
    try:
        # Alone first: every job is due and nobody else would take it.
        rig.start("skewed", env=HOUR_AHEAD)
        wait_until(lambda: rig.http("skewed", "/readyz")[0] == 200, 30, "the skewed replica ready")
        time.sleep(3)  # six ticks with every job due
        assert rig.receipts() == [] and tsa.requests == [], "the skewed replica claimed and anchored"
        body = health(rig, "skewed")
        assert body["status"] == "degraded", body
        assert body["clock"]["ok"] is False and body["store"]["ok"] is True
        assert 3599 < body["clock"]["offset"] < 3601 and body["clock"]["uncertainty"] < 1
        assert body["clock"]["error"].startswith("clock is +3600."), body["clock"]
        this = [r for r in body["replicas"] if r["pid"] == rig.procs["skewed"].pid]
        assert len(this) == 1 and this[0]["refusal"].startswith("clock is +3600."), this
        assert rig.http("skewed", "/readyz")[0] == 200  # it runs: the others anchor

        rig.start("a")
        wait_until(lambda: rig.http("a", "/readyz")[0] == 200, 30, "replica a ready")
        wait_until(lambda: len(rig.anchored_latest()) == len(namespaces), 30, "a anchoring everything")
        for _ in range(3):  # new roots while both run: still a alone
            for ns in namespaces:
                rig.publish(ns)
            time.sleep(2)
        wait_until(lambda: len(rig.anchored_latest()) == len(namespaces), 30, "the last roots anchored")
        assert all(rig.procs[n].poll() is None for n in ("a", "skewed"))
        a_health = health(rig, "a")
        assert a_health["clock"]["ok"] is True and abs(a_health["clock"]["offset"]) < MAX_CLOCK_OFFSET
        skewed_id, a_id = replica_id(rig, "skewed"), replica_id(rig, "a")
        # The other replica sees why the skewed one claims nothing (the registry's row).
        wait_until(lambda: any(r.get("refusal") for r in health(rig, "a")["replicas"]), 5, "the refusal in a's view")
        row = next(r for r in health(rig, "a")["replicas"] if r["id"] == skewed_id)
        assert row["refusal"].startswith("clock is +3600.") and 3599 < row["clock_offset"] < 3601, row
        row = next(r for r in health(rig, "a")["replicas"] if r["id"] == a_id)
        assert "refusal" not in row and abs(row["clock_offset"]) < MAX_CLOCK_OFFSET, row
    finally:
        codes = rig.stop_all()
    assert codes == {"skewed": 0, "a": 0}
    assert writers(pg_url) == {a_id: len(rig.receipts())}, "a receipt written by the skewed replica"
    trees = {anchored for _, _, _, anchored in rig.receipts()}
    assert len(tsa.requests) == len(trees), "a token asked for and not used"
    assert rig.doubles() == []
    skewed_log = (tmp_path / "skewed-1.log").read_text()
    assert "clock skew" not in skewed_log and "anchor started" not in skewed_log
    assert skewed_log.count("clock off the database's") == 1, "said once"
    assert "not claiming jobs" in skewed_log
    assert skewed_id not in {w for w in writers(pg_url)}
