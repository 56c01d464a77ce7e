"""The engine: the Scheduler and what it is made of (docs/architecture.md, "The engine")."""

from core.engine.scheduler import PASS_SLICE, Scheduler

__all__ = ["PASS_SLICE", "Scheduler"]
