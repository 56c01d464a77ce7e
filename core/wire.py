"""JSON codecs for what crosses the control socket (docs/control-api.md): one encode/decode
pair per type, used by the server (core/control_server.py) and every client (ctl, attach).

Everything encodes to plain JSON values (dict, list, str, int, float, bool, None) and
decodes back to an equal object: `decode_x(json.loads(json.dumps(encode_x(x)))) == x`.
A `JobKey` travels as "namespace/cadence" (parsed back at the last `/`, as the CLI does).
Decoders raise `WireError` naming the field when a value is missing or of the wrong type,
so a client talking to a newer or broken server gets a sentence, not a traceback.
Unknown keys are ignored (a newer server may add fields); unknown event types decode to
None so an older client skips them. The events' codec (and `WireError`, job keys) is in
core/wire_events.py, re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.control import (
    FILE_STORE,
    ReloadResult,
    Snapshot,
    StoreStatus,
    VerifyOutcome,
    VerifyResult,
)
from core.jobs import JobKey, JobSpec, JobState
from core.replicas import ReplicaInfo
from core.status import Counts, JobStatus
from core.views import JobView, TargetView
from core.wire_events import (
    EVENT_TYPES,
    Json,
    WireError,
    decode_event,
    decode_job_key,
    encode_event,
    encode_job_key,
)
from core.wire_events import required as _field

# -- job key, spec, state, view ------------------------------------------------------------


def encode_job_spec(spec: JobSpec) -> Json:
    return {
        "job": str(spec.key), "target": spec.target, "every": spec.every, "source": str(spec.source),
        "confirmations": spec.confirmations, "anchor_unchanged": spec.anchor_unchanged,
        "policy_oid": spec.policy_oid,
    }


def decode_job_spec(d: Json) -> JobSpec:
    w = "job spec"
    return JobSpec(
        key=decode_job_key(_field(d, "job", w)), target=_field(d, "target", w),
        every=_field(d, "every", w), source=Path(_field(d, "source", w)),
        confirmations=d.get("confirmations", 0), anchor_unchanged=d.get("anchor_unchanged", False),
        policy_oid=d.get("policy_oid"),
    )


def encode_job_state(state: JobState) -> Json:
    return state.to_dict()


def decode_job_state(d: Json) -> JobState:
    try:
        return JobState.from_dict(d)
    except ValueError as exc:
        raise WireError(f"job state: {exc}") from None


def encode_job_view(view: JobView) -> Json:
    return {
        "spec": encode_job_spec(view.spec), "state": encode_job_state(view.state),
        "due_at": view.due_at, "in_flight": view.in_flight, "status": view.status.value,
        "disabled": view.disabled, "targets": [t.to_dict() for t in view.targets],
    }


def decode_job_view(d: Json) -> JobView:
    w = "job view"
    try:
        status = JobStatus(_field(d, "status", w))
    except ValueError as exc:
        raise WireError(f"{w}: {exc}") from None
    return JobView(
        spec=decode_job_spec(_field(d, "spec", w)), state=decode_job_state(_field(d, "state", w)),
        due_at=d.get("due_at"), in_flight=bool(_field(d, "in_flight", w)), status=status,
        disabled=d.get("disabled"), targets=_target_views(d.get("targets") or []),
    )


def _target_views(items: Json) -> tuple[TargetView, ...]:
    try:
        return tuple(TargetView.from_dict(t) for t in items)
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise WireError(f"job view: targets: {exc!r}") from None


# -- counts, snapshot ----------------------------------------------------------------------


def encode_counts(counts: Counts) -> Json:
    by_status = {status.value: n for status, n in counts.by_status.items()}
    return {"by_status": by_status, "in_backoff": counts.in_backoff, "total": counts.total}


def decode_counts(d: Json) -> Counts:
    w = "counts"
    raw = _field(d, "by_status", w)
    if not isinstance(raw, dict):
        raise WireError(f"{w}: by_status is not an object")
    try:
        by_status = {JobStatus(k): int(n) for k, n in raw.items() if k in JobStatus._value2member_map_}
    except (TypeError, ValueError) as exc:
        raise WireError(f"{w}: {exc}") from None
    return Counts(by_status=by_status, in_backoff=_field(d, "in_backoff", w), total=_field(d, "total", w))


# -- store, replicas ------------------------------------------------------------------------


def encode_store_status(store: StoreStatus) -> Json:
    return {"kind": store.kind, "ok": store.ok, "error": store.error}


def decode_store_status(d: Json) -> StoreStatus:
    w = "store"
    error = d.get("error") if isinstance(d, dict) else None
    return StoreStatus(str(_field(d, "kind", w)), bool(_field(d, "ok", w)), None if error is None else str(error))


def encode_replica(replica: ReplicaInfo) -> Json:
    return replica.to_json()


def decode_replica(d: Json) -> ReplicaInfo:
    if not isinstance(d, dict):
        raise WireError(f"replica: expected an object, got {type(d).__name__}")
    try:
        return ReplicaInfo.from_json(d)
    except KeyError as exc:
        raise WireError(f"replica: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise WireError(f"replica: {exc}") from None


def encode_snapshot(snap: Snapshot) -> Json:
    return {
        "now": snap.now, "views": [encode_job_view(v) for v in snap.views],
        "counts": encode_counts(snap.counts), "paused": snap.paused, "config_hash": snap.config_hash,
        "started_at": snap.started_at, "last_tick": snap.last_tick, "tick": snap.tick,
        "max_level": snap.max_level, "replicas": [encode_replica(r) for r in snap.replicas],
        "store": encode_store_status(snap.store), "storage": snap.storage,
    }


def decode_snapshot(d: Json) -> Snapshot:
    w = "snapshot"
    views = _field(d, "views", w)
    if not isinstance(views, list):
        raise WireError(f"{w}: views is not a list")
    replicas = d.get("replicas", [])  # an older server sends neither: the file store's defaults
    if not isinstance(replicas, list):
        raise WireError(f"{w}: replicas is not a list")
    store = d.get("store")
    return Snapshot(
        now=_field(d, "now", w), views=tuple(decode_job_view(v) for v in views),
        counts=decode_counts(_field(d, "counts", w)), paused=bool(_field(d, "paused", w)),
        config_hash=_field(d, "config_hash", w), started_at=_field(d, "started_at", w),
        last_tick=d.get("last_tick"), tick=_field(d, "tick", w), max_level=_field(d, "max_level", w),
        replicas=tuple(decode_replica(r) for r in replicas),
        store=FILE_STORE if store is None else decode_store_status(store),
        storage=None if d.get("storage") is None else str(d.get("storage")),
    )


# -- `ctl status --json` (`GET /v1/status`) -------------------------------------------------


def encode_status_job(view: JobView, now: float) -> Json:
    """One job of `ctl status --json`: its status, target, period, last anchor, the
    seconds until it is due (from `now`), backoff and error."""
    return {
        "job": str(view.key), "status": view.status.value, "target": view.spec.target, "every": view.spec.every,
        "last_anchored_at": view.state.last_anchored_at, "due_in": None if view.due_at is None else view.due_at - now,
        "backoff_level": view.state.backoff_level, "last_error": view.state.last_error, "disabled": view.disabled,
    }


def encode_status_counts(counts: Counts) -> Json:
    return {"total": counts.total, "in_backoff": counts.in_backoff, **{s.value: n for s, n in counts.by_status.items()}}


# -- views lines (core/control_feed.py) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ViewsUpdate:
    """One `views` line of `/v1/events?views=1`: the views of the jobs that changed up to
    event `seq`, the jobs removed, and the snapshot's other fields (`header`: its views
    and counts are not the table's; the client counts its mirror)."""

    seq: int
    views: tuple[JobView, ...]
    removed: tuple[JobKey, ...]
    header: Snapshot


