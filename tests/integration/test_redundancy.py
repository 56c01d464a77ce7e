"""Redundant anchoring (issue 23 item 4): one job, three real TSAs over HTTP, `min: 2`.

Three OpenSSL TSAs (tests/integration/tsa_servers.py), each with its own PKI, on 127.0.0.1;
a TSA that is "down" is a port nothing listens on (connection refused), a hung one is the
server's /slow path (accepts, answers only after `slow_seconds`). The engine is a real
Scheduler on a FakeClock set to the wall clock (the TSAs stamp real time), driven one pass
at a time, as tests/integration/test_rfc3161.py drives it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import time
from pathlib import Path

import pytest

from core.anchors.registry import Backends
from core.anchors.rfc3161 import Rfc3161Target
from core.backoff import BackoffPolicy
from core.clock import FakeClock
from core.engine import Scheduler, redundant
from core.events import AnchorFailed, EventBus, ReceiptWritten
from core.jobs import JobKey, JobSpec, redundant_target, safe_name
from core.receipts import load_receipt
from core.sources import write_batch
from core.store.files.journal import IntentJournal
from core.store.files.receipts import ReceiptStore
from core.store.files.state import StateStore
from core.verify import ReadOnlyVerifiers, verify_files
from tests.integration.tsa_servers import OpenSSLTSA, free_port

LABEL = redundant_target(2, ["rfc3161:a", "rfc3161:b", "rfc3161:c"])


@pytest.fixture(scope="module")
def tsas(tmp_path_factory):
    servers = {name: OpenSSLTSA(tmp_path_factory.mktemp(f"tsa-{name}"), slow_seconds=20) for name in "abc"}
    yield servers
    for server in servers.values():
        server.stop()


class Rig:
    """One Scheduler kept across passes (the per-target backoff lives in it), on the real
    backend registry; `targets` may be changed between passes (a TSA goes down or comes back)."""

    def __init__(self, tmp: Path, tsas: dict[str, OpenSSLTSA], paths: dict[str, str]):
        self.tmp = tmp
        self.tsas = tsas
        self.clock = FakeClock(start=time.time())
        self.bus = EventBus()
        self.events: list = []
        self.bus.subscribe(self.events.append)
        self.targets: dict[str, Rfc3161Target] = {}
        for name, path in paths.items():
            self.point(name, path)
        self.backends = Backends(self.settings_for, tmp / "data", self.clock)
        self.root = "sha256:" + hashlib.sha256(f"batch {time.time_ns()}".encode()).hexdigest()
        self.source = tmp / "batches" / safe_name("ns")
        write_batch(self.source, "000001", self.root)
        self.spec = JobSpec(JobKey("ns", "fast"), LABEL, 60, self.source)
        self.scheduler = self.make()

    def point(self, name: str, path: str) -> None:
        """Target rfc3161:<name> at its TSA's `path`, or at a port nothing listens on ("down")."""
        server = self.tsas[name]
        url = f"http://127.0.0.1:{free_port()}/tsa" if path == "down" else server.url(path)
        self.targets[f"rfc3161:{name}"] = Rfc3161Target(url=url, trust_bundle=str(server.pki.path("bundle.pem")), timeout=30)

    def settings_for(self, target: str):
        return self.targets.get(target)

    def make(self) -> Scheduler:
        return Scheduler(
            jobs=[self.spec],
            clock=self.clock,
            bus=self.bus,
            backend_for=self.backends,
            state_store=StateStore(self.tmp / "data" / "state" / "scheduler.json"),
            journal=IntentJournal(self.tmp / "data" / "journal"),
            receipts=ReceiptStore(self.tmp / "data" / "receipts"),
            policy=BackoffPolicy(base=5.0, max_level=7, jitter=0.0, rng=random.Random(1)),
        )

    def requests(self) -> dict[str, int]:
        return {name: len(server.requests) for name, server in self.tsas.items()}

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def receipt_paths(self) -> list[Path]:
        return sorted((self.tmp / "data" / "receipts" / safe_name("ns")).glob("*.json"))

    async def verify(self) -> tuple[int, str]:
        out = io.StringIO()
        verifiers = ReadOnlyVerifiers(settings_for=self.settings_for)
        try:
            code = await verify_files(self.receipt_paths(), out, verifiers=verifiers, err=io.StringIO())
        finally:
            await verifiers.close()
        return code, out.getvalue()


