"""One definition of a job's status and of the scheduler's health.

The engine (`core.engine.looks.job_view`), `/health` (core.observe.health), the metrics, the
dashboard's Namespaces pane and header, and the bundled alert rules (ops/alerts.yml) all
use what is defined here, so none of them can disagree about when a job is stale or when
the engine counts as stuck.

- A job is *stale* when it has not been proven current within `stale_factor` x its
  period. Current means anchored, or found unchanged since its last anchor (a quiet
  namespace is current, not stale). Counted from the engine's start when the job was
  never current. Metrics export the same instant as `vmsh_job_current_timestamp_seconds`
  and `VmshJobNotAnchoredInTime` fires on it.
- The engine loop is *stuck* when it made no scheduling pass for
  max(STUCK_TICKS x tick, STUCK_MIN_SECONDS).
- Health: unhealthy when the loop is stopped, failed or stuck; degraded when any job is
  in error, backing off or stale, or its store, its own files or (cluster mode) its clock
  are in trouble (`overall(..., also=)`); else healthy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class JobStatus(StrEnum):
    OK = "ok"
    DUE = "due"
    ANCHORING = "anchoring"
    BACKING_OFF = "backing_off"
    STALE = "stale"
    PAUSED = "paused"
    ERROR = "error"  # a validation failure at the maximum backoff level: needs a person
    DISABLED = "disabled"  # the job's target is refused (btc, a chain id mismatch): never runs
    STUCK = "stuck"  # in flight for longer than its bound (Scheduler.stuck_after): a hang

    @property
    def text(self) -> str:
        """The word shown to a person: `backing off`, not `backing_off`."""
        return self.value.replace("_", " ")


# Statuses that make the scheduler degraded. DISABLED is not one: a job that can never run is shown with its reason, it is not an outage.
PROBLEMS = (JobStatus.ERROR, JobStatus.BACKING_OFF, JobStatus.STALE, JobStatus.STUCK)

STUCK_TICKS = 3
STUCK_MIN_SECONDS = 30.0


class Health(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


def stale_after(period: float, stale_factor: float) -> float:
    """Seconds without being current after which a job is stale."""
    return stale_factor * period


def is_stale(*, current_since: float, period: float, stale_factor: float, now: float) -> bool:
    return now - current_since > stale_after(period, stale_factor)


def job_status(
    *,
    in_flight: bool,
    failing: bool,
    gave_up: bool,
    paused: bool,
    current_since: float,
    period: float,
    stale_factor: float,
    due_at: float | None,
    now: float,
    disabled: bool = False,
    stuck: bool = False,
) -> JobStatus:
    """The status of one job. `failing`: consecutive failures; `gave_up`: failing on a
    validation error at the maximum backoff level; `current_since`: the last time the job
    was proven current (else its first chance to be: the engine's start); `stuck`: in
    flight for longer than its bound."""
    if in_flight:
        return JobStatus.STUCK if stuck else JobStatus.ANCHORING
    if disabled:  # its target is refused: it never runs, so it is neither due nor stale
        return JobStatus.DISABLED
    if failing:
        return JobStatus.ERROR if gave_up else JobStatus.BACKING_OFF
    if paused:
        return JobStatus.PAUSED
    if is_stale(current_since=current_since, period=period, stale_factor=stale_factor, now=now):
        return JobStatus.STALE
    if due_at is not None and due_at <= now:
        return JobStatus.DUE
    return JobStatus.OK


def stuck_after(tick: float) -> float:
    """Seconds without a scheduling pass after which the engine loop counts as stuck."""
    return max(STUCK_TICKS * float(tick), STUCK_MIN_SECONDS)


def loop_problem(
    *, stopped: bool, last_tick: float | None, started_at: float, tick: float, now: float
) -> str | None:
    """Why the engine loop is not alive (stopped / stuck), or None."""
    if stopped:
        return "engine stopped"
    silent = now - (last_tick if last_tick is not None else started_at)
    if silent > stuck_after(tick):
        what = "no scheduling pass" if last_tick is not None else "no first pass"
        return f"engine stuck: {what} for {silent:.0f}s"
    return None


@dataclass(frozen=True, slots=True)
class Counts:
    """Jobs per status, and how many are in backoff (any backoff level, which is also
    what the dashboard's Backoff pane lists: an in-flight retry is still in backoff)."""

    by_status: dict[JobStatus, int]
    in_backoff: int
    total: int

    def __getitem__(self, status: JobStatus) -> int:
        return self.by_status.get(status, 0)

    @property
    def ok(self) -> int:
        """Jobs with nothing to watch: ok, due, or paused on purpose."""
        return self[JobStatus.OK] + self[JobStatus.DUE] + self[JobStatus.PAUSED]


def count(views: Iterable[object]) -> Counts:
    """Counts over engine views (anything with `.status` and `.state.backoff_level`)."""
    by_status: dict[JobStatus, int] = {}
    in_backoff = total = 0
    for v in views:
        total += 1
        status = JobStatus(v.status)  # type: ignore[attr-defined]
        by_status[status] = by_status.get(status, 0) + 1
        if v.state.backoff_level > 0:  # type: ignore[attr-defined]
            in_backoff += 1
    return Counts(by_status, in_backoff, total)


def overall(counts: Counts, problem: str | None, also: Iterable[str | None] = ()) -> tuple[Health, str]:
    """(health, why) from the job counts, the engine loop's problem, if any, and `also`:
    what makes the scheduler degraded though no job shows it (core.control.side_problems:
    its store does not answer, its own files cannot be written, its clock is off the
    store's). `/health` and the dashboard's header both call this with the same inputs."""
    if problem:
        return Health.UNHEALTHY, problem
    for status in PROBLEMS:
        if counts[status]:
            return Health.DEGRADED, f"{counts[status]} {status.text}"
    for reason in also:
        if reason:
            return Health.DEGRADED, reason
    return Health.HEALTHY, ""


__all__ = [
    "JobStatus", "Health", "Counts", "PROBLEMS", "STUCK_TICKS", "STUCK_MIN_SECONDS",
    "job_status", "is_stale", "stale_after", "stuck_after", "loop_problem", "count", "overall",
]
