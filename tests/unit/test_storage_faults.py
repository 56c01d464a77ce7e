"""Our own disk failing under the engine: full, refused, a name too long, a kill -9's leftovers.

The engine runs whole on a fake clock against the real embedded TSA; faults are either
real (a file where a namespace folder should be, a name over NAME_MAX) or injected in the
engine's writer thread exactly where the disk would fail (ENOSPC, EACCES).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import os
import stat
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.events import AnchorFailed, LogRecord, ReceiptWritten
from core.jobs import JobKey, JobSpec, safe_name
from core.observe.health import health
from core.observe.metrics import Metrics
from core.receipts import load_receipt, parse_iso_utc, verify_receipt
from core.sources import write_batch
from core.store.files.claims import FileClaims
from core.store.files.journal import IntentJournal
from core.writer import DiskWriter
from tests.unit.test_engine import Harness, root, until

A = JobKey("a", "fast")
RETRY = 10  # seconds: past the first storage backoff (5 s x PHI = 8.1 s, no jitter)


class Faults:
    """Fails the writer's steps named in `failing` with `code` (ENOSPC by default)."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.code = errno.ENOSPC

    def __call__(self, op: str) -> None:
        if op in self.failing:
            raise OSError(self.code, os.strerror(self.code))


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    text = metrics.render()[0].decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels}")


def errors(h: Harness) -> list[LogRecord]:
    return [e for e in h.events if isinstance(e, LogRecord) and e.level == "ERROR"]


def journal_files(h: Harness) -> list[Path]:
    return sorted((h.tmp / "data" / "journal").glob("*.json"))


def faulty(h: Harness, faults: Faults, **kw):
    return h.scheduler(writer=DiskWriter(fault=faults), **kw)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
async def test_receipts_that_cannot_be_written_keep_the_attestation_and_resume_once_fixed(tmp_path, code):
    h = Harness(tmp_path, {"a": 1, "b": 2, "c": 3})
    faults = Faults()
    faults.code = code
    faults.failing = {"receipt"}
    s = faulty(h, faults)
    metrics = Metrics(h.bus, engine=s)

    await s.run_once()

    assert len(h.backend.calls) == 1  # one paid call for the three jobs
    assert h.of(ReceiptWritten) == []
    assert s.in_flight() == frozenset(), "jobs were left in flight"
    assert {e.kind for e in h.of(AnchorFailed)} == {"storage"}
    code_now, body = health(s, h.clock.now())
    assert (code_now, body["status"]) == (503, "degraded")
    assert body["namespaces"]["a"]["status"] == "backing_off"
    assert errno.errorcode[code] in body["storage"]
    logged = [e for e in errors(h) if e.fields.get("errno") == code]
    assert logged and all(e.fields.get("path") for e in logged)
    json.dumps([e.fields for e in logged], default=str)  # a JSON line each
    assert counter(metrics, "vmsh_anchor_failures_by_kind_total", kind="storage") == 3
    assert counter(metrics, "vmsh_storage_errors_total", op="receipt") >= 1
    # The attestation was paid for: it is in the journal, so even a crash now loses nothing.
    [intent] = journal_files(h)
    assert json.loads(intent.read_text())["attestation"] is not None

    faults.failing = set()  # the disk is freed / the permission fixed
    h.clock.advance(RETRY)
    await s.run_once()

    assert len(h.backend.calls) == 1, "the retry anchored again instead of using the attestation"
    written = h.of(ReceiptWritten)
    assert sorted(str(e.job) for e in written) == ["a/fast", "b/fast", "c/fast"]
    for event in written:
        await verify_receipt(load_receipt(Path(event.path)), lambda t: h.backend)
    assert journal_files(h) == []
    assert s.storage_problem is None
    assert health(s, h.clock.now())[1]["status"] == "healthy"


async def test_a_journal_that_cannot_be_written_sends_nothing_and_retries(tmp_path):
    h = Harness(tmp_path, {"a": 1})
    faults = Faults()
    faults.failing = {"journal"}
    s = faulty(h, faults)

    await s.run_once()

    assert h.backend.calls == []  # no intent, no call: nothing can be lost
    assert s.in_flight() == frozenset()
    assert s.view(A).status == "backing_off"
    assert s.view(A).state.last_error_kind == "storage"
    faults.failing = set()
    h.clock.advance(RETRY)
    await s.run_once()
    assert len(h.of(ReceiptWritten)) == 1
    assert s.view(A).status == "ok"


