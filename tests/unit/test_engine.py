"""The engine's rules, run whole on a fake clock against the real embedded TSA."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import shutil
import threading
from pathlib import Path

import pytest

from core.anchors.local.backend import LocalTSA
from core.backoff import PHI, BackoffPolicy
from core.clock import FakeClock
from core.errors import AuthError, NetworkError, ValidationError
from core.events import AnchorFailed, AnchorStarted, EventBus, JobSkipped, LogRecord, ReceiptWritten
from core.jobs import JobKey, JobSpec, safe_name
from core.receipts import BatchRef, bound_leaf, load_receipt, root_text, verify_receipt
from core.sources import write_batch
from core.store.files.journal import IntentJournal
from core.store.files.receipts import ReceiptStore
from core.store.files.state import StateStore
from core.writer import DiskWriter


def root(n: int) -> str:
    return "sha256:" + f"{n:064x}"


async def until(condition, timeout: float = 5.0, message: str = "condition not met in time") -> None:
    """Let the loop run until `condition()` holds: journal and receipt writes happen on the
    engine's writer thread, so a few `sleep(0)` are not enough for them to land."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, message
        await asyncio.sleep(0.001)


class CountingBackend:
    """The real local TSA, with a count of calls and failures injected on demand."""

    def __init__(self, inner: LocalTSA) -> None:
        self.inner = inner
        self.target = inner.target
        self.calls: list[bytes] = []
        self.policies: list[str | None] = []
        self.fail_with: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.one_at_a_time = False  # a btc-like backend's rule when set (the engine folds)

    async def anchor(self, digest, note, *, policy=None):
        self.calls.append(digest)
        self.policies.append(policy)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return await self.inner.anchor(digest, note, policy=policy)

    async def recover(self, digest, notes):
        return None

    async def verify(self, attestation, digest, *, required=None, policy=None):
        await self.inner.verify(attestation, digest, policy=policy)

    async def close(self):
        pass


class Harness:
    def __init__(self, tmp: Path, specs: dict[str, int], *, every=60, target="local:dev", unchanged=False):
        self.tmp = tmp
        self.clock = FakeClock()
        self.bus = EventBus()
        self.events: list = []
        self.bus.subscribe(self.events.append)
        self.backend = CountingBackend(LocalTSA(tmp / "data", "dev", self.clock))
        self.receipts = ReceiptStore(tmp / "data" / "receipts")
        self.specs = [
            JobSpec(JobKey(ns, "fast"), target, every, tmp / "batches" / safe_name(ns), anchor_unchanged=unchanged)
            for ns in specs
        ]
        for ns, n in specs.items():
            self.batch(ns, n)

    def batch(self, ns: str, n: int, name: str | None = None) -> None:
        write_batch(self.tmp / "batches" / safe_name(ns), name or f"{n:06d}", root(n))

    def scheduler(self, **kw):
        from core.engine import Scheduler

        return Scheduler(
            jobs=self.specs,
            clock=self.clock,
            bus=self.bus,
            backend_for=lambda target: self.backend,
            state_store=StateStore(self.tmp / "data" / "state" / "scheduler.json"),
            journal=IntentJournal(self.tmp / "data" / "journal"),
            receipts=self.receipts,
            policy=BackoffPolicy(base=5.0, max_level=7, jitter=0.0, rng=random.Random(1)),
            **kw,
        )

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


async def test_first_pass_anchors_each_job_and_receipts_verify(tmp_path):
    h = Harness(tmp_path, {"a": 1})
    s = h.scheduler()
    await s.run_once()
    written = h.of(ReceiptWritten)
    assert [str(e.job) for e in written] == ["a/fast"]
    receipt = load_receipt(Path(written[0].path))
    assert receipt.batch.root == root(1)
    # a group of one anchors its leaf itself: the root bound to its namespace and batch id
    assert receipt.anchored_root == root_text(bound_leaf("a", receipt.batch.id, root(1)))
    await verify_receipt(receipt, lambda t: h.backend)


