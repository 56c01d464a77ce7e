"""What the engine shows of a job: its `JobView` (core/views.py) with its status by the one
definition in core.status, and when a job in flight counts as stuck."""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping

from core.anchors.base import Backend
from core.engine.context import BackendFor
from core.engine.record import JobRecord
from core.errors import ErrorKind
from core.jobs import JobKey
from core.status import job_status
from core.views import JobView, TargetView

# A job in flight longer than STUCK_TIMEOUTS x its backend's time limit is stuck.
STUCK_TIMEOUTS = 4
STUCK_MIN_SECONDS = 60.0
DEFAULT_BACKEND_TIMEOUT = 30.0


def backend_timeout(backend: Backend) -> float:
    """The longest a backend says one call may take (its own settings), else a default."""
    for value in (
        getattr(backend, "call_timeout", None),
        getattr(backend, "receipt_timeout", None),
        getattr(getattr(backend, "settings", None), "timeout", None),
    ):
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return DEFAULT_BACKEND_TIMEOUT


def stuck_after(backend_for: BackendFor, record: JobRecord | None) -> float:
    """Seconds in flight after which a job counts as stuck: a multiple of its backend's
    own time limit (STUCK_TIMEOUTS x), never under STUCK_MIN_SECONDS."""
    timeout = DEFAULT_BACKEND_TIMEOUT
    if record is not None:
        try:
            timeout = backend_timeout(backend_for(record.spec.target))
        except Exception:
            pass
    return max(STUCK_TIMEOUTS * timeout, STUCK_MIN_SECONDS)


def job_view(
    record: JobRecord, *, in_flight: bool, stuck: bool, paused: bool, started_at: float,
    max_level: int, stale_factor: float, now: float, targets: tuple[TargetView, ...] = (),
) -> JobView:
    """The job's view at `now` (on the engine's clock), its status by core.status."""
    spec, state = record.spec, record.state
    status = job_status(
        in_flight=in_flight,
        stuck=stuck,
        disabled=record.disabled is not None,
        failing=bool(state.failures),
        gave_up=state.last_error_kind == ErrorKind.VALIDATION and state.backoff_level >= max_level,
        paused=paused,
        # Proven current last, else its first chance to be: the start, or a later reload
        # that added or enabled it (a job that could not run cannot have been current).
        current_since=max(
            state.current_at or state.last_anchored_at or started_at,
            started_at if record.enabled_at is None else record.enabled_at,
        ),
        period=spec.every,
        stale_factor=stale_factor,
        due_at=record.due,
        now=now,
    )
    return JobView(spec, state, record.due, in_flight, status, record.disabled, targets)


def job_views(
    records: Mapping[JobKey, JobRecord], *, in_flight: Container[JobKey], stuck: Callable[[JobKey], bool],
    targets_of: Callable[[str], tuple[TargetView, ...]], paused: bool, started_at: float, max_level: int,
    stale_factor: float, now: float,
) -> list[JobView]:
    """Every job's `job_view`, with a redundant target's views asked once per target (what
    is the same for every job read once: 100,000 views about twice as fast as one by one)."""
    of_target: dict[str, tuple[TargetView, ...]] = {}
    out = []
    for key, record in records.items():
        target = record.spec.target
        targets = of_target.get(target)
        if targets is None:
            targets = of_target[target] = targets_of(target)
        flying = key in in_flight
        out.append(job_view(
            record, in_flight=flying, stuck=flying and stuck(key), paused=paused, started_at=started_at,
            max_level=max_level, stale_factor=stale_factor, now=now, targets=targets,
        ))
    return out
