"""Cluster mode on one real PostgreSQL: throughput with 1-3 replicas, failover, claim latency.

Everything is real: the PostgreSQL server of tests/cluster/postgres.py (initdb in a temp
folder, fsync on, scram over TCP), `vmsh-scheduler --no-ui` replicas driven by
tests/cluster/cluster_rig.py's `ClusterRig`, and the RFC 3161 OpenSSL TSA of
tests/integration/tsa_servers.py (`openssl ts -reply` over HTTP on 127.0.0.1). What is
counted comes from the database (receipts, jobs, replicas tables) and from the TSA's own
request log. Without PostgreSQL server binaries the bench says so and measures nothing.

1. Throughput: 1,000 namespaces (cadence 1h: each job anchors once), every root published
   before the start, a fresh database per run. 1, 2 or 3 replicas are started together
   with the cluster-wide paused flag set (the `cluster` table, as `ctl pause` leaves it);
   once every replica's /readyz is 200 the bench resumes the cluster the way a replica
   does (flag cleared + NOTIFY "resume"), and times from there until the 1,000th receipt
   row is in the database: anchors/s = 1000 / that. TSA requests: what the TSA received
   during the run (each replica aggregates the jobs it claimed in a pass into one tree).
2. Failover: 2 replicas, 200 namespaces every 2 s, lease 3 s, every namespace given a new
   root every ~2 s by a publisher thread. When both replicas hold live leases (jobs rows
   with lease_owner set and lease_until in the future), one chosen at random is killed
   with SIGKILL. Failover time = from its last heartbeat (replicas.heartbeat_at, read just
   before the kill) until every job whose live lease it held at the kill has a receipt
   row that was not there at the kill, written by the surviving replica (database clock
   for both ends; polled every 0.1 s). The victim is restarted after that; 5 kills.
3. Claim latency, in process: `PgStateStore.claim` of 10,000 jobs (rows created by a first
   claim, not timed), then `release`, 10 times; then two stores on two connection pools
   ("bench-a", "bench-b", like two replicas) claiming the same 10,000 at once from two
   threads, 10 times: FOR UPDATE SKIP LOCKED gives each a disjoint part.

    .venv/bin/python bench/run.py cluster     # about a minute on 2 cores
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

from core.jobs import JobKey, JobState  # noqa: E402
from core.store.postgres.database import NOTIFY_CHANNEL, Database  # noqa: E402
from core.store.postgres.state import PgStateStore  # noqa: E402
from tests.cluster.cluster_rig import ClusterRig, wait_until  # noqa: E402
from tests.cluster.postgres import PASSWORD, PostgresServer, find_bin_dir  # noqa: E402
from tests.integration.tsa_servers import OpenSSLTSA  # noqa: E402

Row = tuple[str, str, str]

THROUGHPUT_NAMESPACES = 1_000
THROUGHPUT_REPLICAS = (1, 2, 3)
THROUGHPUT_LEASE = 15.0  # s, the scheduler's default
THROUGHPUT_TIMEOUT = 120.0  # s for all receipts of one run

FAILOVER_NAMESPACES = 200
FAILOVER_EVERY = "2s"
FAILOVER_LEASE = 3.0  # s
FAILOVER_KILLS = 5
FAILOVER_TIMEOUT = 30.0  # s after a kill for every held job to have a new receipt

CLAIM_JOBS = 10_000
CLAIM_ROUNDS = 10
CLAIM_LEASE = 15.0

READY_TIMEOUT = 60.0  # s for a replica's /readyz to be 200


def cores() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{usable} cores"


def server_folder() -> Path:
    """Under /tmp with mode 0755: as root the server runs as `postgres`, which must reach it
    (tests/cluster/postgres.py)."""
    base = Path(tempfile.mkdtemp(prefix="vmsh-pg-bench-", dir="/tmp"))
    base.chmod(0o755)
    return base


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, password=PASSWORD, autocommit=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def wait_ready(rig: ClusterRig, names: list[str]) -> None:
    for name in names:
        wait_until(lambda n=name: rig.http(n, "/readyz")[0] == 200, READY_TIMEOUT, f"replica {name} ready")


def migrated(rig: ClusterRig) -> None:
    done = rig.migrate()
    if done.returncode != 0:
        raise RuntimeError(f"store migrate failed: {done.stderr.strip()[-300:]}")


# --------------------------------------------------------------------------- 1. throughput


def set_paused(conn: psycopg.Connection[Any], paused: bool) -> None:
    """The cluster-wide flag and the NOTIFY, as core/cluster.py's `_notify` sends them."""
    conn.execute(
        "INSERT INTO cluster (key, value) VALUES ('paused', %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (Jsonb(paused),),
    )
    op = "pause" if paused else "resume"
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, f'{{"op": "{op}", "from": "bench"}}'))


