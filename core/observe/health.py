"""Health, liveness and readiness, computed from the engine's own view of its jobs.

`/health` (the VaultMesh contract)::

    {"status": "healthy" | "degraded" | "unhealthy",
     "uptime": <seconds since the engine started>,
     "lastTick": <epoch seconds of the last scheduling pass, or null>,
     "namespaces": {"<name>": {"lastAnchor": {"<cadence>": <epoch seconds or null>},
                               "backoff": <max backoff level over its cadences>,
                               "status": "ok" | "backing_off" | "stale"}}}

- A job is backing off while it has consecutive failures; it is stale when it has not
  anchored within `stale_factor` x its period (`scheduler.stale_factor`, default 2),
  counted from its last anchor, or from the engine's start if it never anchored.
  A namespace is `backing_off` if any cadence is, else `stale` if any cadence is.
- `unhealthy`: the engine loop is stopped, or stuck (no pass within max(3 x tick, 30 s));
  `degraded`: any namespace not ok; else `healthy`. 200 only when healthy, else 503.

Nothing here reads a secret or a file's contents: only times, levels and names.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

STUCK_MIN_SECONDS = 30.0


def stuck_after(engine: Any) -> float:
    """Seconds without a pass after which the loop counts as stuck."""
    return max(3.0 * float(engine.tick), STUCK_MIN_SECONDS)


def engine_stopped(engine: Any) -> bool:
    return bool(engine.stopping)


def loop_problem(engine: Any, now: float) -> str | None:
    """Why the engine loop is not alive (stopped / stuck), or None."""
    if engine_stopped(engine):
        return "engine stopped"
    last = engine.last_tick if engine.last_tick is not None else engine.started_at
    silent = now - last
    if silent > stuck_after(engine):
        what = "no scheduling pass" if engine.last_tick is not None else "no first pass"
        return f"engine stuck: {what} for {silent:.0f}s"
    return None


def _epoch(value: float | None) -> int | None:
    return None if value is None else int(math.floor(value))


def job_status(view: Any) -> str:
    """The /health status of a job, from the engine's own status (one definition of stale)."""
    if view.status in ("backing_off", "error"):
        return "backing_off"
    return "stale" if view.status == "stale" else "ok"


def health(engine: Any, now: float) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /health for `engine` (a core.engine.Scheduler) at time `now`."""
    namespaces: dict[str, dict[str, Any]] = {}
    degraded = False
    for view in engine.views(now):
        key = view.spec.key
        ns = namespaces.get(key.namespace)
        if ns is None:
            ns = namespaces[key.namespace] = {"lastAnchor": {}, "backoff": 0, "status": "ok"}
        ns["lastAnchor"][key.cadence] = _epoch(view.state.last_anchored_at)
        ns["backoff"] = max(ns["backoff"], int(view.state.backoff_level))
        status = job_status(view)
        if status == "backing_off" or (status == "stale" and ns["status"] == "ok"):
            ns["status"] = status
        if status != "ok":
            degraded = True
    problem = loop_problem(engine, now)
    overall = "unhealthy" if problem else "degraded" if degraded else "healthy"
    body: dict[str, Any] = {
        "status": overall,
        "uptime": round(max(0.0, now - engine.started_at), 3),
        "lastTick": _epoch(engine.last_tick),
        "namespaces": namespaces,
    }
    if problem:
        body["reason"] = problem
    return (200 if overall == "healthy" else 503), body


def livez(engine: Any, now: float) -> tuple[int, dict[str, Any]]:
    """The engine loop is alive: not stopped and a pass within max(3 x tick, 30 s)."""
    problem = loop_problem(engine, now)
    if problem:
        return 503, {"status": "dead", "reason": problem}
    return 200, {"status": "alive", "lastTick": _epoch(engine.last_tick)}


def _state_readable(runtime: Any) -> bool:
    cfg = runtime.loaded.config
    data_dir = Path(cfg.scheduler.data_dir)
    path = Path(cfg.scheduler.state_file or data_dir / "state" / "scheduler.json")
    if path.exists():
        return path.is_file() and os.access(path, os.R_OK)
    # Not written yet (first start): its folder must be usable when it is.
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    return folder is not None and os.access(folder, os.W_OK | os.X_OK)


def readyz(runtime: Any) -> tuple[int, dict[str, Any]]:
    """Ready: a config is loaded, the state file is readable, the engine made its first pass."""
    checks = {
        "config": getattr(runtime, "loaded", None) is not None,
        "state": False,
        "engine": runtime.engine.last_tick is not None and not engine_stopped(runtime.engine),
    }
    if checks["config"]:
        try:
            checks["state"] = _state_readable(runtime)
        except OSError:
            checks["state"] = False
    ready = all(checks.values())
    body = {
        "status": "ready" if ready else "not ready",
        "checks": {name: "ok" if good else "failed" for name, good in checks.items()},
    }
    return (200 if ready else 503), body


__all__ = ["health", "livez", "readyz", "loop_problem", "stuck_after"]