async def test_job_is_due_again_after_its_period_not_before(tmp_path):
    h = Harness(tmp_path, {"a": 1}, every=89, unchanged=True)
    s = h.scheduler()
    await s.run_once()
    h.clock.advance(88)
    await s.run_once()
    assert len(h.backend.calls) == 1
    h.clock.advance(1)
    await s.run_once()
    assert len(h.backend.calls) == 2
    assert s.next_due() == h.clock.now() + 89


async def test_unchanged_root_is_skipped_until_it_changes(tmp_path):
    h = Harness(tmp_path, {"a": 1}, every=10)
    s = h.scheduler()
    await s.run_once()
    h.clock.advance(10)
    await s.run_once()
    assert len(h.backend.calls) == 1
    assert h.of(JobSkipped)[-1].reason == "root unchanged"
    h.batch("a", 2)
    h.clock.advance(10)
    await s.run_once()
    assert len(h.backend.calls) == 2
    assert h.of(ReceiptWritten)[-1].root == root(2)


async def test_anchor_unchanged_heartbeats(tmp_path):
    h = Harness(tmp_path, {"a": 1}, every=10, unchanged=True)
    s = h.scheduler()
    for _ in range(3):
        await s.run_once()
        h.clock.advance(10)
    assert len(h.backend.calls) == 3


@pytest.mark.parametrize(
    ("error", "multiplier"),
    [(NetworkError("ECONNREFUSED"), 1.0), (AuthError("401"), 2.0), (ValidationError("bad"), 0.5),
     (RuntimeError("something odd"), 1.0)],
)
async def test_failure_applies_phi_backoff_per_kind_and_success_resets(tmp_path, error, multiplier):
    h = Harness(tmp_path, {"a": 1}, every=3600)
    s = h.scheduler()
    h.backend.fail_with = error
    t0 = h.clock.now()
    await s.run_once()
    assert s.next_due() == pytest.approx(t0 + 5.0 * PHI * multiplier)
    # Not retried before the backoff delay is over...
    h.clock.advance(5.0 * PHI * multiplier - 0.01)
    await s.run_once()
    assert len(h.backend.calls) == 1
    # ...retried after it, at the next level.
    h.clock.advance(0.01)
    await s.run_once()
    assert len(h.backend.calls) == 2
    assert s.view(JobKey("a", "fast")).state.backoff_level == 2
    assert s.next_due() == pytest.approx(h.clock.now() + 5.0 * PHI**2 * multiplier)
    h.backend.fail_with = None
    h.clock.advance(5.0 * PHI**2 * multiplier)
    await s.run_once()
    view = s.view(JobKey("a", "fast"))
    assert view.state.backoff_level == 0 and view.status == "ok"
    assert s.next_due() == pytest.approx(h.clock.now() + 3600)
    assert [e.kind for e in h.of(AnchorFailed)] == [str(error.kind if hasattr(error, "kind") else "unknown")] * 2


async def test_backoff_level_is_capped(tmp_path):
    h = Harness(tmp_path, {"a": 1}, every=3600)
    s = h.scheduler()
    h.backend.fail_with = NetworkError("timeout")
    for _ in range(10):
        await s.run_once()
        h.clock.set(s.next_due())
    assert s.view(JobKey("a", "fast")).state.backoff_level == 7
    assert s.next_due() - (h.clock.now() - 0) <= 5.0 * PHI**7 + 1e-6


async def test_a_job_in_flight_is_never_started_twice(tmp_path):
    h = Harness(tmp_path, {"a": 1}, every=1, unchanged=True)
    s = h.scheduler()
    h.backend.gate = asyncio.Event()
    s.run_due()
    await until(lambda: h.backend.calls)
    for _ in range(5):  # five overlapping passes while the first call hangs
        h.clock.advance(1)
        s.run_due()
        await asyncio.sleep(0)
    s.force(JobKey("a", "fast"))
    s.run_due()
    await asyncio.sleep(0)
    assert s.view(JobKey("a", "fast")).status == "anchoring"
    h.backend.gate.set()
    await s.settle()
    assert len(h.backend.calls) == 1
    assert len(h.of(ReceiptWritten)) == 1


