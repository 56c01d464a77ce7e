"""Equal namespace settings held once: what a loaded configuration keeps per namespace.

A configuration of 10,000 namespaces usually repeats a few shapes: the same cadences, the
same empty witness list and schema policy, often the same whole namespace. Pydantic builds
a separate model for each (about 2.8 KB a namespace, 28 MiB of 10,000). Two steps make the
equal parts one object each, as `sys.intern` does for strings, so the scheduler's memory
grows with the distinct settings, not with the namespaces (issue 24: USS at scale):

- While validating: a `SharedWhenEqual` model (cadences, witnesses, schema policies: no
  paths in them) given input equal to one validated before in the same load returns that
  model, without validating the input again (`validation_pool` makes the load's pool);
  a default left out (a namespace's witnesses, its schema policy) is built once per load
  (`shared_default`, within `defaults_shared`).
- After the load (`share_equal_settings`): what validation never saw, the namespaces
  themselves (paths resolved first) and any default part not built by `shared_default`.

Safe because nothing changes a configuration's models after the load (`load_config`
resolves their paths, then shares; a reload builds a new Config). Two models are shared
only when they are the same class with the same input, or the same fields set (what
`model_dump(exclude_unset=True)` shows) and equal values; a value that cannot be hashed
keeps its own model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from pathlib import Path, PosixPath
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationInfo, model_validator
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

from core.model_types import Model

_Pool = dict[Hashable, Any]
SHARED_POOL = "shared_pool"  # the validation context key of a load's pool


def validation_pool() -> dict[str, _Pool]:
    """The validation context entry of one load: its models shared by input."""
    return {SHARED_POOL: {}}


def pool_of(info: ValidationInfo) -> _Pool | None:
    """The pool of the load validating (None: a validation outside load_config)."""
    context = info.context
    return context.get(SHARED_POOL) if isinstance(context, dict) else None


_M = TypeVar("_M", bound=BaseModel)
# The defaults built so far by the load validating in this thread (shared_default).
_LOAD_DEFAULTS: ContextVar[dict[type, Any] | None] = ContextVar("config_load_defaults", default=None)


def shared_default(cls: type[_M]) -> Callable[[], _M]:
    """A default_factory giving, while a load validates (`defaults_shared`), one default
    `cls()` for all the models of the load that leave it out (10,000 namespaces without
    `witnesses` built 10,000 equal ones, and the load then looked at each to share it);
    a new one otherwise."""

    def factory() -> _M:
        built = _LOAD_DEFAULTS.get()
        if built is None:
            return cls()
        found = built.get(cls)
        if found is None:
            found = built[cls] = cls()
        return found

    return factory


@contextlib.contextmanager
def defaults_shared() -> Iterator[None]:
    """The validation of one load: `shared_default` models built once in it."""
    token = _LOAD_DEFAULTS.set({})
    try:
        yield
    finally:
        _LOAD_DEFAULTS.reset(token)


class SharedWhenEqual(Model):
    """A settings model validated once per distinct input of a load."""

    @model_validator(mode="wrap")
    @classmethod
    def _once_per_input(cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        pool = pool_of(info)
        if pool is None or type(data) is not dict:
            return handler(data)
        # The input's repr as its key: the YAML readers' data (mappings, lists, text,
        # numbers, booleans, None, dates) written with its types (1, 1.0, True and '1'
        # differ), in one C call: half the time of walking it (_value_key), and any
        # input has one.
        met = pool.get((cls, id(data)))  # this very mapping (the line reader shares equal ones)
        if met is not None and met[0] is data:
            return met[1]
        key = (cls, repr(data))
        found = pool.get(key)
        if found is None:
            found = pool[key] = handler(data)  # an invalid input raises: nothing kept
        pool[(cls, id(data))] = (data, found)  # the input kept with it: its id stays its own
        return found


def folder_path(text: str, pool: _Pool) -> Path:
    """Path(text), made from its folder's Path, made once per load (`pool`): a folder and
    a name join in half the time a whole text is parsed, and 100,000 namespaces' sources
    are in a few folders. The same Path for any text (one holding `//`, or ending in `/`
    or `/.`, is made whole)."""
    head, _, name = text.rpartition("/")
    if not head or name in ("", ".") or "//" in text:
        return Path(text)
    key = (folder_path, head)
    folder = pool.get(key)
    if folder is None:
        folder = pool[key] = Path(head)
    return folder / name


def share_equal_settings(namespaces: dict[str, Any]) -> None:
    """Replace each namespace, and its default parts, by one shared equal model."""
    pool: _Pool = {}
    seen: dict[int, BaseModel] = {}  # models already looked at (shared ones recur)
    for name, ns in namespaces.items():
        namespaces[name] = _shared(ns, pool, seen)


def _shared(model: BaseModel, pool: _Pool, seen: dict[int, BaseModel]) -> BaseModel:
    done = seen.get(id(model))
    if done is not None:
        return done
    seen[id(model)] = model  # kept alive by the namespaces: its id is not reused meanwhile
    if model.__pydantic_private__ or model.__pydantic_extra__:
        return model  # state beyond the fields: not compared here, so never shared
    set_ = model.__pydantic_fields_set__
    if not set_:  # nothing set: every field holds its default (a setattr would have set it)
        shared: BaseModel = pool.setdefault(type(model), model)
        seen[id(model)] = shared
        if shared is model:
            _share_fields_set(model, pool)
        return shared
    fields = model.__dict__
    key: list[Hashable] = [type(model), frozenset(set_)]
    add, models = key.append, _MODEL_CLASSES
    for field, value in fields.items():
        kind = type(value)
        if kind is str or value is None:  # most fields: the value is its own key
            add(value)
        elif models.get(kind) or _is_model(kind):
            shared = seen.get(id(value)) or _shared(value, pool, seen)
            if shared is not value:
                fields[field] = shared
            add(("model", id(shared)))
        elif kind is PosixPath or kind is bool:  # _value_key's, without the call
            add((kind, str(value) if kind is PosixPath else value))
        else:
            add(_value_key(value))
    try:
        shared = pool.setdefault(tuple(key), model)
    except TypeError:  # a value that cannot be hashed
        shared = model
    seen[id(model)] = shared
    if shared is model:
        _share_fields_set(model, pool)
    return shared


def _share_fields_set(model: BaseModel, pool: _Pool) -> None:
    """The model's set of fields set made the one equal set of the load: 10,000 namespaces
    setting `source` and `cadence` held 10,000 equal sets (232 bytes each). Nothing adds to
    it after the load (pydantic does on an assignment: the models are not assigned to)."""
    set_ = model.__pydantic_fields_set__
    key = (_share_fields_set, frozenset(set_))
    found = pool.get(key)
    if found is None:
        pool[key] = set_
    elif found is not set_:
        object.__setattr__(model, "__pydantic_fields_set__", found)


_MODEL_CLASSES: dict[type, bool] = {}


def _is_model(kind: type) -> bool:
    known = _MODEL_CLASSES.get(kind)
    if known is None:
        known = _MODEL_CLASSES[kind] = issubclass(kind, BaseModel)
    return known


_CONTAINERS = frozenset({dict, list})


def _value_key(value: Any) -> Hashable:
    """A value (a validation input, or a field's value) as a hashable key, its type kept
    (1, 1.0 and True are not one key); a model by its identity (shared ones are canonical)."""
    kind = type(value)
    if kind is dict:
        types = tuple(map(type, value.values()))
        if _CONTAINERS.isdisjoint(types):  # values that are their own keys: text, numbers
            items = tuple(value.items())
            try:
                hash(items)
                return (dict, items, types)  # their types beside them
            except TypeError:  # a model inside (none is frozen, so hashable)
                pass
        return (dict, tuple((k, _value_key(v)) for k, v in value.items()))
    if kind is list:
        return (list, tuple(_value_key(v) for v in value))
    if _is_model(kind):
        return ("model", id(value))
    if kind is PosixPath:  # by its text: kept once made (the hash writes it too), unlike its hash
        return (kind, str(value))
    return (kind, value)
