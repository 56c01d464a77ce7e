"""Cluster mode as operators run it: `vmsh-scheduler --no-ui` replicas (real processes) on
one real PostgreSQL (tests/cluster/postgres.py), anchoring to one real RFC 3161 TSA
(`openssl ts -reply` over HTTP) or a real EVM node (ganache), while batch files arrive.

What is counted comes from the database and the TSA/node themselves: every (job, root)
anchored once (no two receipts for one job and root), every root that stayed the latest for
long enough has a receipt, the TSA answered exactly one request per anchored tree.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from core.store.postgres.database import SCHEMA_VERSION, Database
from tests.integration.ganache import ADDRESSES, KEYS, Ganache
from tests.integration.tsa_servers import OpenSSLTSA

from .cluster_rig import CLI, ClusterRig, wait_until
from .postgres import PASSWORD, PostgresServer


@pytest.fixture
def tsa(tmp_path: Path):
    server = OpenSSLTSA(tmp_path / "tsa")
    yield server
    server.http.stop()


def lost(rig: ClusterRig, settled_after: float) -> list[tuple[str, str]]:
    """Roots that stayed a namespace's latest for `settled_after` s or more (so some due
    time fell while they were latest) yet have no receipt."""
    have = {(ns, batch_root) for ns, _, batch_root, _ in rig.receipts()}
    missing = []
    now = time.monotonic()
    for ns, roots in rig.published.items():
        for n, (value, at) in enumerate(roots):
            until = roots[n + 1][1] if n + 1 < len(roots) else now
            if until - at >= settled_after and (ns, value) not in have:
                missing.append((ns, value))
    return missing


class Publisher:
    """New roots for random namespaces, `rate` per second, until stopped."""

    def __init__(self, rig: ClusterRig, rate: float, seed: int = 7) -> None:
        self.rig = rig
        self.rate = rate
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(1 / self.rate):
            self.rig.publish(self.rng.choice(self.rig.namespaces))

    def __enter__(self) -> Publisher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def start_replicas(rig: ClusterRig, names: list[str]) -> None:
    migrated = rig.migrate()
    assert migrated.returncode == 0, migrated.stderr
    for name in names:
        rig.start(name)
    for name in names:
        wait_until(lambda n=name: rig.http(n, "/readyz")[0] == 200, 30, f"replica {name} ready")


def test_three_replicas_300_namespaces_for_60_s_anchor_every_root_exactly_once(tmp_path, pg_url, tsa):
    namespaces = [f"ns{n:03d}" for n in range(300)]
    rig = ClusterRig(tmp_path, pg_url, tsa, namespaces, every="2s")
    for ns in namespaces:
        rig.publish(ns)
    try:
        start_replicas(rig, ["a", "b", "c"])
        with Publisher(rig, rate=10):
            time.sleep(60)
        wait_until(lambda: len(rig.anchored_latest()) == len(namespaces), 30, "the last roots anchored")
        for name in "abc":
            assert rig.procs[name].poll() is None, f"replica {name} died:\n{rig.logs()[-3000:]}"
    finally:
        codes = rig.stop_all()
    assert codes == {"a": 0, "b": 0, "c": 0}
    assert rig.doubles() == []
    assert lost(rig, settled_after=4 + 2) == []
    receipts = rig.receipts()
    trees = {anchored for _, _, _, anchored in receipts}
    assert len(tsa.requests) == len(trees), "every TSA request became receipts, and no tree was stamped twice"
    with psycopg.connect(pg_url, password=PASSWORD) as conn:
        writers: dict[str, int] = dict(conn.execute("SELECT written_by, count(*) FROM receipts GROUP BY written_by").fetchall())
    assert len(writers) == 3, f"the work is shared: {writers}"
    assert len(receipts) > len(namespaces) + 300  # the roots that arrived during the minute


def test_kill_9_one_replica_every_10_s_for_2_minutes_loses_nothing_and_doubles_nothing(tmp_path, pg_url, tsa):
    namespaces = [f"ns{n:03d}" for n in range(100)]
    rig = ClusterRig(tmp_path, pg_url, tsa, namespaces, every="2s", lease=3)
    for ns in namespaces:
        rig.publish(ns)
    names = ["a", "b", "c"]
    killed = 0
    try:
        start_replicas(rig, names)
        rng = random.Random(3)
        with Publisher(rig, rate=5):
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                time.sleep(10)
                victim = rng.choice(names)
                rig.kill(victim)  # mid-anchor or not: whatever it was doing
                killed += 1
                rig.start(victim)
        # Failover: a killed replica's leases expire (3 s), its heartbeat ages out (6 s),
        # another replica resolves what it left and anchors its jobs.
        wait_until(lambda: len(rig.anchored_latest()) == len(namespaces), 40, "the last roots anchored")
    finally:
        rig.stop_all()
    assert killed >= 11
    assert rig.doubles() == [], f"a root anchored twice for one job:\n{rig.explain_doubles()}"
    assert lost(rig, settled_after=20) == [], "a root that was due has no receipt"


def test_two_replicas_sharing_one_evm_key_never_collide_on_a_nonce(tmp_path, pg_url, tsa):
    (tmp_path / "node").mkdir()  # its log (which prints the test keys) apart from the replicas'
    node = Ganache(tmp_path / "node").start()
    try:
        namespaces = [f"ns{n:02d}" for n in range(20)]
        extra = "\n".join([
            "  eip155:",
            '    "1337":',
            f"      rpcUrl: {node.url}",
            "      chainId: 1337",
            "      key_env: VMSH_TEST_EVM_KEY",
        ])
        rig = ClusterRig(tmp_path, pg_url, tsa, namespaces, every="2s", target="eip155:1337", extra_targets=extra)
        # Two groups of jobs due at once on two replicas: both sign with one key at once.
        for ns in namespaces:
            rig.publish(ns)
        os.environ["VMSH_TEST_EVM_KEY"] = KEYS[0]
        try:
            start_replicas(rig, ["a", "b"])
            with Publisher(rig, rate=4):
                time.sleep(20)
            wait_until(lambda: len(rig.anchored_latest()) == len(namespaces), 40, "the last roots anchored")
        finally:
            rig.stop_all()
            del os.environ["VMSH_TEST_EVM_KEY"]
        txs = set()
        with psycopg.connect(pg_url, password=PASSWORD) as conn:
            for (doc,) in conn.execute("SELECT doc FROM receipts"):
                txs.add(doc["attestation"]["tx_hash"])
        nonces = [int(node.rpc("eth_getTransactionByHash", tx)["nonce"], 16) for tx in txs]
        assert len(nonces) == len(set(nonces)), "two transactions with one nonce"
        mined = int(node.rpc("eth_getTransactionCount", ADDRESSES[0], "latest"), 16)
        assert mined == len(txs), "every transaction the replicas sent is a receipt's (none lost to a nonce clash)"
        assert rig.doubles() == []
        logs = rig.logs()
        assert "nonce too low" not in logs and "replacement transaction" not in logs
        assert KEYS[0][2:] not in logs
    finally:
        node.stop()


def test_postgresql_stopped_for_20_s_means_not_ready_and_no_anchors_then_recovery_alone(
    tmp_path, pg_url, tsa, postgres_server: PostgresServer
):
    namespaces = [f"ns{n:02d}" for n in range(20)]
    rig = ClusterRig(tmp_path, pg_url, tsa, namespaces, every="2s", lease=3)
    for ns in namespaces:
        rig.publish(ns)
    try:
        start_replicas(rig, ["a", "b"])
        wait_until(lambda: len(rig.anchored_latest()) == len(namespaces), 30, "first anchors")
        requests_before = len(tsa.requests)
        postgres_server.stop()
        down_at = time.monotonic()
        for ns in namespaces:
            rig.publish(ns)  # new roots while the store is down
        not_ready = wait_until(
            lambda: all(rig.http(n, "/readyz")[0] == 503 for n in "ab"), 15, "both replicas not ready"
        )
        assert not_ready
        status, health = rig.http("a", "/health")
        assert health["store"]["ok"] is False and health["store"]["kind"] == "postgresql"
        assert PASSWORD not in json.dumps(health)
        time.sleep(max(0.0, 20 - (time.monotonic() - down_at)))
        assert len(tsa.requests) == requests_before, "anchored without a lease while the store was down"
        assert all(rig.procs[n].poll() is None for n in "ab"), "a replica died with its store"
        postgres_server.start()
        try:
            wait_until(lambda: all(rig.http(n, "/readyz")[0] == 200 for n in "ab"), 30, "ready again")
        except AssertionError:
            raise AssertionError(f"{[rig.http(n, '/readyz') for n in 'ab']}\n{rig.logs()[-4000:]}") from None
        wait_until(lambda: len(rig.anchored_latest()) == len(namespaces), 40, "the roots of the outage anchored")
    finally:
        if not postgres_server.is_running():
            postgres_server.start()
        rig.stop_all()
    assert rig.doubles() == []
    logs = rig.logs()
    assert "store unreachable" in logs and "store reachable again" in logs
    assert PASSWORD not in logs


def test_pause_on_one_replica_pauses_all_and_resume_resumes_all(tmp_path, pg_url, tsa):
    namespaces = [f"ns{n:02d}" for n in range(10)]
    rig = ClusterRig(tmp_path, pg_url, tsa, namespaces, every="2s")
    for ns in namespaces:
        rig.publish(ns)

    def ctl(name: str, action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "ctl", action, "--socket", str(tmp_path / f"data-{name}" / "control.sock")],
            capture_output=True, text=True, timeout=30,
        )

    def paused(name: str) -> bool:
        done = subprocess.run(
            [*CLI, "ctl", "status", "--json", "--socket", str(tmp_path / f"data-{name}" / "control.sock")],
            capture_output=True, text=True, timeout=30,
        )
        return bool(json.loads(done.stdout)["paused"])

    try:
        start_replicas(rig, ["a", "b"])
        wait_until(lambda: len(rig.anchored_latest()) == len(namespaces), 30, "first anchors")
        assert ctl("a", "pause").returncode == 0
        wait_until(lambda: paused("b"), 5, "b paused too", every=0.1)
        count = len(rig.receipts())
        for ns in namespaces:
            rig.publish(ns)
        time.sleep(6)  # three cadence periods
        assert len(rig.receipts()) == count, "a replica anchored while the cluster was paused"
        rig.start("c")  # a replica that starts now starts paused
        wait_until(lambda: rig.http("c", "/readyz")[0] == 200, 30, "c ready")
        assert paused("c")
        assert ctl("b", "resume").returncode == 0
        wait_until(lambda: not paused("a") and not paused("c"), 5, "a and c resumed too", every=0.1)
        wait_until(lambda: len(rig.anchored_latest()) == len(namespaces), 20, "anchoring resumed")
    finally:
        rig.stop_all()
    assert rig.doubles() == []


def test_a_schema_from_an_older_version_is_refused_at_start_and_migrated_by_store_migrate(tmp_path, pg_url, tsa):
    db = Database(pg_url, password=PASSWORD)
    assert db.migrate(target=1) == (0, 1)
    with db.tx() as conn:  # what a version-1 scheduler left
        conn.execute("INSERT INTO jobs (job, state, version) VALUES ('ns00/fast', %s, 3)",
                     (json.dumps({"last_root": "sha256:" + "ab" * 32, "failures": 0, "backoff_level": 0}),))
    db.close()
    rig = ClusterRig(tmp_path, pg_url, tsa, ["ns00"], every="2s")
    rig.publish("ns00")
    rig.start("a")
    code = rig.procs["a"].wait(timeout=30)
    assert code == 2
    assert "schema version 1" in rig.logs() and "store migrate" in rig.logs()
    done = rig.migrate()
    assert done.returncode == 0, done.stderr
    assert f"from version 1 to {SCHEMA_VERSION}" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr
    again = rig.migrate()
    assert "nothing to do" in again.stdout
    with psycopg.connect(pg_url, password=PASSWORD) as conn:
        state = conn.execute("SELECT state FROM jobs WHERE job = 'ns00/fast'").fetchone()
        assert state is not None and state[0]["last_root"] == "sha256:" + "ab" * 32  # kept
        assert conn.execute("SELECT version FROM vmsh_schema").fetchone() == (SCHEMA_VERSION,)
    try:
        rig.start("a")
        wait_until(lambda: rig.anchored_latest() == {"ns00"}, 30, "anchoring on the migrated store")
    finally:
        rig.stop_all()


def test_export_writes_receipts_that_verify_offline(tmp_path, pg_url, tsa):
    namespaces = ["dao:vaultmesh", "ops:metrics"]
    rig = ClusterRig(tmp_path, pg_url, tsa, namespaces, every="2s")
    for ns in namespaces:
        rig.publish(ns)
    try:
        start_replicas(rig, ["a"])
        wait_until(lambda: len(rig.anchored_latest()) == 2, 30, "anchors")
    finally:
        rig.stop_all()
    out = tmp_path / "export"
    env = {**rig.env("a"), "VMSH_DATA_DIR": str(tmp_path / "elsewhere")}
    done = subprocess.run([*CLI, "export", "--out", str(out), "--config", str(rig.config)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    files = sorted(out.glob("*/*.json"))
    assert len(files) == len(rig.receipts()) >= 2
    assert {f.parent.name for f in files} == {"dao%3Avaultmesh", "ops%3Ametrics"}
    # verify with the receipts and the TSA's CA only: no database, no config.
    checked = subprocess.run(
        [*CLI, "verify", "--trust-bundle", str(tsa.pki.path("bundle.pem")), *map(str, files)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # ... or with what export wrote beside them: the target's trust bundle, from the config.
    beside = subprocess.run(
        [*CLI, "verify", "--trust-bundle", str(out / ".trust"), str(out)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert beside.returncode == 0, beside.stdout + beside.stderr
    tampered = json.loads(files[0].read_text())
    tampered["batch"]["root"] = "sha256:" + "00" * 32
    files[0].write_text(json.dumps(tampered))
    again = subprocess.run(
        [*CLI, "verify", "--trust-bundle", str(tsa.pki.path("bundle.pem")), str(files[0])],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert again.returncode == 1


def test_a_dashboard_attached_to_either_replica_shows_both_and_all_their_receipts(tmp_path, pg_url, tsa):
    """What the README's walk-through shows: two replicas on one machine, `attach` to one of
    them (its control socket): the Replicas pane's rows are both, and the receipts are the
    cluster's, whichever replica wrote them."""
    from core.remote_control import RemoteControl

    namespaces = [f"ns{n:02d}" for n in range(40)]
    rig = ClusterRig(tmp_path, pg_url, tsa, namespaces, every="2s")
    for ns in namespaces:
        rig.publish(ns)
    try:
        start_replicas(rig, ["a", "b"])
        wait_until(lambda: len(rig.anchored_latest()) == len(namespaces), 30, "first anchors")

        def writers() -> set[str]:
            with psycopg.connect(pg_url, password=PASSWORD) as conn:
                return {w for (w,) in conn.execute("SELECT DISTINCT written_by FROM receipts")}

        def both_wrote() -> bool:  # the first to start may have taken all the first roots
            if len(writers()) == 2:
                return True
            for ns in namespaces:
                rig.publish(ns)
            return False

        wait_until(both_wrote, 20, "receipts written by both replicas (each its share)", every=2.5)
        wait_until(lambda: len(rig.anchored_latest()) == len(namespaces), 30, "the last roots anchored")
        with psycopg.connect(pg_url, password=PASSWORD) as conn:
            newest = conn.execute("SELECT name, written_by FROM receipts ORDER BY name DESC LIMIT 20").fetchall()
        foreign = 0
        pids = sorted(rig.procs[n].pid for n in "ab")
        for name in "ab":
            socket = tmp_path / f"data-{name}" / "control.sock"
            # Each replica reads the registry at its heartbeat (every lease / 3 = 1 s here).
            control = wait_until(
                lambda s=socket: (c := RemoteControl.connect(s)) and sorted(r.pid for r in c.snapshot().replicas) == pids
                and c, 5, f"both replicas in {name}'s snapshot",
            )
            snap = control.snapshot()
            assert snap.store.kind == "postgresql" and snap.store.ok
            assert [r.this for r in snap.replicas if r.pid == rig.procs[name].pid] == [True]
            listed = control.recent_receipts(20)
            assert [p.name for p, _ in listed] == [name for name, _ in newest], "the store's newest, not this replica's"
            this_id = next(r.id for r in snap.replicas if r.this)
            foreign += sum(1 for _, writer in newest if writer != this_id)
    finally:
        rig.stop_all()
    assert foreign > 0, "a dashboard listed receipts another replica wrote"