async def test_a_one_at_a_time_target_folds_the_jobs_due_meanwhile_into_its_next_call(tmp_path):
    """btc's rule (one unmined transaction per signer): while a call hangs, jobs forced one
    pass each wait, not in flight; the call after it anchors all of them at once. A job a
    reload removes meanwhile is left out; one that failed is not anchored twice."""
    h = Harness(tmp_path, {"a": 1, "b": 2, "c": 3, "d": 4}, every=3600)
    h.backend.one_at_a_time = True
    s = h.scheduler()
    s.pause()  # only what is forced runs
    h.backend.gate = asyncio.Event()
    s.force(JobKey("a", "fast"))
    s.run_due()
    await until(lambda: h.backend.calls)
    for ns in "bcd":  # three passes while a's call hangs
        h.clock.advance(1)
        assert s.force(JobKey(ns, "fast"))
        s.run_due()
        await asyncio.sleep(0)
    assert len(h.backend.calls) == 1 and s.in_flight() == {JobKey("a", "fast")}
    s.apply(h.specs[:3], "without d")
    h.backend.fail_with = NetworkError("not mined in time")
    h.backend.gate.set()
    await s.settle()
    h.backend.fail_with = None
    await s.run_once()  # the pass after: one call for b and c
    assert len(h.backend.calls) == 2
    assert set(h.of(AnchorStarted)[1].jobs) == {JobKey("b", "fast"), JobKey("c", "fast")}
    assert sorted(str(e.job) for e in h.of(ReceiptWritten)) == ["b/fast", "c/fast"]


async def test_catch_up_runs_once_after_a_long_downtime(tmp_path):
    h = Harness(tmp_path, {"a": 1}, every=60, unchanged=True)
    s = h.scheduler()
    await s.run_once()
    s.flush()
    h.clock.advance(60 * 100)  # down for 100 periods
    s2 = h.scheduler()
    await s2.recover()
    await s2.run_once()
    await s2.run_once()
    assert len(h.backend.calls) == 2  # the first anchor, then one catch-up
    assert s2.next_due() == h.clock.now() + 60


async def test_three_namespaces_due_together_share_one_backend_call(tmp_path):
    h = Harness(tmp_path, {"a": 1, "b": 2, "c": 3})
    s = h.scheduler()
    await s.run_once()
    assert len(h.backend.calls) == 1
    assert len(h.of(AnchorStarted)[0].jobs) == 3
    receipts = [load_receipt(Path(e.path)) for e in h.of(ReceiptWritten)]
    assert len(receipts) == 3
    assert len({r.anchored_root for r in receipts}) == 1
    assert all(r.tree_size == 3 for r in receipts)
    for r in receipts:
        await verify_receipt(r, lambda t: h.backend)
    # A tampered proof no longer verifies against the shared attestation.
    bad = dataclasses.replace(receipts[0], batch=BatchRef("x", root(9)))
    with pytest.raises(Exception, match="(?i)proof|root|match"):
        await verify_receipt(bad, lambda t: h.backend)


async def test_force_anchors_now_ignoring_due_time_and_backoff(tmp_path):
    h = Harness(tmp_path, {"a": 1, "b": 2}, every=3600)
    s = h.scheduler()
    await s.run_once()
    h.backend.fail_with = NetworkError("down")
    s.force(JobKey("a", "fast"))
    await s.run_once()
    h.backend.fail_with = None
    assert s.view(JobKey("a", "fast")).state.backoff_level == 1
    s.force(JobKey("a", "fast"))  # during backoff
    await s.run_once()
    assert len(h.backend.calls) == 3
    assert s.view(JobKey("a", "fast")).state.backoff_level == 0
    assert s.force_namespace("b") == 1
    await s.run_once()
    assert [str(e.job) for e in h.of(ReceiptWritten)][-1] == "b/fast"


