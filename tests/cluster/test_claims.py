"""Two schedulers (engines in one process, a FakeClock each) on one real PostgreSQL store:
each job is claimed under one replica's lease and anchored once, whatever the interleaving.
Process-level tests (kill -9, PostgreSQL stopped) are in test_cluster_processes.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg

from core.jobs import JobKey, JobState

from .engines import NAMESPACES, Pair, publish, receipts_by_job, root
from .postgres import PASSWORD


async def test_two_replicas_anchor_each_job_once_per_root(tmp_path: Path, migrated: str, pair: Pair) -> None:
    clock, a, b = pair.clock, pair.a, pair.b
    publish(tmp_path, 1)
    await asyncio.gather(a.engine.run_once(), b.engine.run_once())
    got = receipts_by_job(migrated)
    assert sorted(got) == [(ns, "fast") for ns in NAMESPACES]
    assert all(roots == [root(ns, 1)] for (ns, _), roots in got.items()), "a job anchored twice"
    mine = {r: sum(1 for k in r.engine.jobs if r.engine.view(k).state.last_root) for r in (a, b)}
    assert sum(mine.values()) >= len(NAMESPACES)

    # A period later, new roots: again each once, also when one replica comes after the
    # other has finished (its own view is stale: the store's state says "anchored");
    # and a replica that did not anchor a job then knows its new state from the store.
    clock.advance(61)
    publish(tmp_path, 2)
    await a.engine.run_once()
    await b.engine.run_once()
    got = receipts_by_job(migrated)
    assert all(sorted(roots) == sorted([root(ns, 1), root(ns, 2)]) for (ns, _), roots in got.items())
    await a.engine.refresh_from_store()
    await b.engine.refresh_from_store()
    for replica in (a, b):
        for ns in NAMESPACES:
            assert replica.engine.view(JobKey(ns, "fast")).state.last_root == root(ns, 2)

    # Nothing new: neither anchors again (the store says the root is anchored).
    clock.advance(61)
    await asyncio.gather(a.engine.run_once(), b.engine.run_once())
    assert receipts_by_job(migrated) == got


async def test_a_job_leased_by_another_replica_is_left_to_it(tmp_path: Path, migrated: str, pair: Pair) -> None:
    a, b = pair.a, pair.b
    publish(tmp_path, 1)
    held = [JobKey(ns, "fast") for ns in NAMESPACES[:10]]
    got = await asyncio.to_thread(a.store.claims.claim, {k: JobState() for k in held}, 30.0)
    assert sorted(got) == sorted(held)
    await b.engine.run_once()
    anchored = {ns for ns, _ in receipts_by_job(migrated)}
    assert anchored == set(NAMESPACES[10:])  # b anchored everything but a's
    assert not any(b.engine.view(k).state.last_root for k in held)


async def test_state_written_by_a_stale_replica_never_overwrites_a_newer_one(tmp_path: Path, migrated: str, pair: Pair) -> None:
    a, b = pair.a, pair.b
    publish(tmp_path, 1, NAMESPACES)
    await a.engine.run_once()  # a anchors all
    key = JobKey(NAMESPACES[0], "fast")
    assert b.engine.view(key).state.last_root is None  # b has not looked yet
    b.engine.requeue(key, "test")  # a local change to a job b has a stale view of
    await b.engine.settle()
    await b.engine.stop(1.0)
    with psycopg.connect(migrated, password=PASSWORD) as conn:
        row = conn.execute("SELECT state FROM jobs WHERE job = %s", (str(key),)).fetchone()
    assert row is not None and row[0]["last_root"] == root(NAMESPACES[0], 1)


async def test_the_dashboards_verify_and_listing_read_receipts_from_the_store(tmp_path: Path, migrated: str, pair: Pair) -> None:
    """What `v` on a receipt and the Receipts pane do (core/control.py), in cluster mode:
    receipts are rows named postgresql:receipts/..., read through the store."""
    from core.control import VerifyOutcome
    from core.runtime_control import RuntimeControl

    publish(tmp_path, 1, NAMESPACES[:3])
    a = pair.a
    await a.engine.run_once()
    control = RuntimeControl(a.runtime)
    listing = control.recent_receipts(10)
    assert len(listing) == 3 and all(str(path).startswith("postgresql:") for path, _ in listing)
    path, receipt = listing[0]
    result = await control.verify(str(path))
    assert result.outcome is VerifyOutcome.OK, result.message
    assert result.job == f"{receipt.namespace}/fast"  # type: ignore[union-attr]
    with psycopg.connect(migrated, password=PASSWORD) as conn:  # tamper with the row
        conn.execute("UPDATE receipts SET doc = jsonb_set(doc, '{batch,root}', to_jsonb(%s::text))",
                     ("sha256:" + "00" * 32,))
    assert (await control.verify(str(path))).outcome is VerifyOutcome.FAIL


async def test_when_many_jobs_are_due_at_once_each_live_replica_takes_its_share(tmp_path: Path, migrated: str, pair: Pair) -> None:
    clock, a, b = pair.clock, pair.a, pair.b
    publish(tmp_path, 1)

    def registry(*names: str) -> None:  # the replica rows core/cluster.py's heartbeat keeps
        with psycopg.connect(migrated, password=PASSWORD) as conn:
            conn.execute("DELETE FROM replicas")
            for name in names:
                conn.execute(
                    "INSERT INTO replicas (id, host, pid, version, config_hash, started_at, heartbeat_at) "
                    "VALUES (%s, 'h', 1, 'v', 'c', now(), now())", (name,),
                )

    registry("a", "b")
    await a.engine.run_once()
    with psycopg.connect(migrated, password=PASSWORD) as conn:
        by_a = conn.execute("SELECT count(*) FROM receipts WHERE written_by = 'a'").fetchone()
    assert by_a == (len(NAMESPACES) // 2,), "a left the other half to b"
    await b.engine.run_once()
    assert len(receipts_by_job(migrated)) == len(NAMESPACES)
    # Alone, a replica takes everything it finds due.
    registry("a")
    clock.advance(61)
    publish(tmp_path, 2)
    await a.engine.run_once()
    assert all(len(roots) == 2 for roots in receipts_by_job(migrated).values())


async def test_receipts_state_lease_release_and_intent_removal_commit_together(tmp_path: Path, migrated: str, pair: Pair) -> None:
    """A failure inside the commit (here a trigger refusing the intent's removal, standing in
    for a database that goes away mid-transaction) leaves no receipt, the state as it was,
    the lease held and the intent with its attestation: nothing another replica could take
    for done. Once the commit works, the kept attestation becomes the receipts."""
    clock, a = pair.clock, pair.a
    jobs = NAMESPACES[:4]
    publish(tmp_path, 1, jobs)

    def sql(statement: str) -> list[tuple]:
        with psycopg.connect(migrated, password=PASSWORD) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    sql("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'refused for the test'; END $$")
    sql("CREATE TRIGGER refuse BEFORE DELETE ON intents FOR EACH ROW EXECUTE FUNCTION refuse()")
    await a.engine.run_once()
    assert sql("SELECT count(*) FROM receipts") == [(0,)]
    rows = sql("SELECT job, state->>'last_root', lease_owner FROM jobs WHERE state->>'last_root' IS NOT NULL "
               "OR lease_owner IS NOT NULL ORDER BY job")
    assert [(job, owner) for job, _, owner in rows] == [(f"{ns}/fast", "a") for ns in jobs]
    assert all(last_root is None for _, last_root, _ in rows)
    intents = sql("SELECT doc->'attestation' IS NOT NULL AND doc->'attestation' <> 'null' FROM intents")
    assert intents == [(True,)]

    sql("DROP TRIGGER refuse ON intents")
    clock.advance(120)  # past the storage backoff: the held jobs are due again
    await a.engine.run_once()
    assert sorted(receipts_by_job(migrated)) == [(ns, "fast") for ns in jobs]
    assert sql("SELECT count(*) FROM intents") == [(0,)]
    assert sql("SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL") == [(0,)]
    assert sql("SELECT count(DISTINCT anchored_root) FROM receipts") == [(1,)]  # the kept attestation


async def test_an_anchor_taken_over_while_its_replica_was_unresponsive_gets_one_receipt(
    tmp_path: Path, migrated: str, pair: Pair
) -> None:
    """Replica a goes a lease without a heartbeat mid-anchor (a stall, not a crash), so its
    intent counts as a gone replica's and b takes it over (PgJournal.orphans), as it must for
    a dead replica. When a wakes up with its attestation it must neither commit nor write its
    token into the intent b now holds (b would commit it later, while its jobs may have been
    anchored since): a counts it discarded, b finds nothing landed and anchors the jobs
    itself. One receipt per job and root, b's."""
    a, b = pair.a, pair.b
    jobs = NAMESPACES[:3]
    publish(tmp_path, 1, jobs)
    backend = a.runtime.backends("local:dev")
    anchor = backend.anchor

    async def stalled_anchor(*args, **kwargs):
        attestation = await anchor(*args, **kwargs)
        with psycopg.connect(migrated, password=PASSWORD) as conn:  # meanwhile: a lease, no heartbeat
            conn.execute("UPDATE intents SET owner = 'a-as-seen-gone'")  # (no registry row: not alive)
            conn.execute("UPDATE jobs SET lease_until = now() - interval '1 second'")
        return attestation

    backend.anchor = stalled_anchor
    from core.events import TokenDiscarded

    discarded: list[TokenDiscarded] = []
    a.runtime.bus.subscribe(lambda e: discarded.append(e) if isinstance(e, TokenDiscarded) else None)
    await a.engine.run_once()
    assert receipts_by_job(migrated) == {}, "the replica that lost its intent committed anyway"
    assert [(d.reason, d.jobs) for d in discarded] == [("taken_over", len(jobs))], "a paid token dropped uncounted"
    assert await b.engine.adopt_orphans() == 1
    with psycopg.connect(migrated, password=PASSWORD) as conn:
        assert conn.execute("SELECT count(*) FROM intents").fetchone() == (0,)
    await b.engine.run_once()
    got = receipts_by_job(migrated)
    assert sorted(got) == [(ns, "fast") for ns in jobs] and all(len(r) == 1 for r in got.values())
    with psycopg.connect(migrated, password=PASSWORD) as conn:
        assert conn.execute("SELECT DISTINCT written_by FROM receipts").fetchall() == [("b",)]


