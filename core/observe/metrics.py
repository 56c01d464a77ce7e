"""Prometheus metrics, fed only from the event bus, on the scheduler's own registry.

`Metrics(bus)` subscribes to the bus and keeps these series up to date:

| metric | type | labels |
|---|---|---|
| `vmsh_anchors_attempted_total` | counter | namespace, cadence, target |
| `vmsh_anchors_succeeded_total` | counter | namespace, cadence, target |
| `vmsh_anchors_failed_total` | counter | namespace, cadence, target |
| `vmsh_backoff_state` | gauge (the level) | namespace, cadence |
| `vmsh_anchor_duration_seconds` | histogram | namespace, cadence, target, status (success/failure) |
| `vmsh_last_anchor_timestamp_seconds` | gauge (epoch) | namespace, cadence, target |
| `vmsh_receipts_pending` | gauge | target |
| `vmsh_config_reloads_total` | counter | result (ok/error) |
| `vmsh_tick_duration_seconds` | histogram | |
| `vmsh_build_info` | gauge (always 1) | version |

Counting rules:

- An attempt is counted per job when its group is sent to the backend (`AnchorStarted`).
  Every outcome has an attempt: a failure before the backend call (unreadable batch,
  refused target) or an anchor recovered from the journal after a restart, which have no
  `AnchorStarted`, count their attempt when the outcome arrives. So
  `attempted == succeeded + failed + in flight`.
- Durations are observed only for outcomes of a backend call this process timed.
- Reloads: `ConfigApplied` counts `ok`, `ConfigRejected` counts `error`, whoever asked
  (file watcher, SIGHUP, the dashboard). A reload that finds no change applies nothing
  and publishes nothing, so it is not counted.
- Jobs removed by a reload lose all their series; a job whose target changed loses the
  series labelled with the old target.

`seed(engine, receipts)` sets the last-anchor timestamps and backoff levels from the
engine's job table (and the pending receipts from the store), so a restart shows them
at once; it also creates each job's counters at 0 so `rate()` and alerts see them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from core import __version__
from core.events import (
    AnchorFailed,
    AnchorStarted,
    AnchorSucceeded,
    BackoffChanged,
    ConfigApplied,
    ConfigRejected,
    Event,
    EventBus,
    ReceiptConfirmed,
    ReceiptWritten,
    TickCompleted,
)
from core.jobs import JobKey

JOB_LABELS = ("namespace", "cadence", "target")
ANCHOR_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TICK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(
        self,
        bus: EventBus,
        registry: CollectorRegistry | None = None,
        *,
        engine: Any = None,
        receipts: Any = None,
        version: str = __version__,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.attempted = Counter(
            "vmsh_anchors_attempted", "Anchor attempts, per job.", JOB_LABELS, registry=r
        )
        self.succeeded = Counter(
            "vmsh_anchors_succeeded", "Anchors that produced a receipt, per job.", JOB_LABELS, registry=r
        )
        self.failed = Counter(
            "vmsh_anchors_failed", "Anchor attempts that failed, per job.", JOB_LABELS, registry=r
        )
        self.backoff = Gauge(
            "vmsh_backoff_state", "Current phi backoff level of a job (0 = not backing off).",
            ("namespace", "cadence"), registry=r,
        )
        self.duration = Histogram(
            "vmsh_anchor_duration_seconds", "Time of the backend call for a job's anchor.",
            (*JOB_LABELS, "status"), buckets=ANCHOR_BUCKETS, registry=r,
        )
        self.last_anchor = Gauge(
            "vmsh_last_anchor_timestamp_seconds", "When a job last anchored (Unix epoch seconds).",
            JOB_LABELS, registry=r,
        )
        self.period = Gauge(
            "vmsh_job_period_seconds", "A job's cadence period (for staleness alerts).",
            JOB_LABELS, registry=r,
        )
        self.pending = Gauge(
            "vmsh_receipts_pending", "Receipts waiting for confirmations, per target.",
            ("target",), registry=r,
        )
        self.reloads = Counter(
            "vmsh_config_reloads", "Configuration reloads, by result (ok|error).", ("result",), registry=r
        )
        self.tick = Histogram(
            "vmsh_tick_duration_seconds", "Time of one scheduling pass.", buckets=TICK_BUCKETS, registry=r
        )
        self.build_info = Gauge("vmsh_build_info", "Scheduler build (always 1).", ("version",), registry=r)
        self.build_info.labels(version).set(1)
        for result in ("ok", "error"):
            self.reloads.labels(result)

        self._targets: dict[JobKey, str] = {}  # the target each job's series are labelled with
        self._outstanding: set[JobKey] = set()  # jobs sent to a backend, outcome not seen yet
        self._pending: dict[str, int] = {}
        self._engine = engine
        self._unsubscribe: Callable[[], None] | None = bus.subscribe(self.handle)
        if engine is not None:
            self.seed(engine, receipts)

    # ----- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening to the bus (the registry keeps its last values)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def seed(self, engine: Any, receipts: Any = None) -> None:
        """Start from the engine's job table: last anchors, backoff levels, zeroed counters.

        `receipts` (a core.receipts.ReceiptStore) is optional: with it the pending receipts
        per target are counted from disk (this reads every receipt once).
        """
        self._engine = engine
        for view in engine.views():
            key, target, state = view.spec.key, view.spec.target, view.state
            self._track(key, target)
            self.period.labels(key.namespace, key.cadence, target).set(view.spec.every)
            if state.last_anchored_at is not None:
                self.last_anchor.labels(key.namespace, key.cadence, target).set(state.last_anchored_at)
            self.backoff.labels(key.namespace, key.cadence).set(state.backoff_level)
        if receipts is not None:
            counts: dict[str, int] = {}
            for _path, receipt in receipts.pending():
                target = receipt.get("target")
                if isinstance(target, str):
                    counts[target] = counts.get(target, 0) + 1
            for target, n in counts.items():
                self._set_pending(target, n)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition for an HTTP Accept header: (body, content type).

        OpenMetrics when the client asks for application/openmetrics-text, else the
        Prometheus text format. Safe to call from a worker thread.
        """
        try:
            encoder, content_type = choose_encoder(accept or "")
        except Exception:  # a malformed version in Accept: fall back to the plain format
            encoder, content_type = choose_encoder("")
        return encoder(self.registry), content_type

    # ----- events ------------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if isinstance(event, AnchorStarted):
            for key in event.jobs:
                self._track(key, event.target)
                self.attempted.labels(key.namespace, key.cadence, event.target).inc()
                self._outstanding.add(key)
        elif isinstance(event, AnchorSucceeded):
            labels = self._outcome(event.job, event.target)
            self.succeeded.labels(*labels[:3]).inc()
            if labels[3]:
                self.duration.labels(*labels[:3], "success").observe(max(0.0, event.duration))
            self.last_anchor.labels(*labels[:3]).set(event.at)
        elif isinstance(event, AnchorFailed):
            labels = self._outcome(event.job, event.target)
            self.failed.labels(*labels[:3]).inc()
            if labels[3]:
                self.duration.labels(*labels[:3], "failure").observe(max(0.0, event.duration))
        elif isinstance(event, BackoffChanged):
            self.backoff.labels(event.job.namespace, event.job.cadence).set(event.level)
        elif isinstance(event, ReceiptWritten):
            if event.status == "pending":
                self._set_pending(event.target, self._pending.get(event.target, 0) + 1)
        elif isinstance(event, ReceiptConfirmed):
            # Never below zero, should seeding have missed a receipt.
            self._set_pending(event.target, max(0, self._pending.get(event.target, 0) - 1))
        elif isinstance(event, TickCompleted):
            self.tick.observe(max(0.0, event.duration))
        elif isinstance(event, ConfigApplied):
            self.reloads.labels("ok").inc()
            self._apply(event)
        elif isinstance(event, ConfigRejected):
            self.reloads.labels("error").inc()

    def _set_pending(self, target: str, n: int) -> None:
        self._pending[target] = n
        self.pending.labels(target).set(n)

    def _outcome(self, key: JobKey, target: str) -> tuple[str, str, str, bool]:
        """Labels of an outcome, and whether this process timed its backend call."""
        self._track(key, target)
        timed = key in self._outstanding
        if timed:
            self._outstanding.discard(key)
        else:
            self.attempted.labels(key.namespace, key.cadence, target).inc()
        return key.namespace, key.cadence, target, timed

    def _track(self, key: JobKey, target: str) -> None:
        old = self._targets.get(key)
        if old == target:
            return
        if old is not None:
            self._remove(key, target=old)
        self._targets[key] = target
        for counter in (self.attempted, self.succeeded, self.failed):
            counter.labels(key.namespace, key.cadence, target)

    def _remove(self, key: JobKey, target: str | None = None) -> None:
        labels = {"namespace": key.namespace, "cadence": key.cadence}
        if target is not None:
            labels["target"] = target
        for metric in (
            self.attempted, self.succeeded, self.failed, self.duration, self.last_anchor, self.period,
        ):
            metric.remove_by_labels(labels)
        if target is None:
            self.backoff.remove_by_labels(labels)

    def _apply(self, event: ConfigApplied) -> None:
        for key in event.removed:
            self._remove(key)
            self._targets.pop(key, None)
            self._outstanding.discard(key)
        if self._engine is None:
            return
        specs = self._engine.jobs
        for key in (*event.added, *event.changed):
            spec = specs.get(key)
            if spec is not None:
                self._track(key, spec.target)
                self.period.labels(key.namespace, key.cadence, spec.target).set(spec.every)
                if key in event.added:
                    self.backoff.labels(key.namespace, key.cadence).set(0)


__all__ = ["Metrics"]