async def test_pause_stops_new_anchors_and_resume_restarts_them(tmp_path):
    h = Harness(tmp_path, {"a": 1}, every=10, unchanged=True)
    s = h.scheduler()
    await s.run_once()
    s.pause()
    h.clock.advance(100)
    await s.run_once()
    assert len(h.backend.calls) == 1
    assert s.view(JobKey("a", "fast")).status == "paused"
    s.resume()
    await s.run_once()
    assert len(h.backend.calls) == 2


async def test_config_apply_keeps_unchanged_adds_new_drops_removed(tmp_path):
    h = Harness(tmp_path, {"a": 1, "b": 2}, every=60)
    s = h.scheduler()
    await s.run_once()
    a_state = s.view(JobKey("a", "fast")).state
    h.batch("c", 3)
    c = JobSpec(JobKey("c", "fast"), "local:dev", 60, tmp_path / "batches" / "c")
    event = s.apply([h.specs[0], c], "hash2")
    assert event.added == (JobKey("c", "fast"),) and event.removed == (JobKey("b", "fast"),)
    assert s.view(JobKey("a", "fast")).state == a_state
    await s.run_once()
    assert [str(e.job) for e in h.of(ReceiptWritten)][-1] == "c/fast"
    assert JobKey("b", "fast") not in s.jobs
    s.flush()
    assert JobKey("b", "fast") not in StateStore(tmp_path / "data" / "state" / "scheduler.json").load()


async def test_a_reload_of_many_jobs_names_twenty_in_its_log_line_and_all_in_its_event(tmp_path):
    """A reload adding 10,000 namespaces made a log line of 10,000 names, formatted on the
    loop and sent to every `ctl tail`."""
    h = Harness(tmp_path, {"a": 1, "b": 2}, every=60)
    s = h.scheduler()
    many = [JobSpec(JobKey(f"n{i:02d}", "fast"), "local:dev", 60, tmp_path / "batches" / f"n{i:02d}") for i in range(25)]

    event = s.apply([h.specs[0], *many], "hash2")

    assert event.added == tuple(spec.key for spec in many) and event.removed == (JobKey("b", "fast"),)
    [line] = [r for r in h.of(LogRecord) if r.msg == "config applied"]
    assert line.fields["added"] == [f"n{i:02d}/fast" for i in range(20)] + ["... and 5 more"]
    assert line.fields["removed"] == ["b/fast"] and line.fields["changed"] == []


async def test_jobs_a_reload_adds_are_due_at_once_before_those_already_waiting(tmp_path):
    """The jobs a reload adds are scheduled together (one heap order for all of them, not a
    push each): each is due now, ahead of the jobs already anchored and waiting, and the
    next pass anchors every one of them."""
    h = Harness(tmp_path, {"a": 1, "b": 2}, every=3600)
    s = h.scheduler()
    await s.run_once()
    h.clock.advance(10)
    assert s.next_due() == h.clock.now() + 3600 - 10
    many = []
    for i in range(40):
        h.batch(f"n{i:02d}", 100 + i)
        many.append(JobSpec(JobKey(f"n{i:02d}", "fast"), "local:dev", 7200, tmp_path / "batches" / f"n{i:02d}"))

    s.apply([*h.specs, *many], "hash2")

    assert s.next_due() == h.clock.now()
    await s.run_once()
    anchored = [str(e.job) for e in h.of(ReceiptWritten)]
    assert sorted(anchored[2:]) == [f"n{i:02d}/fast" for i in range(40)]
    assert s.next_due() == h.clock.now() - 10 + 3600  # a and b, waiting as before


async def test_a_malformed_batch_fails_only_its_own_job(tmp_path):
    h = Harness(tmp_path, {"good": 1, "bad": 2})
    (tmp_path / "batches" / "bad" / "999999.json").write_text('{"id": "x", "root": "nope"}')
    s = h.scheduler()
    await s.run_once()
    assert [str(e.job) for e in h.of(ReceiptWritten)] == ["good/fast"]
    failed = h.of(AnchorFailed)
    assert [str(e.job) for e in failed] == ["bad/fast"] and failed[0].kind == "validation"
    assert "999999.json" in failed[0].message