def throughput_run(server: PostgresServer, tsa: OpenSSLTSA, work: Path, replicas: int) -> dict[str, Any]:
    url = server.create_database(f"bench_throughput_{replicas}_{os.getpid()}")
    namespaces = [f"ns{n:04d}" for n in range(THROUGHPUT_NAMESPACES)]
    rig = ClusterRig(work, url, tsa, namespaces, every="1h", lease=THROUGHPUT_LEASE)
    names = [chr(ord("a") + n) for n in range(replicas)]
    try:
        for ns in namespaces:
            rig.publish(ns)
        migrated(rig)
        with connect(url) as conn:
            set_paused(conn, True)
            for name in names:
                rig.start(name)
            wait_ready(rig, names)
            early = conn.execute("SELECT count(*) FROM receipts").fetchone()[0]
            requests_before = len(tsa.requests)
            started = time.monotonic()
            set_paused(conn, False)
            while True:
                count = conn.execute("SELECT count(*) FROM receipts").fetchone()[0]
                if count >= THROUGHPUT_NAMESPACES:
                    break
                if time.monotonic() - started > THROUGHPUT_TIMEOUT:
                    raise RuntimeError(f"{replicas} replica(s): {count} receipts after {THROUGHPUT_TIMEOUT:g} s")
                time.sleep(0.05)
            seconds = time.monotonic() - started
            requests = len(tsa.requests) - requests_before
            split = dict(conn.execute("SELECT written_by, count(*) FROM receipts GROUP BY written_by").fetchall())
            trees = conn.execute("SELECT count(DISTINCT anchored_root) FROM receipts").fetchone()[0]
        return {"seconds": seconds, "requests": requests, "trees": trees, "split": sorted(split.values(), reverse=True),
                "early": early}
    finally:
        rig.stop_all()
        server.drop_database(f"bench_throughput_{replicas}_{os.getpid()}")


def throughput(server: PostgresServer, tsa: OpenSSLTSA, tmp: Path) -> list[Row]:
    rows: list[Row] = []
    for replicas in THROUGHPUT_REPLICAS:
        work = tmp / f"throughput-{replicas}"
        work.mkdir()
        got = throughput_run(server, tsa, work, replicas)
        rate = THROUGHPUT_NAMESPACES / got["seconds"]
        split = "/".join(str(n) for n in got["split"])
        note = (
            f"cadence 1h, lease {THROUGHPUT_LEASE:g} s, tick 0.5 s; "
            f"{got['seconds']:.2f} s from all /readyz 200 + resume to 1,000 receipt rows; "
            f"{got['requests']} TSA requests, {got['trees']} trees; receipts per replica {split}"
        )
        if got["early"]:
            note += f"; {got['early']} receipts before the resume"
        rows.append((f"cluster: anchors/s, {replicas} replica(s), 1,000 ns", f"{rate:.0f}/s", note))
    return rows


# --------------------------------------------------------------------------- 2. failover


class Republisher:
    """Every namespace gets a new root every `period` s (spread over the period)."""

    def __init__(self, rig: ClusterRig, period: float) -> None:
        self.rig = rig
        self.gap = period / len(rig.namespaces)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for ns in self.rig.namespaces:
                if self.stop.wait(self.gap):
                    return
                self.rig.publish(ns)

    def __enter__(self) -> Republisher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def replica_ids(conn: psycopg.Connection[Any], rig: ClusterRig) -> dict[str, str]:
    """Replica name -> its id in the registry (by pid; a restarted replica has a new id)."""
    by_pid = dict(conn.execute("SELECT pid, id FROM replicas").fetchall())
    return {name: by_pid[proc.pid] for name, proc in rig.procs.items() if proc.pid in by_pid}


class Failover(NamedTuple):
    from_heartbeat: float  # s, from the victim's last heartbeat to the last held job re-anchored
    from_kill: float  # s, from the kill to the same
    jobs: int  # jobs whose live lease it held at the kill
    intents: int  # intents it left open (resolved by the survivor once its heartbeat is stale)


