"""A configuration's jobs made ready off the loop, switched in on it in one turn.

`plan_jobs` keys a config's specs and makes a fresh record for each: on a reload's worker
thread (core/runtime.py `_plan`), beside the config's load. `switch_jobs` is the part
`Scheduler.apply` runs on the loop: records removed, the planned ones of the new jobs
taken, changed specs set, the target guard asked again for every job, what is new
scheduled. It stays one turn, so that no pass, snapshot or client ever sees half a config;
what it costs is kept down instead (a reload adding 10,000 namespaces held the loop
50-57 ms, over the /livez target of 50 ms: issue 24). A plan is used once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from core.engine.outcomes import Outcomes
from core.engine.record import JobRecord
from core.engine.table import JobTable
from core.jobs import JobKey, JobSpec, JobState

# Returns the reason a target must not be used (e.g. chain id mismatch), or None.
TargetGuard = Callable[[str], "str | None"]


@dataclass(frozen=True)
class PlannedJobs:
    """A config's jobs by key, and a new record for each (taken for those not configured
    yet: their record is all a new job needs before it is scheduled)."""

    specs: dict[JobKey, JobSpec]
    fresh: dict[JobKey, JobRecord]


def plan_jobs(specs: Iterable[JobSpec]) -> PlannedJobs:
    keyed = {spec.key: spec for spec in specs}
    return PlannedJobs(keyed, {key: JobRecord(spec, JobState()) for key, spec in keyed.items()})


@dataclass(frozen=True)
class Switched:
    added: tuple[JobKey, ...]
    removed: tuple[JobKey, ...]
    changed: tuple[JobKey, ...]


def switch_jobs(
    table: JobTable, outcomes: Outcomes, planned: PlannedJobs, guard: TargetGuard, now: float
) -> Switched:
    """Make `planned` the table's jobs at `now`: unchanged jobs keep their record, new ones
    start fresh (`enabled_at` now: stale counts from here, not the start), a job removed
    while its anchor was under way leaves its remains (core/engine/table.py)."""
    new, records = planned.specs, table.records
    added = tuple(key for key in new if key not in records)
    removed = tuple(key for key in records if key not in new)
    changed = tuple(key for key in new if key in records and records[key].spec != new[key])
    for key in removed:
        table.remove(key)
    fresh = planned.fresh
    table.adopt(fresh[key] for key in added)
    for key in changed:
        table.add(new[key])
    for key in added:
        records[key].enabled_at = now
    # The guard is asked again for every job: a new config can accept or refuse a target
    # whose job did not change (e.g. a corrected chainId in the target settings). A job
    # accepted before and now is left alone (set_disabled would do nothing with it).
    enabled = []
    for key, spec in new.items():
        reason = guard(spec.target)
        if (reason or records[key].disabled is not None) and outcomes.set_disabled(key, reason):
            enabled.append(key)
    flight = table.flight
    table.schedule_all((key for key in dict.fromkeys((*added, *changed, *enabled)) if key not in flight), now)
    return Switched(added, removed, changed)
