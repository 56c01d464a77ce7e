"""What the engine shows of a job: one immutable `JobView` per job.

The dashboard (tui/), the wire format (core/wire.py), /health and the metrics read jobs
through it; they never import the engine for it. `core.engine.Scheduler.view` builds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.jobs import JobKey, JobSpec, JobState
from core.status import JobStatus


@dataclass(frozen=True, slots=True)
class JobView:
    """An immutable snapshot of one job for the dashboard, health and metrics."""

    spec: JobSpec
    state: JobState
    due_at: float | None
    in_flight: bool
    status: JobStatus  # core.status: ok | due | anchoring | backing_off | stale | paused | error | disabled
    disabled: str | None = None  # why the job cannot run (its target is refused), else None

    @property
    def key(self) -> JobKey:
        return self.spec.key
