"""What the engine shows of a job: one immutable `JobView` per job.

The dashboard (tui/), the wire format (core/wire.py), /health and the metrics read jobs
through it; they never import the engine for it. `core.engine.Scheduler.view` builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.jobs import JobKey, JobSpec, JobState
from core.status import JobStatus


@dataclass(frozen=True, slots=True)
class TargetView:
    """One target of a redundant job (several targets, `min` of them): when it last attested,
    and whether it is backing off on its own (until `retry_at`, after `failures` failures)."""

    target: str
    attested_at: float | None = None
    failures: int = 0
    retry_at: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "attested_at": self.attested_at, "failures": self.failures,
            "retry_at": self.retry_at, "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetView:
        return cls(
            str(d["target"]), d.get("attested_at"), int(d.get("failures") or 0), d.get("retry_at"), d.get("error")
        )


@dataclass(frozen=True, slots=True)
class JobView:
    """An immutable snapshot of one job for the dashboard, health and metrics."""

    spec: JobSpec
    state: JobState
    due_at: float | None
    in_flight: bool
    status: JobStatus  # core.status: ok | due | anchoring | backing_off | stale | paused | error | disabled
    disabled: str | None = None  # why the job cannot run (its target is refused), else None
    targets: tuple[TargetView, ...] = ()  # a redundant job's targets, each with its own state

    @property
    def key(self) -> JobKey:
        return self.spec.key
