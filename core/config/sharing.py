"""Equal namespace settings held once: what a loaded configuration keeps per namespace.

A configuration of 10,000 namespaces usually repeats a few shapes: the same cadences, the
same empty witness list and schema policy, often the same whole namespace. Pydantic builds
a separate model for each (about 2.8 KB a namespace, 28 MiB of 10,000); after the load
`share_equal_settings` makes the namespaces' equal parts one object each, as `sys.intern`
does for strings, so the scheduler's memory grows with the distinct settings, not with the
namespaces (issue 24: USS < 100 MiB at 10,000 namespaces).

Safe because nothing changes a configuration's models after the load (`load_config`
resolves their paths first, then shares; a reload builds a new Config). Two models are
shared only when they are the same class, with the same fields set (what `model_dump(
exclude_unset=True)` shows) and equal values; a value that cannot be hashed keeps its own
model.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from pydantic import BaseModel

_Pool = dict[Hashable, BaseModel]


def share_equal_settings(namespaces: dict[str, Any]) -> None:
    """Replace each namespace's settings, and their parts, by one shared equal model."""
    pool: _Pool = {}
    for name, ns in namespaces.items():
        namespaces[name] = _shared(ns, pool)


def _shared(model: BaseModel, pool: _Pool) -> BaseModel:
    if model.__pydantic_private__ or model.__pydantic_extra__:
        return model  # state beyond the fields: not compared here, so never shared
    set_ = model.__pydantic_fields_set__
    if not set_:  # nothing set: every field holds its default (a setattr would have set it)
        return pool.setdefault(type(model), model)
    fields = model.__dict__
    key: list[Hashable] = [type(model), frozenset(set_)]
    for field, value in fields.items():
        kind = type(value)
        if kind is str or value is None:  # most fields: the value is its own key
            key.append(value)
        elif _is_model(kind):
            value = fields[field] = _shared(value, pool)
            key.append(("model", id(value)))
        else:
            key.append(_value_key(value))
    try:
        return pool.setdefault(tuple(key), model)
    except TypeError:  # a value that cannot be hashed
        return model


_MODEL_CLASSES: dict[type, bool] = {}


def _is_model(kind: type) -> bool:
    known = _MODEL_CLASSES.get(kind)
    if known is None:
        known = _MODEL_CLASSES[kind] = issubclass(kind, BaseModel)
    return known


def _value_key(value: Any) -> Hashable:
    """A value as a hashable key; a model by its identity (shared ones are canonical)."""
    if isinstance(value, BaseModel):
        return ("model", id(value))
    if isinstance(value, list):
        return ("list", tuple(_value_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _value_key(v)) for k, v in value.items()))
    return (type(value), value)