async def test_one_of_three_down_anchors_with_two_attestations_and_verifies(tsas, tmp_path):
    rig = Rig(tmp_path, tsas, {"a": "/tsa", "b": "/tsa", "c": "down"})
    await rig.scheduler.run_once()
    await rig.backends.close()
    [path] = rig.receipt_paths()
    receipt = load_receipt(path)
    assert receipt.version == 3 and receipt.target == LABEL and receipt.least == 2
    assert [a.target for a in receipt.attestations] == ["rfc3161:a", "rfc3161:b"]
    doc = json.loads(path.read_text())
    assert doc["min"] == 2 and len(doc["attestations"]) == 2 and "attestation" not in doc
    code, line = await rig.verify()
    assert code == 0, line
    assert line.startswith(f"OK ns 000001 {rig.root} existed at ")
    assert "(2 of 3: rfc3161:a, rfc3161:b)" in line
    # the job is anchored; the target that was down backs off on its own
    state = rig.scheduler.view(rig.spec.key).state
    assert state.failures == 0 and state.last_receipt == str(path)
    health = rig.scheduler.redundancy.health
    assert health["rfc3161:c"].failures == 1 and (health["rfc3161:c"].retry_at or 0) > rig.clock.now()
    assert health["rfc3161:a"].failures == 0


async def test_each_target_s_state_shows_in_the_detail_view_health_and_metrics(tsas, tmp_path):
    from core.observe.health import health
    from core.observe.metrics import Metrics
    from tui.detail import namespace_detail

    rig = Rig(tmp_path, tsas, {"a": "/tsa", "b": "/tsa", "c": "down"})
    metrics = Metrics(rig.bus, engine=rig.scheduler)
    await rig.scheduler.run_once()
    await rig.backends.close()
    now = rig.clock.now()
    view = rig.scheduler.view(rig.spec.key)
    shown = {t.target: t for t in view.targets}
    assert shown["rfc3161:a"].attested_at is not None and shown["rfc3161:a"].retry_at is None
    assert (shown["rfc3161:c"].retry_at or 0) > now and shown["rfc3161:c"].failures == 1
    text = namespace_detail("ns", None, [view], [], [], now=now, max_level=7).plain
    assert "rfc3161:a            attested 0s ago" in text, text
    assert "rfc3161:c            backing off, retry in 5s (1 failed)" in text, text
    _, body = health(rig.scheduler, now)
    entry = body["namespaces"]["ns"]["targets"]["fast"]
    assert entry["rfc3161:c"]["backoffUntil"] == int(shown["rfc3161:c"].retry_at or 0)
    assert "cannot connect" in entry["rfc3161:c"]["error"]
    assert entry["rfc3161:b"]["attested"] == int(shown["rfc3161:b"].attested_at or 0) and entry["rfc3161:b"]["backoffUntil"] is None
    scraped = metrics.render()[0].decode()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in scraped.splitlines() if "member=" in line
    }
    series = 'vmsh_target_{}{{cadence="fast",member="rfc3161:{}",namespace="ns",target="' + LABEL + '"}}'
    assert samples[series.format("backoff_until_timestamp_seconds", "c")] == shown["rfc3161:c"].retry_at
    assert samples[series.format("backoff_until_timestamp_seconds", "a")] == 0.0
    assert samples[series.format("attested_timestamp_seconds", "a")] == shown["rfc3161:a"].attested_at


