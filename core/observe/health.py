"""Health, liveness and readiness, computed from the engine's own view of its jobs.

`/health` (the VaultMesh contract)::

    {"status": "healthy" | "degraded" | "unhealthy",
     "uptime": <seconds since the engine started>,
     "lastTick": <epoch seconds of the last scheduling pass, or null>,
     "namespaces": {"<name>": {"lastAnchor": {"<cadence>": <epoch seconds or null>},
                               "backoff": <max backoff level over its cadences>,
                               "status": "ok" | "backing_off" | "stale",
                               "disabled": {"<cadence>": "<reason>"}  # only if any}},
     "store": {"kind": "file" | "postgresql", "ok": <bool>, "error": <why not ok, or null>},
     "clock": {"ok": <bool>, "offset": <s, ours minus the store's, or null>,
               "uncertainty": <s or null>, "error": <why not ok, or null>},  # cluster mode only
     "replicas": [{"id", "host", "pid", "version", "config_hash", "alive",
                   "heartbeat_at": <epoch seconds>,
                   "clock_offset": <s>, "refusal": "<why it claims nothing>"}],  # the last two
                   # only when known; the cluster's registry; [] with files
     "wallets": {"<target>": {"balance_sats", "anchors_left", "low"}},  # paying signers (btc),
                   # only after one's first anchor of this run
     "warnings": ["replicas run different configs: ...",
                  "btc:x: the signer's balance (N sat) pays M more anchors ..."]}  # only if any

- Job statuses and the thresholds are core.status's (the dashboard and the alert rules
  use the same): a job is backing off while it has consecutive failures (or gave up: in
  error); it is stale when it was not proven current (anchored, or found unchanged)
  within `stale_factor` x its period (`scheduler.stale_factor`, default 2), counted from
  the engine's start if it never was. A namespace is `backing_off` if any cadence is,
  else `stale` if any cadence is.
- A *disabled* job (its target is refused: btc, a chain id mismatch) is listed under its
  namespace's `disabled` with the reason; it never runs, so it makes nothing degraded.
- `unhealthy`: the engine loop is stopped, or stuck (no pass within
  max(core.status.STUCK_TICKS x tick, STUCK_MIN_SECONDS) = max(3 x tick, 30 s));
  `degraded`: any job in a core.status.PROBLEMS status, or the store does not answer
  (core.control.store_status, the rule the dashboard's snapshot uses), or (cluster mode)
  this replica's clock is off the store's by more than core.cluster.MAX_CLOCK_OFFSET, so
  it claims no jobs (core.control.clock_status; /readyz is unaffected: it runs, and the
  other replicas anchor); else `healthy`.
  200 only when healthy, else 503.
- Live replicas running different config hashes is a warning (core.replicas
  config_hash_warning), not a status: each replica is healthy on its own config.
- A signer whose balance pays fewer than its target's `lowBalanceAnchors` more anchors is
  a warning (core/observe/wallets.py), not a status: it still anchors; fund it.

Nothing here reads a secret or a file's contents: only times, levels and names. The
cluster object gives no store URL, and the store's error has any URL cut to its origin.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import status
from core.control import clock_status, side_problems, store_status
from core.replicas import ClusterView, ReplicaInfo, config_hash_warning
from core.status import Health, JobStatus
from core.text import printable

if TYPE_CHECKING:
    from core.engine import Scheduler
    from core.observe.wallets import WalletWatch
    from core.runtime import Runtime
    from core.views import JobView


def engine_stopped(engine: Scheduler) -> bool:
    return bool(engine.stopping)


def loop_problem(engine: Scheduler, now: float) -> str | None:
    """Why the engine loop is not alive (stopped / stuck), or None."""
    return status.loop_problem(
        stopped=engine_stopped(engine), last_tick=engine.last_tick, started_at=engine.started_at,
        tick=engine.tick, now=now,
    )


def _epoch(value: float | None) -> int | None:
    return None if value is None else int(math.floor(value))


# The /health contract's three job statuses; errors (a job that gave up) read as backing_off.
_CONTRACT = {JobStatus.BACKING_OFF: "backing_off", JobStatus.ERROR: "backing_off", JobStatus.STALE: "stale"}


def job_status(view: JobView) -> str:
    """The /health status of a job, from the engine's own status (core.status)."""
    return _CONTRACT.get(view.status, "ok")


def _replica(replica: ReplicaInfo) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": replica.id, "host": replica.host, "pid": replica.pid, "version": replica.version,
        "config_hash": replica.config_hash, "alive": replica.alive, "heartbeat_at": _epoch(replica.heartbeat_at),
    }
    if replica.clock_offset is not None:
        out["clock_offset"] = round(replica.clock_offset, 3)
    if replica.refusal is not None:
        out["refusal"] = printable(replica.refusal)
    return out


