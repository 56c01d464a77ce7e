"""The pass's prefetch finds the due entries of the heap by a pruned walk (a few due among
100,000: O(due), where a scan of the heap cost several ms every tick), or by one scan
when most of it is due (core/engine/scheduler.py `due_entries`)."""

from __future__ import annotations

import heapq
import random

import pytest

from core.engine import scheduler
from core.engine.scheduler import due_entries
from core.jobs import JobKey


def _heap(times: list[float]) -> list[tuple[float, int, JobKey]]:
    heap: list[tuple[float, int, JobKey]] = []
    for seq, when in enumerate(times):
        heapq.heappush(heap, (when, seq, JobKey(f"ns{seq}", "fast")))
    return heap


@pytest.mark.parametrize("seed", range(20))
def test_the_due_entries_are_every_entry_due_by_now_whichever_way_found(seed: int) -> None:
    rng = random.Random(seed)
    heap = _heap([rng.uniform(0, 1000) for _ in range(rng.randint(0, 3000))])
    for now in (-1.0, 0.5, 3.0, 60.0, 500.0, 2000.0):
        assert sorted(due_entries(heap, now)) == sorted(e for e in heap if e[0] <= now)


class _Counting(list):  # the heap, counting the entries read from it
    reads = 0

    def __getitem__(self, index):
        _Counting.reads += 1
        return super().__getitem__(index)

    def __iter__(self):
        _Counting.reads += len(self)
        return super().__iter__()


def test_a_few_due_among_many_cost_what_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    heap = _Counting(_heap([1000.0 + i for i in range(100_000)] + [5.0, 6.0, 7.0]))
    heapq.heapify(heap)
    _Counting.reads = 0
    assert sorted(e[0] for e in due_entries(heap, 10.0)) == [5.0, 6.0, 7.0]
    assert _Counting.reads < 50, _Counting.reads  # not 100,000
    _Counting.reads = 0
    assert len(due_entries(heap, 1e9)) == len(heap)  # all due: one scan
    assert _Counting.reads < 2 * len(heap) / scheduler.WALK_SHARE + len(heap) + 10