async def test_a_dashboard_on_one_replica_lists_the_receipts_another_wrote(
    tmp_path: Path, migrated: str, pair: Pair
) -> None:
    """The in-process dashboard's Receipts pane: at each heartbeat (ReplicasSeen) it takes
    the store's newest receipts, so what other replicas anchored shows up too."""
    from core.events import ReplicasSeen
    from tui.app import VaultMeshApp
    from tui.host import InProcessHost
    from tui.widgets import DiffTable

    publish(tmp_path, 1, NAMESPACES[:3])
    a, b = pair.a, pair.b
    app = VaultMeshApp(InProcessHost(b.runtime, start_engine=False, grace=1.0), env={"COLORTERM": "truecolor"})
    async with app.run_test(size=(120, 40)) as pilot:
        await a.engine.run_once()  # a anchors; b's dashboard hears nothing of it
        app.flush_now()
        await pilot.pause()
        table = app.dashboard.body("receipts")
        assert isinstance(table, DiffTable) and table.shown_keys == []
        b.runtime.bus.publish(ReplicasSeen(at=pair.clock.now(), alive=2, store_ok=True))
        app.flush_now()
        await pilot.pause()
        shown = table.shown_keys
        assert len(shown) == 3 and all(str(key).startswith("postgresql:") for key in shown)


