"""One object owns what is in flight (core/flight.py): the pass, a forced anchor, the retry
of a kept attestation and the recovery of an intent all board through it, so none of them
can take a job another holds, and none can land a job it did not board."""

from __future__ import annotations

import asyncio
import tracemalloc

from core.flight import Flight
from core.jobs import JobKey
from tests.unit.test_engine import Harness

A = JobKey("a", "fast")


def test_a_job_boards_once_and_lands_once() -> None:
    flight = Flight()
    assert flight.board([A], 1.0) == [A]
    assert flight.board([A], 2.0) == [], "a job already aboard was taken again"
    assert flight.since(A) == 1.0 and A in flight and len(flight) == 1
    assert flight.land(A) is True
    assert flight.land(A) is False and A not in flight


def test_a_pass_that_landed_keeps_no_memory_for_its_jobs() -> None:
    """Once the last job of a big pass lands, flight holds what an empty one holds: a dict
    keeps the table of its largest size (10,000 jobs: ~300 KB for as long as the process
    is idle)."""
    keys = [JobKey(f"ns{i}", "fast") for i in range(10_000)]
    flight = Flight()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        flight.board(keys, 1.0)
        assert len(flight) == 10_000
        for key in keys:
            assert flight.land(key)
        assert len(flight) == 0 and list(flight) == []
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 10_000, f"an empty flight still holds {kept} bytes"
    assert flight.board(keys[:1], 2.0) == keys[:1] and flight.since(keys[0]) == 2.0


async def test_a_recovery_while_a_pass_holds_the_job_neither_takes_nor_frees_it(tmp_path) -> None:
    h = Harness(tmp_path, {"a": 1})
    s = h.scheduler()
    h.backend.gate = asyncio.Event()
    s.run_due()
    for _ in range(500):  # the intent is journalled on the writer thread first
        if h.backend.calls:
            break
        await asyncio.sleep(0.01)
    assert s.in_flight() == {A} and len(h.backend.calls) == 1
    await s.recover()  # finds the pass's intent in the journal, with no attestation yet
    assert s.in_flight() == {A}, "the recovery took the job out of the pass's flight"
    journal = list((tmp_path / "data" / "journal").glob("*.json"))
    assert len(journal) == 1, "the recovery closed the intent of a call still out: a crash now loses its token"
    assert s.run_due() == 0
    h.backend.gate.set()
    await s.settle()
    receipts = sorted((tmp_path / "data" / "receipts" / "a").glob("*.json"))
    assert len(h.backend.calls) == 1 and len(receipts) == 1
    assert not list((tmp_path / "data" / "journal").glob("*.json"))


async def test_an_interrupted_anchor_of_a_job_in_flight_writes_no_second_receipt(tmp_path) -> None:
    """A take-over (here: a recovery) finds an interrupted anchor with a token for a job that
    a pass of this scheduler holds in flight, for the same root. The old engine wrote the
    interrupted anchor's receipt for it, then the pass wrote a second one (the cluster's
    'take-over wrote the receipt, and 54 ms later the pass anchored the same digest again').
    The job is not aboard for the recovery: it gets nothing from it, and the unused token
    is counted."""
    from core.events import TokenDiscarded
    from tests.unit.test_storage_faults import _intent

    h = Harness(tmp_path, {"a": 1})
    s = h.scheduler()
    h.backend.gate = asyncio.Event()
    s.run_due()
    for _ in range(500):
        if h.backend.calls:
            break
        await asyncio.sleep(0.01)
    token = await h.backend.inner.anchor(h.backend.calls[0], lambda facts: None)
    left = _intent(h, [("a/fast", 1)])  # an anchor of the same root, interrupted with its token
    left.attested(token.data, token.status, token.confirmations)
    await s.recover()
    h.backend.gate.set()
    await s.settle()
    receipts = sorted((tmp_path / "data" / "receipts" / "a").glob("*.json"))
    assert len(receipts) == 1, "one root, two receipts"
    assert [(e.reason, e.jobs) for e in h.of(TokenDiscarded)] == [("superseded", 1)]
    assert not list((tmp_path / "data" / "journal").glob("*.json"))
