"""The engine: the Scheduler and what it is made of (docs/architecture.md, "The engine")."""

from core.engine.scheduler import PASS_SLICE, Scheduler
from core.engine.switch import PlannedJobs, plan_jobs

__all__ = ["PASS_SLICE", "PlannedJobs", "Scheduler", "plan_jobs"]