def test_a_commit_of_a_thousand_receipts_is_a_few_statements_and_keeps_the_fencing(migrated: str, monkeypatch) -> None:
    """10,000 receipts a second needs set-based statements: a commit's round trips do not
    grow with its receipts. A job claimed by another replica since still gets nothing."""
    from core.store.postgres.database import Database
    from core.store.postgres.journal import PgJournal
    from core.store.postgres.state import PgStateStore
    from tests.unit.test_receipts import receipts_for

    db = Database(migrated, password=PASSWORD)
    try:
        mine, theirs = PgStateStore(db, "replica-a"), PgStateStore(db, "replica-b")
        receipts = receipts_for(1000)
        keys = [JobKey(r.namespace, r.cadence) for r in receipts]
        granted = mine.claim({k: JobState() for k in keys}, 60.0)
        lost = keys[7]
        with db.tx() as conn:  # replica-b claims one job after replica-a's lease ran out
            conn.execute("UPDATE jobs SET lease_until = clock_timestamp() WHERE job = %s", (str(lost),))
        assert lost in theirs.claim({lost: JobState()}, 60.0)
        entries = [{"job": str(k), "batch": {"id": "1", "root": r.batch.root}, "leaf_index": r.leaf_index}
                   for k, r in zip(keys, receipts, strict=True)]
        intent = PgJournal(db, "replica-a", liveness=60.0).open("local:dev", entries, "00" * 32, 0.0)
        statements = 0
        real = psycopg.Connection.execute

        def counted(self, *args, **kwargs):
            nonlocal statements
            statements += 1
            return real(self, *args, **kwargs)

        monkeypatch.setattr(psycopg.Connection, "execute", counted)
        done = mine.commit(receipts, [JobState().to_dict()] * len(keys), [granted[k].row for k in keys], intent.id)
        monkeypatch.undo()

        assert statements <= 10
        assert done.paths[7] is None
        assert all(isinstance(p, Path) for n, p in enumerate(done.paths) if n != 7)
        with db.tx() as conn:
            count = conn.execute("SELECT count(*) FROM receipts").fetchone()
            held = conn.execute("SELECT lease_owner FROM jobs WHERE job = %s", (str(lost),)).fetchone()
            released = conn.execute("SELECT count(*) FROM jobs WHERE lease_owner IS NULL").fetchone()
        assert count is not None and count[0] == 999
        assert held == ("replica-b",)
        assert released is not None and released[0] == 999
    finally:
        db.close()