async def test_target_guard_refuses_a_mismatched_target(tmp_path):
    h = Harness(tmp_path, {"a": 1})
    s = h.scheduler(target_guard=lambda t: "chain id 8453 does not match eip155:1")
    await s.run_once()
    assert h.backend.calls == []
    view = s.view(JobKey("a", "fast"))  # disabled, not failing (tests/unit/test_disabled_jobs.py)
    assert view.status == "disabled" and "8453" in view.disabled
    assert h.of(AnchorFailed) == []


async def test_loop_sleeps_until_due_and_wakes_on_force(tmp_path):
    h = Harness(tmp_path, {"a": 1}, every=60, unchanged=True)
    s = h.scheduler(tick=3600)
    task = asyncio.create_task(s.run())
    await until(lambda: h.of(ReceiptWritten))
    await s.settle()
    assert len(h.backend.calls) == 1
    h.clock.advance(30)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(h.backend.calls) == 1  # still asleep: not due yet
    s.force(JobKey("a", "fast"))
    await until(lambda: len(h.of(ReceiptWritten)) == 2)
    await s.settle()
    assert len(h.backend.calls) == 2
    await s.stop()
    await task


async def test_the_receipt_folders_are_made_at_start_while_the_first_pass_waits_for_its_anchor(tmp_path):
    h = Harness(tmp_path, {"a": 1, "b": 2, "c": 3})
    shutil.rmtree(tmp_path / "batches" / safe_name("c"))  # nothing to anchor yet: its folder all the same
    h.backend.gate = asyncio.Event()  # the first pass's anchor held: no receipt written yet
    s = h.scheduler(tick=3600)
    task = asyncio.create_task(s.run())
    folders = [tmp_path / "data" / "receipts" / safe_name(ns) for ns in "abc"]
    await until(lambda: all(f.is_dir() for f in folders), message="receipt folders not made at start")
    assert not h.of(ReceiptWritten)
    h.backend.gate.set()
    await until(lambda: len(h.of(ReceiptWritten)) == 2)
    assert {Path(e.path).parent for e in h.of(ReceiptWritten)} == set(folders[:2])
    await s.stop()
    await task


async def test_a_stop_does_not_wait_for_the_rest_of_the_receipt_folders(tmp_path, monkeypatch):
    import core.engine.scheduler

    monkeypatch.setattr(core.engine.scheduler, "PREPARE_CHUNK", 1)  # a folder a call: three calls
    h = Harness(tmp_path, {"a": 1, "b": 2, "c": 3})
    calls: list[list[str]] = []
    called, go_on = threading.Event(), threading.Event()
    real = h.receipts.prepare

    def prepare(namespaces):
        calls.append(list(namespaces))
        called.set()
        go_on.wait(10)
        return real(namespaces)

    h.receipts.prepare = prepare
    s = h.scheduler(tick=3600)
    task = asyncio.create_task(s.run())
    await until(called.is_set)
    stopping = asyncio.create_task(s.stop())
    await asyncio.sleep(0)  # the stop has begun
    go_on.set()
    await stopping
    await task
    assert calls == [["a"]]


