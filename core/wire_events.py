"""The events' half of core/wire.py (docs/control-api.md): `WireError`, job keys, and
`encode_event`/`decode_event`, importing only core/events.py and core/jobs.py, so `ctl
tail` (which decodes log records and nothing else) starts without the snapshot's types,
the stores and the receipts (about 0.1 s of CPU per tail, three tails starting beside a
10,000-job pass). core/wire.py re-exports these names: everything but `ctl tail` uses it.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from core import events as ev
from core.jobs import JobKey

Json = Any  # a value json.dumps accepts


class WireError(ValueError):
    """A message from the other end does not have the shape this version expects."""


def required(d: Json, name: str, where: str) -> Json:
    if not isinstance(d, dict):
        raise WireError(f"{where}: expected an object, got {type(d).__name__}")
    if name not in d:
        raise WireError(f"{where}: missing field {name!r}")
    return d[name]


def encode_job_key(key: JobKey) -> str:
    return str(key)


def decode_job_key(text: Json) -> JobKey:
    if not isinstance(text, str):
        raise WireError(f"job: expected 'namespace/cadence', got {text!r}")
    try:
        return JobKey.parse(text)
    except ValueError as exc:
        raise WireError(str(exc)) from None


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
    kind = required(d, "type", "event")
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        return None
    body = required(d, "event", kind)
    if not isinstance(body, dict):
        raise WireError(f"event {kind}: expected an object, got {type(body).__name__}")
    kwargs: dict[str, Any] = {}
    for name, decode, needed in _plan(cls):
        if name in body:
            value = body[name]
            kwargs[name] = value if decode is None else decode(value, f"event {kind}.{name}")
        elif needed:
            raise WireError(f"event {kind}: missing field {name!r}")
    return cls(**kwargs)
