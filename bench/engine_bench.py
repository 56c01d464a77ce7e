"""Engine benchmarks: pass cost with nothing due, cost per due job, memory per job."""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
import tracemalloc
from pathlib import Path

from core.anchors.base import Attestation
from core.clock import FakeClock
from core.engine import Scheduler
from core.events import EventBus
from core.jobs import JobKey, JobSpec
from core.sources import Batch
from core.store.files.journal import IntentJournal
from core.store.files.receipts import ReceiptStore
from core.store.files.state import StateStore


class NullBackend:
    """Answers at once: isolates the engine's own cost from any backend's."""

    target = "local:bench"

    async def anchor(self, digest, note, *, policy=None):
        return Attestation({"scheme": "bench"})

    async def recover(self, digest, notes):
        return None

    async def verify(self, attestation, digest, *, required=None, policy=None):
        return None

    async def close(self):
        return None


def make_specs(n: int, every: int = 3600) -> list[JobSpec]:
    return [JobSpec(JobKey(f"ns{i}", "fast"), "local:bench", every, Path(f"/nonexistent/{i}")) for i in range(n)]


def make_scheduler(
    tmp: Path, specs: list[JobSpec], clock: FakeClock, receipts: ReceiptStore | None = None
) -> Scheduler:
    roots = {}

    def read_batch(folder: Path) -> Batch:
        root = roots.get(folder)
        if root is None:
            root = roots[folder] = "sha256:" + f"{hash(folder) & (2**256 - 1):064x}"
        return Batch(id="1", root=root, path=folder)

    return Scheduler(
        jobs=specs,
        clock=clock,
        bus=EventBus(),
        backend_for=lambda target: NullBackend(),
        state_store=StateStore(tmp / "state.json"),
        journal=IntentJournal(tmp / "journal"),
        receipts=receipts or ReceiptStore(tmp / "receipts"),
        tick=3600,
        read_batch=read_batch,
    )


async def idle_pass_cost(n: int) -> float:
    """Seconds per scheduling pass when nothing is due, with n jobs scheduled."""
    with tempfile.TemporaryDirectory() as tmp:
        clock = FakeClock()
        s = make_scheduler(Path(tmp), make_specs(n), clock)
        # Put every job one period ahead, as after a first round of anchors.
        for key in list(s.jobs):
            s._jobs[key].state.last_anchored_at = clock.now()
            s._jobs.schedule(key)
        clock.advance(1)
        s.run_due()  # drops the superseded first-round heap entries (a one-off, not idle cost)
        passes = 2000
        t0 = time.perf_counter()
        for _ in range(passes):
            s.run_due()
        return (time.perf_counter() - t0) / passes


async def due_job_cost(n: int) -> float:
    """Seconds of engine time per due job (batch read stubbed, null backend), n jobs due."""
    with tempfile.TemporaryDirectory() as tmp:
        clock = FakeClock()
        receipts = ReceiptStore(Path(tmp) / "receipts")
        receipts.write = lambda receipt: Path("/dev/null")  # type: ignore[method-assign]  # the engine, not the disk
        s = make_scheduler(Path(tmp), make_specs(n), clock, receipts)
        t0 = time.perf_counter()
        await s.run_once()
        return (time.perf_counter() - t0) / n


def memory_per_job(n: int) -> float:
    """Bytes of Python heap per job held by the engine (specs, state, heap, indexes)."""
    with tempfile.TemporaryDirectory() as tmp:
        specs = make_specs(n)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        loop = asyncio.new_event_loop()
        s = loop.run_until_complete(_build(Path(tmp), specs))
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        loop.close()
        del s
        return total / n


async def _build(tmp: Path, specs: list[JobSpec]) -> Scheduler:
    return make_scheduler(tmp, specs, FakeClock())


def run() -> list[tuple[str, str, str]]:
    rows = []
    for n in (10, 1_000, 10_000, 100_000):
        cost = asyncio.run(idle_pass_cost(n))
        rows.append((f"idle pass, {n:,} jobs", f"{cost * 1e6:.1f} us", "< 1 ms at 100,000"))
    per_job = asyncio.run(due_job_cost(10_000))
    rows.append(("engine cost per due job (10,000 due)", f"{per_job * 1e6:.1f} us", ""))
    mem = memory_per_job(100_000)
    rows.append(("memory per job (100,000 jobs)", f"{mem:.0f} B", "< 1 KiB"))
    return rows