async def test_crash_after_attestation_writes_the_receipt_once_at_restart(tmp_path):
    """A crash between the backend's answer and the receipts: the journal has it all."""
    h = Harness(tmp_path, {"a": 1, "b": 2})
    journal = IntentJournal(tmp_path / "data" / "journal")
    leaves = [bytes.fromhex(root(1)[7:]), bytes.fromhex(root(2)[7:])]
    from core import merkle

    digest = merkle.tree_hash(leaves)
    attestation = await h.backend.inner.anchor(digest, lambda facts: None)
    intent = journal.open(
        "local:dev",
        [{"job": "a/fast", "batch": {"id": "000001", "root": root(1)}, "leaf_index": 0},
         {"job": "b/fast", "batch": {"id": "000002", "root": root(2)}, "leaf_index": 1}],
        digest.hex(),
        h.clock.now(),
    )
    intent.attested(attestation.data, attestation.status, attestation.confirmations)
    s = h.scheduler()
    await s.recover()
    await s.run_once()  # roots unchanged since the recovered anchor: nothing new to send
    assert h.backend.calls == []
    written = h.of(ReceiptWritten)
    assert sorted(str(e.job) for e in written) == ["a/fast", "b/fast"]
    for e in written:
        # journalled by a version that anchored the batch roots themselves: version 1 receipts
        assert load_receipt(Path(e.path)).version == 1
        await verify_receipt(load_receipt(Path(e.path)), lambda t: h.backend)
    assert journal.pending() == []
    # A second restart finds nothing left to resolve and writes no duplicate.
    s2 = h.scheduler()
    await s2.recover()
    assert len(list((tmp_path / "data" / "receipts").rglob("*.json"))) == 2


async def test_a_start_with_nothing_to_recover_does_not_wait_for_its_state_save(tmp_path):
    """An empty journal: the start changed no state and no intent waits for a save, so it
    saves nothing; the first save is the one the pass's outcome asks for, after its
    receipts. A slow disk no longer holds the first anchor."""
    h = Harness(tmp_path, {"a": 1})
    saving, disk = threading.Event(), threading.Event()

    def slow_state_write(op: str) -> None:
        if op == "state":
            saving.set()
            disk.wait(10)

    s = h.scheduler(writer=DiskWriter(fault=slow_state_write))
    recovering = asyncio.ensure_future(s.recover())
    done, _ = await asyncio.wait({recovering}, timeout=2.0)
    disk.set()
    await recovering
    assert recovering in done, "the start waited for its state save before the first pass"
    await s.run_once()  # the save is done by then, and the pass anchored
    assert saving.is_set()
    assert len(h.of(ReceiptWritten)) == 1
    assert StateStore(tmp_path / "data" / "state" / "scheduler.json").load()[JobKey("a", "fast")].last_root == root(1)


async def test_crash_before_the_answer_makes_the_jobs_due_again(tmp_path):
    h = Harness(tmp_path, {"a": 1})
    journal = IntentJournal(tmp_path / "data" / "journal")
    journal.open(
        "local:dev",
        [{"job": "a/fast", "batch": {"id": "000001", "root": root(1)}, "leaf_index": 0}],
        root(1)[7:],
        h.clock.now(),
    )
    s = h.scheduler()
    await s.recover()
    assert journal.pending() == []
    await s.run_once()
    assert len(h.backend.calls) == 1 and len(h.of(ReceiptWritten)) == 1


async def test_a_job_queued_again_twice_at_one_instant_is_anchored_once(tmp_path):
    """Two requeues (two reorg reports) at the same instant leave two entries with one due
    time in the schedule: the pass takes the job once, one backend call, one receipt."""
    h = Harness(tmp_path, {"a": 1})
    s = h.scheduler()
    await s.run_once()
    key = JobKey("a", "fast")
    s.requeue(key, "first report")
    s.requeue(key, "second report")
    await s.run_once()
    assert len(h.backend.calls) == 2 and len(h.of(ReceiptWritten)) == 2


# ----- wall-clock steps: cadence and staleness run on monotonic time --------------------------


async def test_wall_clock_stepped_back_an_hour_keeps_the_cadence_of_the_running_loop(tmp_path):
    h = Harness(tmp_path, {"a": 1}, every=60, unchanged=True)
    s = h.scheduler(tick=3600)
    task = asyncio.create_task(s.run())
    try:
        await until(lambda: h.of(ReceiptWritten))
        await s.settle()
        assert len(h.backend.calls) == 1
        h.clock.step_wall(-3600)  # NTP or an operator steps the wall clock back an hour
        for anchors in (2, 3):
            h.clock.advance(60)
            await until(
                lambda n=anchors: len(h.of(ReceiptWritten)) == n, timeout=2,
                message="no anchor one period after the wall went back",
            )
            await s.settle()
            assert len(h.backend.calls) == anchors
        assert s.view(JobKey("a", "fast")).status == "ok"
    finally:
        await s.stop()
        await task


