"""core/status.py: the one definition of job status, staleness, engine-stuck and health."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from core.status import Health, JobStatus, count, job_status, loop_problem, overall, stuck_after

NOW = 1_000.0


def status(**kw) -> JobStatus:
    base = dict(in_flight=False, failing=False, gave_up=False, paused=False, current_since=NOW,
                period=60.0, stale_factor=2.0, due_at=NOW + 10, now=NOW)
    return job_status(**{**base, **kw})


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, JobStatus.OK),
        ({"due_at": NOW}, JobStatus.DUE),
        ({"current_since": NOW - 120}, JobStatus.OK),  # exactly 2 x period: not yet stale
        ({"current_since": NOW - 121}, JobStatus.STALE),
        ({"current_since": NOW - 121, "stale_factor": 3.0}, JobStatus.OK),
        ({"paused": True, "current_since": NOW - 999}, JobStatus.PAUSED),
        ({"failing": True, "paused": True}, JobStatus.BACKING_OFF),
        ({"failing": True, "gave_up": True}, JobStatus.ERROR),
        ({"in_flight": True, "failing": True}, JobStatus.ANCHORING),
    ],
)
def test_job_status(kw, expected):
    assert status(**kw) == expected


def test_stuck_after_is_three_ticks_and_at_least_30_seconds():
    assert stuck_after(1.0) == 30.0
    assert stuck_after(20.0) == 60.0
    assert loop_problem(stopped=False, last_tick=NOW - 60, started_at=0, tick=20.0, now=NOW) is None
    assert "no scheduling pass for 61s" in str(loop_problem(stopped=False, last_tick=NOW - 61, started_at=0, tick=20.0, now=NOW))
    assert "no first pass" in str(loop_problem(stopped=False, last_tick=None, started_at=NOW - 31, tick=1.0, now=NOW))
    assert loop_problem(stopped=True, last_tick=NOW, started_at=0, tick=1.0, now=NOW) == "engine stopped"


def view(s: JobStatus, level: int = 0):
    return SimpleNamespace(status=s, state=SimpleNamespace(backoff_level=level))


def test_counts_and_overall_health():
    c = count([view(JobStatus.OK), view(JobStatus.ANCHORING, level=2), view(JobStatus.BACKING_OFF, 1),
               view(JobStatus.PAUSED), view(JobStatus.DUE)])
    assert (c.ok, c[JobStatus.ANCHORING], c.in_backoff, c.total) == (3, 1, 2, 5)
    assert overall(c, None) == (Health.DEGRADED, "1 backing off")
    assert overall(c, "engine stopped") == (Health.UNHEALTHY, "engine stopped")
    assert overall(count([view(JobStatus.OK), view(JobStatus.ANCHORING)]), None) == (Health.HEALTHY, "")
    assert overall(count([view(JobStatus.STALE), view(JobStatus.ERROR)]), None) == (Health.DEGRADED, "1 error")