async def test_two_of_three_down_fail_the_job_and_keep_the_one_attestation(tsas, tmp_path):
    rig = Rig(tmp_path, tsas, {"a": "/tsa", "b": "down", "c": "down"})
    before = rig.requests()
    await rig.scheduler.run_once()
    assert rig.receipt_paths() == []
    [failed] = rig.of(AnchorFailed)
    assert "1 of the 2 attestations required" in failed.message
    state = rig.scheduler.view(rig.spec.key).state
    assert state.failures == 1 and (state.next_attempt or 0) > rig.clock.now()
    assert rig.requests()["a"] == before["a"] + 1
    # b comes back; at the job's retry, a (already attested this digest) is not asked again
    rig.point("b", "/tsa")
    rig.clock.set((state.next_attempt or 0) + 1)
    await rig.scheduler.run_once()
    await rig.backends.close()
    after = rig.requests()
    assert after["a"] == before["a"] + 1 and after["b"] == before["b"] + 1
    [path] = rig.receipt_paths()
    assert [a.target for a in load_receipt(path).attestations] == ["rfc3161:a", "rfc3161:b"]
    code, line = await rig.verify()
    assert code == 0 and "(2 of 3: rfc3161:a, rfc3161:b)" in line, line


async def test_a_hung_target_delays_the_receipt_by_the_grace_at_most(tsas, tmp_path, monkeypatch):
    monkeypatch.setattr(redundant, "GRACE", 0.3)
    rig = Rig(tmp_path, tsas, {"a": "/tsa", "b": "/slow", "c": "/tsa"})  # b accepts, answers after 20 s
    started = time.monotonic()
    await rig.scheduler.run_once()
    elapsed = time.monotonic() - started
    await rig.backends.close()
    assert elapsed < 3.0, f"the receipt waited {elapsed:.1f} s for the hung target"
    [path] = rig.receipt_paths()
    assert [a.target for a in load_receipt(path).attestations] == ["rfc3161:a", "rfc3161:c"]
    assert "grace" in (rig.scheduler.redundancy.health["rfc3161:b"].last_error or "")


async def test_a_crash_after_min_attestations_writes_the_receipts_at_restart_without_asking(
    tsas, tmp_path, monkeypatch
):
    monkeypatch.setattr(redundant, "GRACE", 60.0)  # the crash comes while c is waited for
    rig = Rig(tmp_path, tsas, {"a": "/tsa", "b": "/tsa", "c": "/slow"})
    journal = tmp_path / "data" / "journal"

    def noted() -> int:
        for file in journal.glob("*.json"):
            try:
                return len(json.loads(file.read_text())["notes"].get("attested", {}))
            except (ValueError, KeyError):
                return 0
        return 0

    run = asyncio.ensure_future(rig.scheduler.run_once())
    deadline = time.monotonic() + 10
    while noted() < 2:
        assert time.monotonic() < deadline, "the two attestations were never noted"
        await asyncio.sleep(0.01)
    run.cancel()  # the process dies here: no receipt yet
    with pytest.raises(asyncio.CancelledError):
        await run
    await rig.backends.close()
    assert rig.receipt_paths() == []
    asked = rig.requests()
    restarted = rig.make()
    await restarted.recover()
    await restarted.run_once()  # the root is anchored now: nothing is sent
    await rig.backends.close()
    assert rig.requests() == asked, "a TSA was asked again after the restart"
    [path] = rig.receipt_paths()
    assert [a.target for a in load_receipt(path).attestations] == ["rfc3161:a", "rfc3161:b"]
    assert len(rig.of(ReceiptWritten)) == 1
    assert list(journal.glob("*.json")) == []
    code, line = await rig.verify()
    assert code == 0 and "(2 of 3: rfc3161:a, rfc3161:b)" in line, line