async def test_a_real_write_error_in_a_namespace_folder_fails_only_that_job_until_fixed(tmp_path):
    """A file where `receipts/a/` should be: ENOTDIR from the real disk, even as root."""
    h = Harness(tmp_path, {"a": 1, "b": 2})
    blocker = h.tmp / "data" / "receipts" / safe_name("a")
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    s = h.scheduler()

    await s.run_once()

    assert [str(e.job) for e in h.of(ReceiptWritten)] == ["b/fast"]
    assert s.in_flight() == frozenset()
    assert s.view(A).status == "backing_off"
    assert str(blocker) in s.view(A).state.last_error
    assert health(s, h.clock.now())[1]["status"] == "degraded"

    blocker.unlink()
    h.clock.advance(RETRY)
    await s.run_once()
    assert sorted(str(e.job) for e in h.of(ReceiptWritten)) == ["a/fast", "b/fast"]
    assert len(h.backend.calls) == 1
    assert journal_files(h) == []
    assert health(s, h.clock.now())[1]["status"] == "healthy"


async def test_a_failed_state_save_loses_no_intent_to_close(tmp_path):
    h = Harness(tmp_path, {"a": 1}, every=10, unchanged=True)
    faults = Faults()
    faults.failing = {"state"}
    s = faulty(h, faults)

    await s.run_once()

    assert len(h.of(ReceiptWritten)) == 1  # the receipt is safe
    assert len(journal_files(h)) == 1  # the state is not: the intent stays until it is
    assert "state" in (s.storage_problem or "")
    assert health(s, h.clock.now())[1]["status"] == "degraded"

    faults.failing = set()
    h.clock.advance(10)
    await s.run_once()
    assert len(h.of(ReceiptWritten)) == 2
    assert journal_files(h) == [], "the first pass's intent was forgotten by the failed save"
    assert s.storage_problem is None
    saved = json.loads((h.tmp / "data" / "state" / "scheduler.json").read_text())
    assert saved["jobs"]["a/fast"]["last_receipt"] == h.of(ReceiptWritten)[-1].path


async def test_an_unexpected_error_after_the_call_leaves_no_job_in_flight(tmp_path):
    h = Harness(tmp_path, {"a": 1}, every=10, unchanged=True)
    s = h.scheduler()
    real = h.backend.inner.anchor

    async def odd_status(digest, note, *, policy=None):
        # build_receipt refuses this status: a bug after the call, not a disk error
        return dataclasses.replace(await real(digest, note, policy=policy), status="weird")

    h.backend.inner.anchor = odd_status
    await s.run_once()
    assert s.in_flight() == frozenset()
    assert s.view(A).status == "backing_off"
    assert any(e.msg == "anchoring failed unexpectedly" for e in errors(h))
    h.backend.inner.anchor = real
    h.clock.advance(RETRY)
    await s.run_once()
    assert len(h.of(ReceiptWritten)) == 1


async def test_a_job_in_flight_past_its_bound_is_reported_stuck(tmp_path):
    h = Harness(tmp_path, {"a": 1})
    s = h.scheduler()
    h.backend.gate = asyncio.Event()  # the backend never answers
    s.run_due()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not h.backend.calls:
        assert loop.time() < deadline
        await asyncio.sleep(0.001)
    assert s.stuck() == frozenset()
    h.clock.advance(s.stuck_after(A) + 1)
    assert s.stuck() == {A}
    body = health(s, h.clock.now())[1]
    assert body["status"] == "degraded" and body["stuck"] == ["a/fast"]
    h.backend.gate.set()
    await s.settle()
    assert s.stuck() == frozenset()


# ----- recovery at start ---------------------------------------------------------------------


def _intent(h: Harness, jobs: list[tuple[str, int]], attestation: dict | None = None, **entry_extra):
    journal = IntentJournal(h.tmp / "data" / "journal")
    entries = [
        {"job": job, "batch": {"id": f"{n:06d}", "root": root(n)}, "leaf_index": i, **entry_extra}
        for i, (job, n) in enumerate(jobs)
    ]
    return journal.open("local:dev", entries, root(jobs[0][1])[7:], h.clock.now())