def health(
    engine: Scheduler, now: float, cluster: ClusterView | None = None, views: Sequence[JobView] | None = None,
    *, wallets: WalletWatch | None = None,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /health for `engine` (a core.engine.Scheduler) at time `now`;
    `cluster` is the runtime's (core/cluster.py), None with the file store; `views`: the
    jobs' views when the caller has them already (the control socket builds them in slices);
    `wallets` the signers' balances (core/observe/wallets.py)."""
    namespaces: dict[str, dict[str, Any]] = {}
    if views is None:
        views = engine.views(now)
    for view in views:
        key = view.spec.key
        ns = namespaces.get(key.namespace)
        if ns is None:
            ns = namespaces[key.namespace] = {"lastAnchor": {}, "backoff": 0, "status": "ok"}
        ns["lastAnchor"][key.cadence] = _epoch(view.state.last_anchored_at)
        ns["backoff"] = max(ns["backoff"], int(view.state.backoff_level))
        if view.targets:  # a redundant job: each target's own state
            ns.setdefault("targets", {})[key.cadence] = {
                t.target: {
                    "attested": _epoch(t.attested_at), "failures": t.failures,
                    "backoffUntil": _epoch(t.retry_at) if t.retry_at is not None and t.retry_at > now else None,
                    "error": t.error,
                }
                for t in view.targets
            }
        if view.status == JobStatus.DISABLED:
            ns.setdefault("disabled", {})[key.cadence] = getattr(view, "disabled", None) or "disabled"
        job = job_status(view)
        if job == "backing_off" or (job == "stale" and ns["status"] == "ok"):
            ns["status"] = job
    problem = loop_problem(engine, now)
    # Our own files cannot be written, the store does not answer, the clock is off the
    # store's, or a job hangs in flight: degraded even when every job still looks ok (a
    # failed state save fails no job). The same rule as the dashboard's header
    # (core.control.side_problems, core.status.overall).
    storage = getattr(engine, "storage_problem", None)
    stuck = engine.stuck(now) if hasattr(engine, "stuck") else ()
    store = store_status(engine, cluster)
    clock = clock_status(cluster)
    also = side_problems(store, storage=storage, clock=None if clock is None or clock.ok else clock.error or "clock off")
    overall, _why = status.overall(status.count(views), problem, also)
    if overall == Health.HEALTHY and stuck:
        overall = Health.DEGRADED
    replicas = () if cluster is None else tuple(cluster.replicas())
    body: dict[str, Any] = {
        "status": str(overall),
        "uptime": round(max(0.0, now - engine.started_at), 3),
        "lastTick": _epoch(engine.last_tick),
        "namespaces": namespaces,
        "store": {"kind": store.kind, "ok": store.ok, "error": store.error},
        "replicas": [_replica(r) for r in replicas],
    }
    if clock is not None:
        body["clock"] = {"ok": clock.ok, "offset": clock.offset, "uncertainty": clock.uncertainty, "error": clock.error}
    warnings = [w for w in (config_hash_warning(replicas),) if w]
    if wallets is not None and wallets.latest:
        body["wallets"] = {
            target: {"balance_sats": w.sats, "anchors_left": w.anchors_left, "low": w.low}
            for target, w in sorted(wallets.latest.items())
        }
        warnings.extend(wallets.low())
    if warnings:
        body["warnings"] = warnings
    if problem:
        body["reason"] = problem
    if storage:
        body["storage"] = storage
    if stuck:
        body["stuck"] = sorted(str(k) for k in stuck)
    return (200 if overall == Health.HEALTHY else 503), body


def livez(engine: Scheduler, now: float) -> tuple[int, dict[str, Any]]:
    """The engine loop is alive: not stopped and a pass within max(3 x tick, 30 s)."""
    problem = loop_problem(engine, now)
    if problem:
        return 503, {"status": "dead", "reason": problem}
    return 200, {"status": "alive", "lastTick": _epoch(engine.last_tick)}


def _state_readable(runtime: Runtime) -> bool:
    path = getattr(runtime, "state_file", None)  # ours (VMSH_STATE may name the original's)
    if path is None:
        cfg = runtime.loaded.config
        path = Path(cfg.scheduler.state_file or Path(cfg.scheduler.data_dir) / "state" / "scheduler.json")
    if path.exists():
        return path.is_file() and os.access(path, os.R_OK)
    # Not written yet (first start): its folder must be usable when it is.
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    return folder is not None and os.access(folder, os.W_OK | os.X_OK)


def readyz(runtime: Runtime) -> tuple[int, dict[str, Any]]:
    """Ready: a config is loaded, the state file is readable, the engine made its first pass,
    and the store answers."""
    checks = {
        "config": getattr(runtime, "loaded", None) is not None,
        "state": False,
        "engine": runtime.engine.last_tick is not None and not engine_stopped(runtime.engine),
        # Not ready while the engine cannot write its journal, receipts or state.
        "storage": getattr(runtime.engine, "storage_problem", None) is None,
        # Not ready while the store (PostgreSQL in a cluster) does not answer.
        "store": store_status(runtime.engine, getattr(runtime, "cluster", None)).ok,
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


__all__ = ["health", "livez", "readyz", "loop_problem"]