async def test_wall_clock_stepped_forward_a_day_neither_anchors_early_nor_goes_stale(tmp_path):
    from core.observe.health import health

    h = Harness(tmp_path, {"a": 1}, every=60, unchanged=True)
    s = h.scheduler()
    await s.run_once()
    h.clock.advance(30)
    h.clock.step_wall(86400)
    assert s.view(JobKey("a", "fast")).status == "ok"
    code, body = health(s, s.clock.now())
    assert code == 200 and body["status"] == "healthy", body
    await s.run_once()
    assert len(h.backend.calls) == 1, "a wall step forward made the job due early"
    h.clock.advance(30)
    await s.run_once()
    assert len(h.backend.calls) == 2


async def test_state_saved_before_the_wall_went_back_is_due_one_period_after_restart(tmp_path):
    h = Harness(tmp_path, {"a": 1}, every=60, unchanged=True)
    s = h.scheduler()
    await s.run_once()
    await s.stop()
    h.clock.step_wall(-3600)
    s2 = h.scheduler()
    view = s2.view(JobKey("a", "fast"))
    assert view.state.last_anchored_at <= h.clock.now() and view.status == "ok"
    h.clock.advance(60)
    await s2.run_once()
    assert len(h.backend.calls) == 2, "after a restart the job waited for the wall clock to catch up"


async def test_a_big_pass_lets_the_loop_run_and_still_aggregates_into_one_call(tmp_path):
    # 1,200 due jobs: the pass hands the loop back between slices (so /livez and the
    # dashboard answer during it), and the jobs still go to the backend as one group.
    from core.engine import PASS_SLICE

    n = 1200
    h = Harness(tmp_path, {f"ns{i:04d}": i + 1 for i in range(n)})
    s = h.scheduler()
    turns = 0
    scanning = True

    async def other_work() -> None:
        nonlocal turns
        while scanning:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.get_running_loop().create_task(other_work())
    await asyncio.sleep(0)
    turns = 0
    started = await s._run_due_in_slices()
    scanning = False
    await other
    assert started == n
    assert turns >= n // PASS_SLICE  # the loop ran between slices, not only after the pass
    await s.settle()
    assert len(h.backend.calls) == 1  # one aggregated call for the whole pass
    await until(lambda: len(h.of(ReceiptWritten)) == n, timeout=60)


async def test_a_job_due_after_the_passs_read_is_anchored_by_the_next_pass(tmp_path):
    """A job that becomes due between the pass's batch read and the pass itself is not read
    on the loop: it is left to the next pass, which must still find it (it was once pushed
    back into the heap at `now` while the pass was draining the heap up to `now`, so the
    same pass popped and dropped it: never anchored again)."""
    h = Harness(tmp_path, {"a": 1, "b": 2}, every=60, unchanged=True)
    h.specs[1] = dataclasses.replace(h.specs[1], every=61)  # b falls due a second after a
    s = h.scheduler()
    await s.run_once()
    assert len(h.of(ReceiptWritten)) == 2
    h.clock.advance(60)
    await s._read_due_batches()  # the pass's read: only a is due yet
    h.clock.advance(1.5)  # the read took a while: b is due now too
    s.run_due()
    await s.settle()
    anchored = [str(e.job) for e in h.of(ReceiptWritten)]
    assert anchored.count("a/fast") == 2 and anchored.count("b/fast") == 1
    assert s.next_due() is not None and s.next_due() <= h.clock.now(), "b is lost"
    await s.run_once()
    anchored = [str(e.job) for e in h.of(ReceiptWritten)]
    assert anchored.count("b/fast") == 2