async def test_a_target_backing_off_is_skipped_unless_min_needs_it(tsas, tmp_path):
    rig = Rig(tmp_path, tsas, {"a": "/tsa", "b": "/tsa", "c": "/500"})
    key = rig.spec.key
    await rig.scheduler.run_once()  # c answers 500: it backs off on its own, the job is anchored
    assert len(rig.receipt_paths()) == 1
    write_batch(rig.source, "000002", "sha256:" + hashlib.sha256(rig.root.encode()).hexdigest())
    rig.point("b", "/500")
    asked = rig.requests()
    rig.clock.advance(1.0)  # c's retry time comes before the one b gets now
    rig.scheduler.force(key)
    await rig.scheduler.run_once()  # c still backing off: skipped (a and b are enough to ask)
    after = rig.requests()
    assert after["c"] == asked["c"] and after["b"] == asked["b"] + 1 and after["a"] == asked["a"] + 1
    assert len(rig.receipt_paths()) == 1  # b failed too: 1 of 2, the job backs off
    rig.point("c", "/tsa")
    rig.scheduler.force(key)
    await rig.scheduler.run_once()  # b and c backing off, a alone is too few: c (due first) is asked
    await rig.backends.close()
    final = rig.requests()
    assert final["c"] == after["c"] + 1 and final["b"] == after["b"]
    assert final["a"] == after["a"], "a's attestation of this digest was kept, not asked for again"
    newest = load_receipt(rig.receipt_paths()[-1])
    assert newest.batch.id == "000002"
    assert [a.target for a in newest.attestations] == ["rfc3161:a", "rfc3161:c"]
    code, line = await rig.verify()
    assert code == 0, line


async def test_a_pending_redundant_receipt_is_confirmed_once_min_attestations_are_final(tmp_path):
    from core.anchors.evm import Eip155Target
    from core.confirmations import ConfirmationTracker
    from core.observe.logs import Log
    from tests.integration.ganache import KEYS, Ganache

    node = Ganache(tmp_path).start()
    try:
        clock = FakeClock(start=time.time())
        bus = EventBus()
        settings = {"eip155:1337": Eip155Target(rpc_url=node.url, chain_id=1337, key=KEYS[0], confirmations=3)}
        backends = Backends(settings.get, tmp_path / "data", clock)
        source = tmp_path / "batches" / "ns"
        write_batch(source, "000001", "sha256:" + "ab" * 32)
        receipts = ReceiptStore(tmp_path / "data" / "receipts")
        spec = JobSpec(JobKey("ns", "fast"), "2 of local:dev,eip155:1337", 60, source, confirmations=3)
        engine = Scheduler(
            jobs=[spec], clock=clock, bus=bus, backend_for=backends,
            state_store=StateStore(tmp_path / "data" / "state" / "scheduler.json"),
            journal=IntentJournal(tmp_path / "data" / "journal"), receipts=receipts,
            policy=BackoffPolicy(base=5.0, max_level=7, jitter=0.0, rng=random.Random(1)),
        )
        await engine.run_once()
        [path] = receipts.all_paths()
        receipt = load_receipt(path)
        assert receipt.status == "pending"  # local:dev is final, the transaction 1 of 3 blocks deep
        assert [(a.target, a.status) for a in receipt.attestations] == [("local:dev", "confirmed"), ("eip155:1337", "pending")]
        tracker = ConfirmationTracker(receipts, backends, bus, clock, Log(bus, clock, "DEBUG"), lambda key: None)
        assert (await tracker.check_once())["waiting"] == 1
        node.mine(2)
        assert (await tracker.check_once())["confirmed"] == 1
        assert load_receipt(path).status == "confirmed"
        await backends.close()
    finally:
        node.stop()


async def test_fewer_than_min_backs_off_by_the_kind_the_targets_failures_share(tsas, tmp_path):
    rig = Rig(tmp_path, tsas, {"a": "/401", "b": "/401", "c": "/401"})  # every TSA refuses our credentials
    await rig.scheduler.run_once()
    [failed] = rig.of(AnchorFailed)
    assert failed.kind == "auth" and "0 of the 2 attestations required" in failed.message
    rig.point("c", "down")  # refused credentials and a refused connection: a network failure
    rig.clock.advance(3600)
    await rig.scheduler.run_once()
    await rig.backends.close()
    assert rig.of(AnchorFailed)[-1].kind == "network"