async def test_one_intent_that_cannot_be_resolved_is_quarantined_and_start_goes_on(tmp_path):
    h = Harness(tmp_path, {"a": 1, "b": 2})
    good_att = await h.backend.inner.anchor(bytes.fromhex(root(2)[7:]), lambda facts: None)
    good = _intent(h, [("b/fast", 2)])
    good.attested(good_att.data, good_att.status, good_att.confirmations)
    bad = _intent(h, [("a/fast", 1)])
    doc = json.loads(bad.path.read_text())
    del doc["entries"][0]["batch"]  # damaged by hand: valid JSON, not resolvable
    doc["attestation"] = {"scheme": "rfc3161"}
    bad.path.write_text(json.dumps(doc))

    s = h.scheduler()
    await s.recover()  # raised KeyError before: every start exited 1

    quarantined = h.tmp / "data" / "journal" / "quarantine" / bad.path.name
    assert quarantined.exists() and json.loads(quarantined.read_text()) == doc
    assert (quarantined.parent / f"{bad.id}.reason").read_text().strip()
    assert journal_files(h) == []
    assert [str(e.job) for e in h.of(ReceiptWritten)] == ["b/fast"]  # the good one recovered
    assert any("quarantine" in e.msg and e.fields.get("path") == str(quarantined) for e in errors(h))
    await s.run_once()  # and anchoring goes on
    assert "a/fast" in {str(e.job) for e in h.of(ReceiptWritten)}


async def test_a_receipt_name_over_name_max_at_recovery_does_not_stop_the_start(tmp_path):
    long_ns = "\u6f22" * 90  # 270 bytes in UTF-8: no folder can have that name
    h = Harness(tmp_path, {"b": 2})
    h.specs.append(JobSpec(JobKey(long_ns, "fast"), "local:dev", 60, tmp_path / "batches" / "long"))
    write_batch(tmp_path / "batches" / "long", "000001", root(1))
    att = await h.backend.inner.anchor(bytes.fromhex(root(1)[7:]), lambda facts: None)
    intent = _intent(h, [(f"{long_ns}/fast", 1)])
    intent.attested(att.data, att.status, att.confirmations)

    s = h.scheduler()
    await s.recover()  # raised OSError(ENAMETOOLONG) before

    key = JobKey(long_ns, "fast")
    assert s.view(key).status == "backing_off"
    assert "ENAMETOOLONG" in s.view(key).state.last_error
    assert len(journal_files(h)) == 1  # the attestation is kept for when it can be written
    assert s.in_flight() == frozenset()
    await s.run_once()
    assert [str(e.job) for e in h.of(ReceiptWritten)] == ["b/fast"]


async def test_temp_files_left_by_a_kill_9_are_removed_at_start(tmp_path):
    h = Harness(tmp_path, {"a": 1})
    data = h.tmp / "data"
    leftovers = [
        data / "state" / ".scheduler.json.0a1b2c3d.tmp",
        data / "journal" / ".1767225600000-deadbeef.json.89abcdef.tmp",
        data / "receipts" / ".pending" / ".complete.01234567.tmp",
        data / "receipts" / safe_name("a") / ".20260101T000000000Z-fast-000000000001.json.fedcba98.tmp",
    ]
    keep = [data / "receipts" / ".pending" / ".complete", data / "state" / "notes.tmp"]
    for path in leftovers + keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a write")

    s = h.scheduler()
    await s.recover()
    await s.run_once()  # the namespace folder is cleaned before its first write

    assert [p for p in leftovers if p.exists()] == []
    assert all(p.exists() for p in keep)
    assert len(h.of(ReceiptWritten)) == 1


async def test_data_folders_are_0750_and_files_0640_whatever_the_umask(tmp_path):
    from core.store.files.lock import DataDirLock

    old = os.umask(0)
    try:
        h = Harness(tmp_path, {"a": 1, "b": 2})
        lock = DataDirLock(tmp_path / "data").acquire()
        s = h.scheduler()
        s.force(JobKey("a", "fast"))
        await s.run_once()
        h.clock.advance(RETRY)
        await s.stop()
        lock.release()
    finally:
        os.umask(old)
    data = tmp_path / "data"
    for path in [data, *data.rglob("*")]:
        if "tsa" in path.relative_to(tmp_path).parts:
            continue  # the embedded TSA keeps its key folder 0700 (its own rule)
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o750, f"{path}: {oct(mode)}"
        else:
            assert mode == 0o640, f"{path}: {oct(mode)}"


