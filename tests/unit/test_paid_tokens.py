"""Every paid token ends in its own receipt: a heartbeat job (`anchor_unchanged`) anchors
the same root every period, so a receipt of the previous period has the same root and
anchored root as the new one. A retry or a recovery that matched receipts by root alone
took the old receipt for the new token's, and the new token was never written.

The real embedded TSA signs each token (each has its own serial); the faults are injected
in the engine's writer thread exactly where the disk would fail."""

from __future__ import annotations

import json
from pathlib import Path

from core.events import AnchorSucceeded
from core.receipts import load_receipt
from tests.unit.test_engine import Harness
from tests.unit.test_storage_faults import RETRY, Faults, faulty

PERIOD = 60


def receipts_of(h: Harness, ns: str = "a") -> list[Path]:
    return sorted((h.tmp / "data" / "receipts" / ns).glob("*.json"))


def tokens(paths: list[Path]) -> set[str]:
    return {json.dumps(dict(load_receipt(p).attestation), sort_keys=True) for p in paths}


async def test_a_heartbeat_whose_receipt_write_failed_gets_a_receipt_of_its_own_token(tmp_path):
    h = Harness(tmp_path, {"a": 1}, every=PERIOD, unchanged=True)
    faults = Faults()
    s = faulty(h, faults)
    await s.run_once()
    assert len(receipts_of(h)) == 1

    h.clock.advance(PERIOD)  # the same root again, a new token
    faults.failing = {"receipt"}
    await s.run_once()
    assert len(h.backend.calls) == 2 and len(receipts_of(h)) == 1

    faults.failing = set()
    h.clock.advance(RETRY)
    await s.run_once()
    assert len(h.backend.calls) == 2, "the kept token was used, nothing paid again"
    paths = receipts_of(h)
    assert len(paths) == 2 and len(tokens(paths)) == 2, "the second token has no receipt of its own"
    assert s.view(h.specs[0].key).state.last_receipt == str(paths[-1])
    assert h.of(AnchorSucceeded)[-1].root == load_receipt(paths[-1]).batch.root


async def test_a_heartbeat_recovered_after_a_crash_gets_a_receipt_of_its_own_token(tmp_path):
    h = Harness(tmp_path, {"a": 1}, every=PERIOD, unchanged=True)
    faults = Faults()
    s = faulty(h, faults)
    await s.run_once()
    h.clock.advance(PERIOD)
    faults.failing = {"receipt"}  # the token is journalled, then the process "dies"
    await s.run_once()
    journal = sorted((tmp_path / "data" / "journal").glob("*.json"))
    assert len(journal) == 1 and json.loads(journal[0].read_text())["attestation"] is not None

    restarted = h.scheduler()
    await restarted.recover()
    paths = receipts_of(h)
    assert len(paths) == 2 and len(tokens(paths)) == 2, "the journalled token has no receipt of its own"
    assert not list((tmp_path / "data" / "journal").glob("*.json"))
    assert restarted.view(h.specs[0].key).state.last_receipt == str(paths[-1])


async def test_a_call_whose_token_never_reached_the_journal_is_counted_as_maybe_paid(tmp_path):
    """The process died after its call went out and before the token was journalled: an
    RFC 3161 token cannot be asked for again, so the restart counts the call (`unrecovered`)
    and anchors the job again."""
    from core.events import TokenDiscarded
    from core.observe.metrics import Metrics
    from tests.unit.test_storage_faults import _intent, counter

    h = Harness(tmp_path, {"a": 1})
    _intent(h, [("a/fast", 1)])  # opened, no attestation: the call's outcome is unknown
    s = h.scheduler()
    metrics = Metrics(h.bus, engine=s)
    await s.recover()
    assert [(e.reason, e.jobs) for e in h.of(TokenDiscarded)] == [("unrecovered", 1)]
    assert counter(metrics, "vmsh_tokens_discarded_total", reason="unrecovered") == 1
    await s.run_once()
    assert len(receipts_of(h)) == 1 and len(h.backend.calls) == 1