def views_line(seq: int, encoded_views: list[bytes], removed: list[JobKey], header: Snapshot) -> bytes:
    """A `views` line from views already encoded (each `encode_job_view` as compact JSON)."""
    import json

    def dump(doc: Json) -> bytes:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    return b'{"seq":%d,"type":"views","views":[%b],"removed":%b,"snapshot":%b}\n' % (
        seq, b",".join(encoded_views), dump([str(k) for k in removed]), dump(encode_snapshot(header)))


def decode_views_update(d: Json) -> ViewsUpdate:
    w = "views line"
    views = _field(d, "views", w)
    removed = d.get("removed") or []
    if not isinstance(views, list) or not isinstance(removed, list):
        raise WireError(f"{w}: views and removed must be lists")
    seq = _field(d, "seq", w)
    if not isinstance(seq, int):
        raise WireError(f"{w}: seq is not an integer")
    return ViewsUpdate(
        seq=seq, views=tuple(decode_job_view(v) for v in views),
        removed=tuple(decode_job_key(k) for k in removed), header=decode_snapshot(_field(d, "snapshot", w)),
    )


# -- command results -----------------------------------------------------------------------


def encode_reload_result(result: ReloadResult) -> Json:
    return {"applied": result.applied, "changed": result.changed, "errors": list(result.errors), "summary": result.summary}


def decode_reload_result(d: Json) -> ReloadResult:
    w = "reload result"
    return ReloadResult(
        applied=bool(_field(d, "applied", w)), changed=bool(_field(d, "changed", w)),
        errors=[str(e) for e in _field(d, "errors", w)], summary=str(_field(d, "summary", w)),
    )


def encode_verify_result(result: VerifyResult) -> Json:
    return {"outcome": result.outcome.value, "message": result.message, "job": result.job}


def decode_verify_result(d: Json) -> VerifyResult:
    w = "verify result"
    try:
        outcome = VerifyOutcome(_field(d, "outcome", w))
    except ValueError as exc:
        raise WireError(f"{w}: {exc}") from None
    return VerifyResult(outcome, str(_field(d, "message", w)), d.get("job"))


__all__ = [
    "EVENT_TYPES", "Json", "WireError", "decode_event", "decode_job_key", "encode_event", "encode_job_key",
]
