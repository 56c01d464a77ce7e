"""JSON codecs for what crosses the control socket (docs/control-api.md): one encode/decode
pair per type, used by the server (core/control_server.py) and every client (ctl, attach).

Everything encodes to plain JSON values (dict, list, str, int, float, bool, None) and
decodes back to an equal object: `decode_x(json.loads(json.dumps(encode_x(x)))) == x`.
A `JobKey` travels as "namespace/cadence" (parsed back at the last `/`, as the CLI does).
Decoders raise `WireError` naming the field when a value is missing or of the wrong type,
so a client talking to a newer or broken server gets a sentence, not a traceback.
Unknown keys are ignored (a newer server may add fields); unknown event types decode to
None so an older client skips them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import events as ev
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

Json = Any  # a value json.dumps accepts


class WireError(ValueError):
    """A message from the other end does not have the shape this version expects."""


def _field(d: Json, name: str, where: str) -> Json:
    if not isinstance(d, dict):
        raise WireError(f"{where}: expected an object, got {type(d).__name__}")
    if name not in d:
        raise WireError(f"{where}: missing field {name!r}")
    return d[name]


# -- job key, spec, state, view ------------------------------------------------------------


def encode_job_key(key: JobKey) -> str:
    return str(key)


def decode_job_key(text: Json) -> JobKey:
    if not isinstance(text, str):
        raise WireError(f"job: expected 'namespace/cadence', got {text!r}")
    try:
        return JobKey.parse(text)
    except ValueError as exc:
        raise WireError(str(exc)) from None


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


# -- events --------------------------------------------------------------------------------
# Every event is a frozen dataclass of core/events.py; its fields are floats, ints, strings,
# None, JobKey, tuples of JobKey or strings, and (LogRecord.fields) a JSON-able dict. The
# codec is driven by the field annotations, so a new event or field needs no code here.

EVENT_TYPES: dict[str, type[ev.Event]] = {
    cls.__name__: cls
    for cls in vars(ev).values()
    if isinstance(cls, type) and issubclass(cls, ev.Event) and cls is not ev.Event
}


def _encode_value(value: Any) -> Json:
    if isinstance(value, JobKey):
        return str(value)
    if isinstance(value, tuple):
        return [_encode_value(v) for v in value]
    return value


Decoder = typing.Callable[[Json, str], Any]
_PLANS: dict[type[ev.Event], tuple[tuple[str, Decoder | None, bool], ...]] = {}


def _decoder(hint: Any) -> Decoder | None:
    """How a field annotated `hint` is decoded; None: the value as it came."""
    if hint is JobKey or (typing.get_origin(hint) is typing.Union and JobKey in typing.get_args(hint)):
        return lambda value, where: None if value is None else decode_job_key(value)
    if typing.get_origin(hint) is tuple:
        (item, *_) = typing.get_args(hint) or (Any,)
        each = _decoder(item)

        def items(value: Json, where: str) -> Any:
            if value is None:
                return None
            if not isinstance(value, list):
                raise WireError(f"{where}: expected a list")
            return tuple(v if each is None else each(v, where) for v in value)

        return items
    return None


def _plan(cls: type[ev.Event]) -> tuple[tuple[str, Decoder | None, bool], ...]:
    """Each field's name, decoder and whether it is required, read from the annotations once
    per class, not per event (`ctl tail` decodes 10,000 log records a pass: the hints were
    half its CPU)."""
    plan = _PLANS.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls, vars(ev))
        plan = _PLANS[cls] = tuple(
            (f.name, _decoder(hints[f.name]), f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
        )
    return plan


def encode_event(event: ev.Event) -> Json:
    """{"type": "<class name>", "event": {field: value}}."""
    fields = {f.name: _encode_value(getattr(event, f.name)) for f in dataclasses.fields(event)}
    return {"type": type(event).__name__, "event": fields}


def decode_event(d: Json) -> ev.Event | None:
    """The event, or None when its type is unknown to this version (skip it)."""
    kind = _field(d, "type", "event")
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        return None
    body = _field(d, "event", kind)
    if not isinstance(body, dict):
        raise WireError(f"event {kind}: expected an object, got {type(body).__name__}")
    kwargs: dict[str, Any] = {}
    for name, decode, required in _plan(cls):
        if name in body:
            value = body[name]
            kwargs[name] = value if decode is None else decode(value, f"event {kind}.{name}")
        elif required:
            raise WireError(f"event {kind}: missing field {name!r}")
    return cls(**kwargs)
