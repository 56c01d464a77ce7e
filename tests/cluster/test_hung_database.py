"""A hung PostgreSQL (every server process SIGSTOPped: a stalled VM, a frozen disk) is seen.

Nothing fails by itself then: the kernel completes TCP handshakes on the server's port and
buffers what clients send, and the server cannot enforce its own statement_timeout. Every
call has a client-side deadline (core/store/postgres/deadline.py), so the store's calls fail with
StoreUnavailable, the heartbeat with them: /readyz 503 and /health degraded within two
leases, no claim and so no TSA request while it hangs, and everything back once it thaws.

`PostgresServer.freeze()` stops the session's shared server; every test thaws it in a
`finally` (a frozen server could not even be stopped).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from core.store.postgres.database import WATCHDOG_GRACE, Database, StoreUnavailable
from tests.integration.tsa_servers import OpenSSLTSA

from .cluster_rig import ClusterRig, wait_until
from .postgres import PASSWORD, PostgresServer
from .test_cluster_processes import start_replicas

DEADLINE = 1.0  # the store's statement deadline in the Database tests
CONNECT = 2.0  # its connect timeout (psycopg's least)
SLACK = 1.0  # scheduling, the pool's own threads


@pytest.fixture
def tsa(tmp_path: Path):
    server = OpenSSLTSA(tmp_path / "tsa")
    yield server
    server.http.stop()


@pytest.fixture
def db(pg_url: str):
    database = Database(pg_url, password=PASSWORD, statement_seconds=DEADLINE, connect_timeout=CONNECT)
    with database.tx() as conn:  # the pool holds a connection made before the freeze
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO t VALUES (1, 0)")
    yield database
    database.close()


def timed(fn) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 (what it raised is the result)
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def select_one(db: Database, *, quick: bool = False) -> None:
    with db.tx(quick=quick) as conn:
        conn.execute("SELECT 1")


def test_the_server_enforces_the_deadline_when_it_can(db: Database) -> None:
    with db.tx() as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1s",)
        assert conn.execute("SHOW lock_timeout").fetchone() == ("900ms",)
    # A row lock held by another session: the wait ends at lock_timeout, the connection stays.
    with psycopg.connect(db.conninfo, autocommit=False) as holder:
        holder.execute("UPDATE t SET v = 1 WHERE id = 1")

        def update() -> None:
            with db.tx() as conn:
                conn.execute("UPDATE t SET v = 2 WHERE id = 1")

        error, took = timed(update)
        holder.rollback()
    assert isinstance(error, StoreUnavailable) and "lock timeout" in str(error), error
    assert 0.9 * DEADLINE - 0.1 < took < DEADLINE + SLACK
    select_one(db)
    # A connection of its own waits for a session lock a peer holds: a longer deadline.
    with db.connect() as own:
        assert own.execute("SHOW lock_timeout").fetchone() == ("54s",)


def test_a_hung_server_fails_every_call_within_its_deadline(db: Database, postgres_server: PostgresServer) -> None:
    own = db.connect(deadline=DEADLINE)  # a connection of its own (a session lock's), made before the freeze
    try:
        postgres_server.freeze()
        # A pooled connection: the pool's check of it gets no answer; cut at the deadline.
        error, took = timed(lambda: select_one(db))
        assert isinstance(error, StoreUnavailable), error
        assert "no answer within 1.5 s" in str(error)
        assert took < DEADLINE + WATCHDOG_GRACE + SLACK, took
        # The pool dropped it; a new connection hangs in the handshake: connect_timeout.
        error, took = timed(lambda: select_one(db))
        assert isinstance(error, StoreUnavailable), error
        assert took < CONNECT + SLACK, took
        # A read on the event loop waits at most QUICK_SECONDS for a connection.
        error, took = timed(lambda: select_one(db, quick=True))
        assert isinstance(error, StoreUnavailable) and took < 0.5 + SLACK, (error, took)
        # A hung connect of its own.
        error, took = timed(db.connect)
        assert isinstance(error, StoreUnavailable) and "timeout" in str(error), error
        assert took < CONNECT + SLACK, took
        # A statement on a connection of its own.
        error, took = timed(lambda: own.execute("SELECT 1"))
        assert isinstance(error, psycopg.OperationalError) and "no answer within" in str(error), error
        assert took < DEADLINE + WATCHDOG_GRACE + SLACK, took
        # Several threads at once (the writer, the heartbeat, a notify): each bounded alike.
        results: list[tuple[BaseException | None, float]] = []
        threads = [threading.Thread(target=lambda: results.append(timed(lambda: select_one(db)))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(results) == 4 and all(isinstance(e, StoreUnavailable) for e, _ in results), results
        assert max(took for _, took in results) < CONNECT + DEADLINE + WATCHDOG_GRACE + SLACK, results
    finally:
        postgres_server.thaw()
        own.close()
    # Thawed: the next calls work, on new connections.
    wait_until(lambda: timed(lambda: select_one(db))[0] is None, 10, "the store answering again")


def test_a_hung_database_is_seen_within_two_leases_and_nothing_is_anchored_until_it_thaws(
    tmp_path, pg_url, tsa, postgres_server: PostgresServer
):
    lease = 3.0
    namespaces = [f"ns{n:02d}" for n in range(20)]
    rig = ClusterRig(tmp_path, pg_url, tsa, namespaces, every="2s", lease=lease)
    for ns in namespaces:
        rig.publish(ns)
    names = ["a", "b"]
    seen: dict[str, dict[str, float]] = {n: {} for n in names}  # replica -> check -> s after the freeze
    bodies: dict[str, object] = {}
    try:
        start_replicas(rig, names)
        wait_until(lambda: len(rig.anchored_latest()) == len(namespaces), 30, "first anchors")
        for ns in namespaces:
            rig.publish(ns)  # due while it hangs
        postgres_server.freeze()
        frozen_at = time.monotonic()
        try:
            while any(len(checks) < 2 for checks in seen.values()):
                now = time.monotonic() - frozen_at
                if now > 4 * lease:
                    break
                for name in names:
                    if "readyz" not in seen[name] and rig.http(name, "/readyz")[0] == 503:
                        seen[name]["readyz"] = time.monotonic() - frozen_at
                    if "health" not in seen[name]:
                        code, body = rig.http(name, "/health")
                        # Degraded because the store does not answer (a job backing off after a
                        # failed claim would make it degraded too, earlier).
                        if (code == 503 and isinstance(body, dict) and body.get("status") == "degraded"
                                and body["store"]["ok"] is False):
                            seen[name]["health"] = time.monotonic() - frozen_at
                            bodies[name] = body
                time.sleep(0.05)
            print(f"after the freeze, s: {seen}")  # the figures, with -s
            for name in names:
                assert set(seen[name]) == {"readyz", "health"}, f"{name} still ready or healthy: {seen}"
                assert max(seen[name].values()) <= 2 * lease, f"{name} saw it after more than 2 leases: {seen}"
            for name in names:
                store = bodies[name]["store"]  # type: ignore[index]
                assert store["ok"] is False and store["kind"] == "postgresql" and store["error"], store
            flipped = len(tsa.requests)  # anchors in flight at the freeze have been sent by now
            time.sleep(max(0.0, 15 - (time.monotonic() - frozen_at)))  # five leases frozen in all
            assert len(tsa.requests) == flipped, "a replica anchored while the store hung"
            assert all(rig.procs[n].poll() is None for n in names), "a replica died with its store"
            assert all(rig.http(n, "/readyz")[0] == 503 for n in names), "ready while the store hangs"
            assert all(rig.http(n, "/livez")[0] == 200 for n in names), "the engine loop stalled"
        finally:
            postgres_server.thaw()
        thawed_at = time.monotonic()
        try:
            wait_until(lambda: all(rig.http(n, "/readyz")[0] == 200 for n in names), 30, "ready again")
        except AssertionError:
            raise AssertionError(f"{[rig.http(n, '/readyz') for n in names]}\n{rig.logs()[-4000:]}") from None
        print(f"ready again {time.monotonic() - thawed_at:.2f} s after the thaw")
        wait_until(lambda: len(rig.anchored_latest()) == len(namespaces), 40, "the roots of the outage anchored")
    finally:
        postgres_server.thaw()
        rig.stop_all()
    assert rig.doubles() == [], f"a root anchored twice for one job:\n{rig.explain_doubles()}"
    logs = rig.logs()
    assert "store unreachable" in logs and "store reachable again" in logs
    assert "not claiming jobs" in logs and "claiming jobs again" in logs
    assert PASSWORD not in logs
