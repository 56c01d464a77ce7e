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
| `vmsh_job_current_timestamp_seconds` | gauge (epoch) | namespace, cadence, target |
| `vmsh_job_period_seconds` | gauge | namespace, cadence, target |
| `vmsh_job_disabled` | gauge (1, only for disabled jobs) | namespace, cadence, target, reason |
| `vmsh_receipts_pending` | gauge | target |
| `vmsh_btc_signer_balance_sats` | gauge (the tracked coin's value after the last anchor) | target |
| `vmsh_signer_anchors_left` | gauge (anchors the balance pays at the last fee) | target |
| `vmsh_signer_balance_low` | gauge (1: fewer anchors left than `lowBalanceAnchors`) | target |
| `vmsh_anchor_failures_by_kind_total` | counter | kind (network/auth/validation/storage/unknown) |
| `vmsh_storage_errors_total` | counter | op (journal/receipt/state/recover) |
| `vmsh_tokens_discarded_total` | counter | reason (lease_lost/taken_over/superseded/unrecovered) |
| `vmsh_config_reloads_total` | counter | result (ok/error) |
| `vmsh_tick_duration_seconds` | histogram | |
| `vmsh_build_info` | gauge (always 1) | version |
| `vmsh_control_refused_total` | counter | reason (connections: the cap `control.max_connections`; accept_error: EMFILE/ENFILE while accepting) |
| `vmsh_control_dropped_total` | counter | reason (write_timeout: a client left output untaken past `control.write_timeout`; fell_behind: its event queue overflowed) |
| `vmsh_control_connections` | gauge | |
| `vmsh_control_audit_suppressed_total` | counter | (refused commands not written to the audit log by its per-uid rate limit) |

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
- A job is current when it anchored or was found unchanged since its last anchor
  (`JobSkipped`, root unchanged): the instant core.status counts staleness from, so
  `VmshJobNotAnchoredInTime` fires exactly when the dashboard and /health say stale.
- Failures are also counted by kind (one per job and failure, like the per-job counter),
  so `vmsh_anchor_failures_by_kind_total{kind="storage"}` shows a full disk at once;
  `vmsh_storage_errors_total` counts failed writes of our own files (once per write,
  whatever the number of jobs it carried), from `StorageFailed`.
- `vmsh_tokens_discarded_total{reason}` counts attestations paid for that end in no
  receipt (`TokenDiscarded`): in cluster mode a replica whose lease was taken while its
  call was out (`lease_lost`) or whose intent another replica resolved (`taken_over`), or
  an interrupted anchor whose jobs were all anchored again before it was recovered
  (`superseded`), or one whose outcome could not be recovered (`unrecovered`: the
  process died after the call went out and before its token was journalled; an RFC 3161
  token cannot be asked for again, so this counts every call that may have been paid).
  Every other paid token ends in a receipt.
- The control socket's series (`vmsh_control_*`) are not fed from the bus: the control
  server (core/control_server.py) counts into `CONTROL` (one per process, thread-safe)
  and every registry renders it at scrape time (`_ControlCollector`).
- Jobs removed by a reload lose all their series; a job whose target changed loses the
  series labelled with the old target.
- A disabled job (its target is refused: btc, a chain id mismatch; core.engine) has
  `vmsh_job_disabled` = 1 with the reason, read from the engine at `seed` and at each
  `ConfigApplied` (only a config change enables or disables a job). The alert rules
  leave disabled jobs out: they never run, which is not an outage.

`seed(engine, receipts)` sets the last-anchor timestamps and backoff levels from the
engine's job table (and the pending receipts from the store), so a restart shows them
at once; it also creates each job's counters at 0 so `rate()` and alerts see them.
The per-job series are plain fields rendered at scrape time (`_JobCollector`); the few
global ones are ordinary prometheus-client metrics.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from core import __version__
from core.errors import ErrorKind
from core.events import (
    AnchorFailed,
    AnchorStarted,
    AnchorSucceeded,
    BackoffChanged,
    ConfigApplied,
    ConfigRejected,
    Event,
    EventBus,
    JobSkipped,
    LogRecord,
    ReceiptConfirmed,
    ReceiptWritten,
    StorageFailed,
    TargetAnswered,
    TickCompleted,
    TokenDiscarded,
    WalletRead,
)
from core.jobs import JobKey

if TYPE_CHECKING:
    from core.engine import Scheduler
    from core.store import ReceiptRepo

JOB_LABELS = ("namespace", "cadence", "target")
STORAGE_OPS = ("journal", "receipt", "state", "recover")
DISCARD_REASONS = ("lease_lost", "taken_over", "superseded", "unrecovered")  # the engine's TokenDiscarded.reason values  # the engine's StorageFailed.op values
ANCHOR_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TICK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LE = [floatToGoString(b) for b in (*ANCHOR_BUCKETS, float("inf"))]  # type: ignore[no-untyped-call]


class _Durations:
    """One histogram child: a count per bucket (not cumulative) and the sum.

    While every observation fell in one bucket (a job anchoring in about the same time
    each pass: nearly all of them) only that bucket's index and count are kept; the list
    of a count per bucket is made at the first observation in another bucket.
    """

    __slots__ = ("counts", "bucket", "n", "total")

    def __init__(self) -> None:
        self.counts: list[int] | None = None
        self.bucket = 0  # the one bucket observed so far (while counts is None)
        self.n = 0  # observations so far
        self.total = 0.0

    def observe(self, value: float) -> None:
        index = bisect_left(ANCHOR_BUCKETS, value)
        if self.counts is None and (self.n == 0 or index == self.bucket):
            self.bucket = index
        else:
            if self.counts is None:
                self.counts = [0] * (len(ANCHOR_BUCKETS) + 1)
                self.counts[self.bucket] = self.n
            self.counts[index] += 1
        # the first value is kept as it came: one float a group's jobs share, not one each
        self.total = value if self.n == 0 else self.total + value
        self.n += 1

    def buckets(self) -> list[tuple[str, int]]:
        counts = self.counts
        if counts is None:
            counts = [0] * (len(ANCHOR_BUCKETS) + 1)
            counts[self.bucket] = self.n
        out, running = [], 0
        for le, n in zip(_LE, counts, strict=True):
            running += n
            out.append((le, running))
        return out


class _JobSeries:
    """Everything exported about one job, in a few plain fields.

    prometheus_client's labelled children cost ~6.5 KiB a job (a lock and a value object
    per sample), against ~0.2 KiB here (a duration histogram of one bucket, no dict per
    job: a redundant job's `members` made at its first answer); the series become samples
    only when scraped.
    """

    __slots__ = (
        "target",
        "attempted",
        "succeeded",
        "failed",
        "last_anchor",
        "current",
        "period",
        "backoff",
        "success",
        "failure",
        "disabled",
        "members",
    )

    def __init__(self, target: str | None = None) -> None:
        self.target: str | None = None  # the target the job's series are labelled with
        self.backoff: int | None = None
        self.disabled: str | None = None  # why the engine never runs it, else None
        self.retarget(target)

    def retarget(self, target: str | None) -> None:
        """Label with a new target: the old target's series go, counters restart at 0."""
        self.target = target
        self.attempted = self.succeeded = self.failed = 0
        self.last_anchor: float | None = None
        self.current: float | None = None  # last proven current (anchored or unchanged)
        self.period: float | None = None
        self.success: _Durations | None = None  # durations of the calls that anchored it
        self.failure: _Durations | None = None  # ... and of those that failed
        # a redundant job's targets: target -> (last attested, backing off until); None: none yet
        self.members: dict[str, tuple[float | None, float | None]] | None = None

    def observe(self, status: str, value: float) -> None:
        """One backend call's duration, `status` success or failure."""
        if status == "success":
            if self.success is None:
                self.success = _Durations()
            self.success.observe(value)
        else:
            if self.failure is None:
                self.failure = _Durations()
            self.failure.observe(value)

    def durations(self) -> Iterator[tuple[str, _Durations]]:
        if self.success is not None:
            yield "success", self.success
        if self.failure is not None:
            yield "failure", self.failure


CONTROL_REFUSED = ("connections", "accept_error")
CONTROL_DROPPED = ("write_timeout", "fell_behind")


class ControlStats:
    """What the control socket refused and dropped (core/control_server.py counts here)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.refused: dict[str, int] = dict.fromkeys(CONTROL_REFUSED, 0)
        self.dropped: dict[str, int] = dict.fromkeys(CONTROL_DROPPED, 0)
        self.connections = 0
        self.audit_suppressed = 0

    def refuse(self, reason: str) -> None:
        with self._lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1

    def drop(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def suppress(self) -> None:
        with self._lock:
            self.audit_suppressed += 1

    def families(self) -> list[Any]:
        refused = CounterMetricFamily(
            "vmsh_control_refused", "Control socket connections refused, by reason.", labels=("reason",)
        )
        dropped = CounterMetricFamily(
            "vmsh_control_dropped", "Control socket clients dropped, by reason.", labels=("reason",)
        )
        with self._lock:
            for reason, n in self.refused.items():
                refused.add_metric((reason,), n)
            for reason, n in self.dropped.items():
                dropped.add_metric((reason,), n)
            connections = GaugeMetricFamily(
                "vmsh_control_connections", "Open control socket connections.", value=self.connections
            )
            suppressed = CounterMetricFamily(
                "vmsh_control_audit_suppressed",
                "Refused control commands left out of the audit log by its per-uid rate limit.",
                value=self.audit_suppressed,
            )
        return [refused, dropped, connections, suppressed]


CONTROL = ControlStats()


class _ControlCollector:
    def describe(self) -> Iterator[Any]:
        return iter(ControlStats().families())

    def collect(self) -> Iterator[Any]:
        return iter(CONTROL.families())


class _JobCollector:
    """Turns the job table into metric families at scrape time (any thread)."""

    def __init__(self, jobs: dict[JobKey, _JobSeries], lock: threading.Lock) -> None:
        self._jobs = jobs
        self._lock = lock

    def describe(self) -> Iterator[Any]:
        return iter(self._families())

    def collect(self) -> Iterator[Any]:
        with self._lock:
            return iter(self._families(list(self._jobs.items())))

    @staticmethod
    def _families(jobs: Iterable[tuple[JobKey, _JobSeries]] = ()) -> list[Any]:
        attempted = CounterMetricFamily(
            "vmsh_anchors_attempted", "Anchor attempts, per job.", labels=JOB_LABELS
        )
        succeeded = CounterMetricFamily(
            "vmsh_anchors_succeeded", "Anchors that produced a receipt, per job.", labels=JOB_LABELS
        )
        failed = CounterMetricFamily(
            "vmsh_anchors_failed", "Anchor attempts that failed, per job.", labels=JOB_LABELS
        )
        backoff = GaugeMetricFamily(
            "vmsh_backoff_state",
            "Current phi backoff level of a job (0 = not backing off).",
            labels=("namespace", "cadence"),
        )
        duration = HistogramMetricFamily(
            "vmsh_anchor_duration_seconds",
            "Time of the backend call for a job's anchor.",
            labels=(*JOB_LABELS, "status"),
        )
        last_anchor = GaugeMetricFamily(
            "vmsh_last_anchor_timestamp_seconds",
            "When a job last anchored (Unix epoch seconds).",
            labels=JOB_LABELS,
        )
        current = GaugeMetricFamily(
            "vmsh_job_current_timestamp_seconds",
            "When a job was last proven current: anchored, or its root found unchanged (Unix epoch seconds).",
            labels=JOB_LABELS,
        )
        period = GaugeMetricFamily(
            "vmsh_job_period_seconds",
            "A job's cadence period (for staleness alerts).",
            labels=JOB_LABELS,
        )
        disabled = GaugeMetricFamily(
            "vmsh_job_disabled",
            "1 for a job that never runs because its target is refused, with the reason.",
            labels=(*JOB_LABELS, "reason"),
        )
        attested = GaugeMetricFamily(
            "vmsh_target_attested_timestamp_seconds",
            "When each target of a redundant job (`member`) last attested (Unix epoch seconds).",
            labels=(*JOB_LABELS, "member"),
        )
        member_backoff = GaugeMetricFamily(
            "vmsh_target_backoff_until_timestamp_seconds",
            "Until when a target of a redundant job (`member`) backs off on its own (0: it does not).",
            labels=(*JOB_LABELS, "member"),
        )
        for key, job in jobs:
            if job.backoff is not None:
                backoff.add_metric((key.namespace, key.cadence), job.backoff)
            if job.target is None:
                continue
            labels = (key.namespace, key.cadence, job.target)
            attempted.add_metric(labels, job.attempted)
            succeeded.add_metric(labels, job.succeeded)
            failed.add_metric(labels, job.failed)
            if job.last_anchor is not None:
                last_anchor.add_metric(labels, job.last_anchor)
            if job.current is not None:
                current.add_metric(labels, job.current)
            if job.period is not None:
                period.add_metric(labels, job.period)
            if job.disabled is not None:
                disabled.add_metric((*labels, job.disabled), 1)
            for status, child in job.durations():
                duration.add_metric((*labels, status), child.buckets(), child.total)
            for member, (when, until) in (job.members or {}).items():
                if when is not None:
                    attested.add_metric((*labels, member), when)
                member_backoff.add_metric((*labels, member), until or 0.0)
        return [
            attempted, succeeded, failed, backoff, duration, last_anchor, current, period, disabled,
            attested, member_backoff,
        ]


class Metrics:
    def __init__(
        self,
        bus: EventBus,
        registry: CollectorRegistry | None = None,
        *,
        engine: Scheduler | None = None,
        receipts: ReceiptRepo | None = None,
        version: str = __version__,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._jobs: dict[JobKey, _JobSeries] = {}
        self._lock = threading.Lock()  # the loop writes, a scrape thread reads
        r.register(_JobCollector(self._jobs, self._lock))
        r.register(_ControlCollector())
        self.pending = Gauge(
            "vmsh_receipts_pending", "Receipts waiting for confirmations, per target.",
            ("target",), registry=r,
        )
        self.balance = Gauge(
            "vmsh_btc_signer_balance_sats", "A btc signer's balance (its tracked coin) after its last anchor, "
            "in sat.", ("target",), registry=r,
        )
        self.anchors_left = Gauge(
            "vmsh_signer_anchors_left", "How many more anchors a signer's balance pays at the last fee.",
            ("target",), registry=r,
        )
        self.balance_low = Gauge(
            "vmsh_signer_balance_low", "1 while a signer's balance pays fewer anchors than the target's "
            "lowBalanceAnchors.", ("target",), registry=r,
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
        self.failures_by_kind = Counter(
            "vmsh_anchor_failures_by_kind", "Failed anchor attempts of all jobs, by error kind.",
            ("kind",), registry=r,
        )
        self.storage_errors = Counter(
            "vmsh_storage_errors", "Failed writes of the scheduler's own files, by step.",
            ("op",), registry=r,
        )
        self.tokens_discarded = Counter(
            "vmsh_tokens_discarded", "Attestations paid for that end in no receipt, by reason "
            "(lease_lost: another replica claimed the jobs first; taken_over: another replica "
            "resolved the intent; superseded: its jobs were anchored again before it was "
            "recovered; unrecovered: an interrupted call whose outcome could not be found, "
            "which may have been paid).", ("reason",), registry=r,
        )
        for reason in DISCARD_REASONS:
            self.tokens_discarded.labels(reason)
        for kind in ErrorKind:
            self.failures_by_kind.labels(str(kind))
        for op in STORAGE_OPS:
            self.storage_errors.labels(op)

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

    def seed(self, engine: Scheduler, receipts: ReceiptRepo | None = None) -> None:
        """Start from the engine's job table: last anchors, backoff levels, zeroed counters.

        `receipts` (a core.store.ReceiptRepo) is optional: with it the pending receipts
        per target are counted from disk (this reads every receipt once).
        """
        self._engine = engine
        with self._lock:  # the records as they are: a view's status is not needed here
            for spec, state, disabled in engine.records():
                job = self._track(spec.key, spec.target)
                job.period = spec.every
                job.last_anchor = state.last_anchored_at
                job.current = state.current_at or state.last_anchored_at
                job.backoff = state.backoff_level
                job.disabled = disabled
        if receipts is not None:
            counts: dict[str, int] = {}
            for _path, receipt in receipts.pending():
                counts[receipt.target] = counts.get(receipt.target, 0) + 1
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
        if isinstance(event, LogRecord):  # most events of a pass (a line per receipt): none counted
            return
        if isinstance(event, TickCompleted):
            self.tick.observe(max(0.0, event.duration))
        elif isinstance(event, ReceiptWritten):
            if event.status == "pending":
                self._set_pending(event.target, self._pending.get(event.target, 0) + 1)
        elif isinstance(event, ReceiptConfirmed):
            # Never below zero, should seeding have missed a receipt.
            self._set_pending(event.target, max(0, self._pending.get(event.target, 0) - 1))
        elif isinstance(event, WalletRead):
            self.balance.labels(event.target).set(event.sats)  # only btc signers report one
            self.anchors_left.labels(event.target).set(event.anchors_left)
            self.balance_low.labels(event.target).set(int(event.low))
        elif isinstance(event, StorageFailed):
            self.storage_errors.labels(event.op).inc()
        elif isinstance(event, TokenDiscarded):
            self.tokens_discarded.labels(event.reason).inc()
        elif isinstance(event, ConfigRejected):
            self.reloads.labels("error").inc()
        elif isinstance(event, ConfigApplied):
            self.reloads.labels("ok").inc()
            with self._lock:
                self._apply(event)
        else:
            if isinstance(event, AnchorFailed):
                self.failures_by_kind.labels(event.kind).inc()
            with self._lock:
                self._job_event(event)

    def _job_event(self, event: Event) -> None:
        if isinstance(event, AnchorStarted):
            for key in event.jobs:
                self._track(key, event.target).attempted += 1
                self._outstanding.add(key)
        elif isinstance(event, AnchorSucceeded):
            job, timed = self._outcome(event.job, event.target)
            job.succeeded += 1
            if timed:
                job.observe("success", max(0.0, event.duration))
            job.last_anchor = job.current = event.at
        elif isinstance(event, JobSkipped) and event.reason == "root unchanged":
            skipped = self._jobs.get(event.job)  # the engine set its current_at: the same instant
            if skipped is not None and skipped.target is not None:
                skipped.current = event.at
        elif isinstance(event, AnchorFailed):
            job, timed = self._outcome(event.job, event.target)
            job.failed += 1
            if timed:
                job.observe("failure", max(0.0, event.duration))
        elif isinstance(event, BackoffChanged):
            self._job(event.job).backoff = event.level
        elif isinstance(event, TargetAnswered):
            for key in event.jobs:
                job = self._job(key)
                if job.members is None:
                    job.members = {}
                members = job.members
                when = event.at if event.attested else members.get(event.target, (None, None))[0]
                members[event.target] = (when, event.retry_at)

    def _set_pending(self, target: str, n: int) -> None:
        self._pending[target] = n
        self.pending.labels(target).set(n)

    def _outcome(self, key: JobKey, target: str) -> tuple[_JobSeries, bool]:
        """The job's series, and whether this process timed its backend call."""
        job = self._track(key, target)
        timed = key in self._outstanding
        if timed:
            self._outstanding.discard(key)
            if not self._outstanding:  # a set keeps its largest table: 10,000 jobs' 0.5 MiB
                self._outstanding = set()
        else:
            job.attempted += 1  # no AnchorStarted: a failure before the call, or recovered
        return job, timed

    def _job(self, key: JobKey, target: str | None = None) -> _JobSeries:
        job = self._jobs.get(key)
        if job is None:
            job = self._jobs[key] = _JobSeries(target)
        return job

    def _track(self, key: JobKey, target: str) -> _JobSeries:
        job = self._job(key, target)
        if job.target != target:
            job.retarget(target)
        return job

    def _apply(self, event: ConfigApplied) -> None:
        for key in event.removed:
            self._jobs.pop(key, None)
            self._outstanding.discard(key)
        if self._engine is None:
            return
        specs = self._engine.jobs
        for keys, added in ((event.added, True), (event.changed, False)):
            for key in keys:  # (`key in event.added`, a tuple: 10,000 added held the loop 1.2 s)
                spec = specs.get(key)
                if spec is not None:
                    job = self._track(key, spec.target)
                    job.period = spec.every
                    if added:
                        job.backoff = 0
        # The engine asked its target guard again for every job: any may be (en|dis)abled.
        disabled = getattr(self._engine, "disabled", {})
        for key, job in self._jobs.items():
            reason = disabled.get(key)
            if job.disabled is not None and reason is None and job.current is not None:
                job.current = max(job.current, event.at)  # as the engine: stale counts from now
            job.disabled = reason


__all__ = ["Metrics"]
