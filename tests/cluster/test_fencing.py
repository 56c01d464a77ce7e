"""Fenced leases on a real PostgreSQL: each double that froze replicas, hung claims and
lost leases produced, reproduced step by step (the same calls in the same order as the
engine made them), and refused.

- A save built before a claim, written after it, carried the version the claim refreshed,
  passed the version check and put back an older `last_root`: the other replica then
  anchored that root again.
- The same stale save released every lease of its replica not in its (old) holding list,
  including a lease the claim had just taken: another replica could claim the job in flight.
- A claim whose transaction waited got a lease computed from the transaction's start
  (`now()`), already expired when granted.
- A commit whose lease had been claimed by another replica still wrote its receipts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from core.events import LogRecord, TokenDiscarded
from core.jobs import JobKey, JobState, Row
from core.observe.metrics import Metrics
from core.store.postgres.database import Database
from core.store.postgres.state import PgStateStore

from .engines import Pair, publish, receipts_by_job, root
from .postgres import PASSWORD

J = JobKey("ns000", "fast")


def stores(url: str) -> tuple[Database, PgStateStore, PgStateStore]:
    db = Database(url, password=PASSWORD)
    return db, PgStateStore(db, "a", liveness=10), PgStateStore(db, "b", liveness=10)


def row_of(url: str, job: JobKey) -> tuple:
    with psycopg.connect(url, password=PASSWORD) as conn:
        got = conn.execute(
            "SELECT state->>'last_root', lease_owner, fence, lease_until > clock_timestamp() FROM jobs WHERE job = %s",
            (str(job),),
        ).fetchone()
    assert got is not None
    return tuple(got)


def anchored(state: JobState, r: str) -> dict:
    return {**state.to_dict(), "last_root": r, "last_anchored_at": 1.0}


def test_a_save_built_before_a_claim_never_overwrites_the_state_the_claim_saw(migrated: str) -> None:
    db, a, b = stores(migrated)
    try:
        # a and b both know J at root 1 (a anchored it).
        first = a.claim({J: JobState()}, 10)[J]
        a.write(a.snapshot({J: JobState(last_root=root("ns000", 1), row=first.row)}))
        seen_by_a = a.load()[J]
        # a builds a save (a local change to J: its view, root 1) ... and freezes.
        seen_by_a.current_at = 5.0
        stale = a.snapshot({J: seen_by_a})
        # Meanwhile b claims J and anchors root 2 (its commit stands for any fenced write).
        theirs = b.claim({J: JobState()}, 10)[J]
        assert b.write(b.snapshot({J: JobState(last_root=root("ns000", 2), row=theirs.row)})).rows
        # a wakes: its next pass claims J (which refreshes what a knows of the row), finds
        # root 2 anchored and lets J go ...
        again = a.claim({J: JobState()}, 10)[J]
        assert again.last_root == root("ns000", 2) and again.row is not None and again.row.fence is not None
        assert a.release([(J, again.row.fence)]) == [J]
        # ... and only then its old save reaches the database.
        result = a.write(stale)
        assert row_of(migrated, J)[0] == root("ns000", 2), "an older state overwrote a newer one"
        assert J in result.refused and result.refused[J].last_root == root("ns000", 2)
        assert J not in result.rows
    finally:
        db.close()


def test_a_stale_save_never_releases_a_lease_taken_after_it_was_built(migrated: str) -> None:
    db, a, b = stores(migrated)
    try:
        a.write(a.snapshot({J: JobState(last_root=root("ns000", 1))}))
        known = a.load()[J]
        stale = a.snapshot({J: known}, holding=frozenset())  # built while J was idle here
        claimed = a.claim({J: JobState()}, 10)[J]  # then J is claimed and goes in flight
        assert claimed.row is not None and claimed.row.fence is not None
        a.write(stale)
        assert row_of(migrated, J)[1] == "a", "the stale save freed the lease of a job in flight"
        assert b.claim({J: JobState()}, 10) == {}, "another replica could claim a job in flight here"
        # Released under its own fence, it is free again.
        assert a.release([(J, claimed.row.fence)]) == [J]
        assert J in b.claim({J: JobState()}, 10)
    finally:
        db.close()


def test_each_claim_grants_a_new_fence_and_writes_under_an_old_one_are_refused(migrated: str) -> None:
    db, a, b = stores(migrated)
    try:
        one = a.claim({J: JobState()}, 10)[J].row
        with psycopg.connect(migrated, password=PASSWORD) as conn:  # a's lease runs out
            conn.execute("UPDATE jobs SET lease_until = clock_timestamp() - interval '1 second'")
        two = b.claim({J: JobState()}, 10)[J].row
        assert one is not None and two is not None and two.fence is not None and one.fence is not None
        assert two.fence > one.fence
        late = a.write(a.snapshot({J: JobState(last_root=root("ns000", 9), row=one)}))
        assert J in late.refused and row_of(migrated, J)[0] is None
        assert a.release([(J, one.fence)]) == []
        assert row_of(migrated, J)[1] == "b"
    finally:
        db.close()


def test_a_claim_that_waited_on_a_lock_still_gets_a_whole_lease(migrated: str) -> None:
    """The lease is counted from the moment it is granted (clock_timestamp()), not from the
    start of a transaction that waited (now()): a replica frozen or slowed mid-claim never
    starts anchoring under a lease that has already run out."""
    db, a, _ = stores(migrated)
    locked = threading.Event()

    def hold_the_registry() -> None:
        with psycopg.connect(migrated, password=PASSWORD) as conn, conn.transaction():
            conn.execute("LOCK TABLE replicas IN ACCESS EXCLUSIVE MODE")
            locked.set()
            time.sleep(2.5)

    holder = threading.Thread(target=hold_the_registry)
    holder.start()
    try:
        assert locked.wait(10)
        got = a.claim({J: JobState()}, 1.0, spread=True)  # waits ~2.5 s on the registry, lease 1 s
        assert J in got
        assert row_of(migrated, J)[1:2] == ("a",)
        assert row_of(migrated, J)[3] is True, "the lease had already expired when it was granted"
    finally:
        holder.join()
        db.close()


async def test_a_commit_after_another_replica_claimed_the_job_writes_nothing_and_is_counted(
    tmp_path: Path, migrated: str, pair: Pair
) -> None:
    """Replica a's call is out when its lease passes to another replica (here b's claim,
    made by hand: a new fence and owner). a's token arrives after: no receipt from it (the
    job is b's now), and the discarded token is logged and counted."""
    a = pair.a
    publish(tmp_path, 1, ["ns000"])
    metrics = Metrics(a.runtime.bus)
    logs: list[LogRecord] = []
    discarded: list[TokenDiscarded] = []
    a.runtime.bus.subscribe(lambda e: logs.append(e) if isinstance(e, LogRecord) else None)
    a.runtime.bus.subscribe(lambda e: discarded.append(e) if isinstance(e, TokenDiscarded) else None)
    backend = a.runtime.backends("local:dev")
    anchor = backend.anchor
    gate, out = asyncio.Event(), asyncio.Event()

    async def gated(*args, **kwargs):
        out.set()  # a's call is out: its claim is made
        await gate.wait()
        return await anchor(*args, **kwargs)

    backend.anchor = gated
    task = asyncio.create_task(a.engine.run_once())
    # The call's start, not a time: a busy machine may take seconds to claim and get there
    # (a poll of the row for a few seconds went on unclaimed, or found no row yet).
    await asyncio.wait_for(out.wait(), 60)
    assert row_of(migrated, J)[1] == "a"
    with psycopg.connect(migrated, password=PASSWORD) as conn:  # b's claim
        conn.execute("UPDATE jobs SET lease_owner = 'b', fence = fence + 1, "
                     "lease_until = clock_timestamp() + interval '30 seconds'")
    gate.set()
    await task
    assert receipts_by_job(migrated) == {}, "a wrote a receipt for a job another replica holds"
    assert [d.reason for d in discarded] == ["lease_lost"]
    assert any("lease lost" in r.msg for r in logs)
    text = metrics.render()[0].decode()
    values = {
        s.labels.get("reason"): s.value
        for f in text_string_to_metric_families(text) for s in f.samples if s.name == "vmsh_tokens_discarded_total"
    }
    assert values == {"lease_lost": 1.0, "taken_over": 0.0, "superseded": 0.0, "unrecovered": 0.0}
    assert row_of(migrated, J)[1] == "b"


def test_rows_travel_with_the_state_they_were_read_at() -> None:
    """JobState.row is never written out and never compared: two states equal in content
    are equal whatever rows they were read at."""
    one, two = JobState(last_root="x", row=Row(1, 2)), JobState(last_root="x", row=Row(5))
    assert one == two and "row" not in one.to_dict()