def one_failover(conn: psycopg.Connection[Any], rig: ClusterRig, victim: str) -> Failover | None:
    """Kill `victim` while both replicas hold leases; wait until every job it held has a new
    receipt by the survivor. None when its leases were all released between the look and
    the kill (try again)."""
    ids = wait_until(lambda: (lambda got: got if len(got) == 2 else None)(replica_ids(conn, rig)), 30, "both registered")
    victim_id = ids[victim]

    def both_hold() -> tuple[Any, Any] | None:
        row = conn.execute(
            "SELECT (SELECT count(DISTINCT lease_owner) FROM jobs WHERE lease_owner = ANY(%(ids)s) "
            "AND lease_until > now()), (SELECT heartbeat_at FROM replicas WHERE id = %(victim)s), now()",
            {"ids": list(ids.values()), "victim": victim_id},
        ).fetchone()
        return (row[1], row[2]) if row[0] == 2 else None

    heartbeat_at, killed_at = wait_until(both_hold, 30, "both replicas holding leases", every=0.005)
    rig.kill(victim)
    held = [job for (job,) in conn.execute(
        "SELECT job FROM jobs WHERE lease_owner = %s AND lease_until > %s", (victim_id, killed_at)
    )]
    if not held:
        return None
    intents = conn.execute("SELECT count(*) FROM intents WHERE owner = %s", (victim_id,)).fetchone()[0]
    jobs = {tuple(JobKey.parse(job)) for job in held}
    namespaces = sorted({ns for ns, _ in jobs})
    query = "SELECT namespace, cadence, name, written_by FROM receipts WHERE namespace = ANY(%s)"
    before = {(ns, cadence, name) for ns, cadence, name, _ in conn.execute(query, (namespaces,))}
    deadline = time.monotonic() + FAILOVER_TIMEOUT
    while True:
        now = conn.execute("SELECT now()").fetchone()[0]
        taken = {
            (ns, cadence) for ns, cadence, name, by in conn.execute(query, (namespaces,))
            if by != victim_id and (ns, cadence, name) not in before
        }
        if jobs <= taken:
            return Failover((now - heartbeat_at).total_seconds(), (now - killed_at).total_seconds(), len(jobs), intents)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(jobs - taken)} of {len(jobs)} held jobs have no new receipt {FAILOVER_TIMEOUT:g} s after the kill")
        time.sleep(0.1)


def failover(server: PostgresServer, tsa: OpenSSLTSA, tmp: Path) -> list[Row]:
    name = f"bench_failover_{os.getpid()}"
    url = server.create_database(name)
    work = tmp / "failover"
    work.mkdir()
    namespaces = [f"ns{n:03d}" for n in range(FAILOVER_NAMESPACES)]
    rig = ClusterRig(work, url, tsa, namespaces, every=FAILOVER_EVERY, lease=FAILOVER_LEASE)
    rng = random.Random(17)
    runs: list[Failover] = []
    retries = 0
    try:
        for ns in namespaces:
            rig.publish(ns)
        migrated(rig)
        for replica in ("a", "b"):
            rig.start(replica)
        wait_ready(rig, ["a", "b"])
        with connect(url) as conn, Republisher(rig, period=2.0):
            while len(runs) < FAILOVER_KILLS:
                victim = rng.choice(["a", "b"])
                got = one_failover(conn, rig, victim)
                if got is None:
                    retries += 1
                else:
                    runs.append(got)
                rig.start(victim)
                wait_ready(rig, [victim])
    finally:
        rig.stop_all()
        server.drop_database(name)
    times = [r.from_heartbeat for r in runs]
    target = 2 * FAILOVER_LEASE
    verdict = "met" if max(times) < target else "NOT met"
    each = ", ".join(
        f"{r.from_heartbeat:.1f} ({r.from_kill:.1f} from the kill; {r.jobs} jobs, {r.intents} open intents)" for r in runs
    )
    note = (
        f"kill -9 of a random one of 2 replicas while both held leases, {FAILOVER_KILLS} times; "
        f"{FAILOVER_NAMESPACES} ns every {FAILOVER_EVERY}, lease {FAILOVER_LEASE:g} s, new roots every ~2 s; "
        "from the victim's last heartbeat to every job it held re-anchored by the survivor"
        + (f"; {retries} kill(s) found no lease left, not counted" if retries else "")
    )
    return [
        ("cluster: failover, median", f"{statistics.median(times):.1f} s", note),
        ("cluster: failover, max", f"{max(times):.1f} s", f"target < 2 x lease = {target:g} s: {verdict}; each (s): {each}"),
    ]


# --------------------------------------------------------------------------- 3. claim latency


def leases(got: dict[JobKey, JobState]) -> list[tuple[JobKey, int]]:
    """(job, fence) of each lease a claim got: what `release` takes."""
    return [(key, state.row.fence) for key, state in got.items() if state.row is not None and state.row.fence is not None]