async def test_a_job_removed_mid_anchor_keeps_its_attestation_when_added_again(tmp_path):
    """A reload removes a job while its anchor is under way and its receipt cannot be
    written: the attestation stays with what is left of the job (core/engine/record.py
    `Remains`), so adding the job again retries from it, never with a second call."""
    h = Harness(tmp_path, {"a": 1, "b": 2})
    faults = Faults()
    faults.failing = {"receipt"}
    s = faulty(h, faults)
    spec_a, spec_b = h.specs
    h.backend.gate = asyncio.Event()
    s.run_due()
    await until(lambda: h.backend.calls)
    s.apply([spec_b], "without a")
    h.backend.gate.set()
    await s.settle()
    assert len(h.backend.calls) == 1
    assert h.of(ReceiptWritten) == []
    assert s.in_flight() == frozenset()
    assert list(s.jobs) == [JobKey("b", "fast")]
    assert s.storage_problem is not None and s.storage_problem.startswith("2 jobs cannot write")

    faults.failing = set()
    s.apply([spec_a, spec_b], "with a again")
    h.clock.advance(RETRY)
    await s.run_once()

    assert len(h.backend.calls) == 1, "a job added again anchored again instead of using its attestation"
    assert "b/fast" in [str(e.job) for e in h.of(ReceiptWritten)]
    assert s.in_flight() == frozenset()


class FailNth:
    """Fails only the `nth` receipt write (a chunk's commit), with ENOSPC."""

    def __init__(self, nth: int) -> None:
        self.nth, self.seen = nth, 0

    def __call__(self, op: str) -> None:
        if op == "receipt":
            self.seen += 1
            if self.seen == self.nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_a_chunk_that_fails_mid_pass_holds_only_what_was_not_written_and_nothing_twice(tmp_path):
    """Chunks of a big pass are written while the loop applies the previous one: when one
    chunk's commit fails, the chunk already under way still counts, the rest keep the
    attestation, and the retry writes each missing receipt once, from that attestation."""
    names = [f"n{i}" for i in range(7)]
    h = Harness(tmp_path, {n: i + 1 for i, n in enumerate(names)})
    claims = FileClaims(h.receipts)
    claims.commit_chunk = 2  # chunks of 2: [n0 n1] [n2 n3 fails] [n4 n5] [n6]
    s = h.scheduler(writer=DiskWriter(fault=FailNth(2)), claims=claims)

    await s.run_once()

    assert len(h.backend.calls) == 1
    first = sorted(str(e.job) for e in h.of(ReceiptWritten))
    assert first == ["n0/fast", "n1/fast", "n4/fast", "n5/fast"]
    assert s.in_flight() == frozenset(), "jobs were left in flight"
    assert sorted(str(e.job) for e in h.of(AnchorFailed)) == ["n2/fast", "n3/fast", "n6/fast"]

    h.clock.advance(RETRY)
    await s.run_once()

    assert len(h.backend.calls) == 1, "the retry anchored again instead of using the attestation"
    written = sorted(str(e.job) for e in h.of(ReceiptWritten))
    assert written == sorted(f"{n}/fast" for n in names), "a receipt missing or written twice"
    for name in names:
        assert len(list((tmp_path / "data" / "receipts" / name).glob("*.json"))) == 1
    assert journal_files(h) == []


async def test_a_receipt_written_days_after_its_attestation_states_when_it_was_anchored(tmp_path):
    """The disk is full for three days: the receipts written from the kept attestation then
    say when the anchor happened (the attested time, within the verifier's tolerance), not
    when the disk was freed, so `verify` vouches for them instead of failing them."""
    h = Harness(tmp_path, {"a": 1})
    faults = Faults()
    faults.failing = {"receipt"}
    s = faulty(h, faults)
    anchored = h.clock.now()

    await s.run_once()
    assert h.of(ReceiptWritten) == []

    for _ in range(3 * 24):  # three days of retries against a full disk
        h.clock.advance(3600)
        await s.run_once()
    assert h.of(ReceiptWritten) == []
    faults.failing = set()
    h.clock.advance(3600)
    await s.run_once()

    [event] = h.of(ReceiptWritten)
    receipt = load_receipt(Path(event.path))
    assert abs(parse_iso_utc(receipt.anchored_at).timestamp() - anchored) < 1.0
    await verify_receipt(receipt, lambda t: h.backend)  # raises ReceiptInvalid if anchored_at were the write's time
    assert len(h.backend.calls) == 1