def claim_latency(server: PostgresServer) -> list[Row]:
    name = f"bench_claim_{os.getpid()}"
    url = server.create_database(name)
    keys = {JobKey(f"bench:{n}", "fast"): JobState() for n in range(CLAIM_JOBS)}
    db_a = Database(url, password=PASSWORD)
    db_b = Database(url, password=PASSWORD)
    try:
        db_a.migrate()
        a, b = PgStateStore(db_a, "bench-a"), PgStateStore(db_b, "bench-b")
        started = time.perf_counter()
        got = a.claim(keys, CLAIM_LEASE)  # creates the 10,000 rows
        first = time.perf_counter() - started
        a.release(leases(got))
        alone: list[float] = []
        for _ in range(CLAIM_ROUNDS):
            started = time.perf_counter()
            got = a.claim(keys, CLAIM_LEASE)
            alone.append(time.perf_counter() - started)
            if len(got) != CLAIM_JOBS:
                raise RuntimeError(f"one claimer got {len(got)} of {CLAIM_JOBS}")
            a.release(leases(got))

        most: list[float] = []  # the claim that got the larger part, per round
        rest: list[float] = []
        splits: list[str] = []
        for _ in range(CLAIM_ROUNDS):
            gate = threading.Barrier(2)
            result: dict[str, tuple[float, dict[JobKey, JobState]]] = {}

            def claimer(store: PgStateStore, gate: threading.Barrier = gate, result: dict = result) -> None:
                gate.wait()
                started = time.perf_counter()
                got = store.claim(keys, CLAIM_LEASE)
                result[store.replica] = (time.perf_counter() - started, got)

            threads = [threading.Thread(target=claimer, args=(store,)) for store in (a, b)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            (ta, got_a), (tb, got_b) = result["bench-a"], result["bench-b"]
            if got_a.keys() & got_b.keys():
                raise RuntimeError(f"{len(got_a.keys() & got_b.keys())} jobs claimed by both")
            big, small = (ta, tb) if len(got_a) >= len(got_b) else (tb, ta)
            most.append(big)
            rest.append(small)
            splits.append(f"{len(got_a)}/{len(got_b)}")
            a.release(leases(got_a))
            b.release(leases(got_b))
        unclaimed = {s for s in splits if sum(map(int, s.split("/"))) != CLAIM_JOBS}
    finally:
        db_a.close()
        db_b.close()
        server.drop_database(name)
    ms = 1000
    setting = f"{CLAIM_ROUNDS} claims of {CLAIM_JOBS:,} JobKeys, lease {CLAIM_LEASE:g} s, then release"
    return [
        ("cluster: claim 10,000 jobs, rows created", f"{first * ms:.0f} ms", "the first claim (INSERT ... ON CONFLICT of 10,000 rows)"),
        ("cluster: claim 10,000 jobs, median", f"{statistics.median(alone) * ms:.0f} ms", f"one store ('bench-a'); {setting}"),
        ("cluster: claim 10,000 jobs, p95", f"{percentile(alone, 95) * ms:.0f} ms", "same runs"),
        ("cluster: claim 10,000, 2 at once, larger part", f"{statistics.median(most) * ms:.0f} ms",
         f"median (p95 {percentile(most, 95) * ms:.0f} ms) of the claim that got more; 'bench-a' and 'bench-b' "
         f"(two pools) from two threads released together, {CLAIM_ROUNDS} rounds"),
        ("cluster: claim 10,000, 2 at once, smaller part", f"{statistics.median(rest) * ms:.0f} ms",
         f"median (p95 {percentile(rest, 95) * ms:.0f} ms); split a/b per round (SKIP LOCKED, disjoint): "
         + " ".join(splits)
         + ("" if not unclaimed else f"; rounds leaving jobs unclaimed: {', '.join(sorted(unclaimed))}")),
    ]


# --------------------------------------------------------------------------- all


def run() -> list[Row]:
    if find_bin_dir() is None:
        return [("cluster: skipped", "-", "no PostgreSQL server binaries (initdb, pg_ctl, postgres): run scripts/ensure-tools.sh")]
    tmp = Path(tempfile.mkdtemp(prefix="vmsh-cluster-bench-"))
    server = PostgresServer(server_folder())
    tsa: OpenSSLTSA | None = None
    try:
        server.start()
        tsa = OpenSSLTSA(tmp / "tsa")
        rows: list[Row] = [("cluster: machine", cores(), f"for every row below: {server.version}, fsync on; replicas, TSA and server on this host")]
        rows += claim_latency(server)
        rows += throughput(server, tsa, tmp)
        rows += failover(server, tsa, tmp)
        return rows
    finally:
        if tsa is not None:
            tsa.http.stop()
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
