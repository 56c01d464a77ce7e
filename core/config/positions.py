"""Where each value of a load came from, and the problems of a load placed there.

``Pos`` is a node of a position tree (file, line/col of its key and value) that the YAML
reader (core/config/reader.py) builds beside the data; ``find_pos`` walks it along a field
path. ``Problems`` collects the problems of one load, each placed where its value came
from, pydantic's validation errors included; ``issue_at`` places one problem at a path.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from core.config.errors import ConfigError, ConfigIssue
from core.text import close_matches


class Pos:
    """Where a value came from: file, line/col of its key and of its value (1-based).

    A node knows the keys above it (`up`, for `segments`), not its parent node: a tree
    whose nodes referred to their parents was all cycles, which a load had to unlink
    node by node before reference counting could free it (issue 24)."""

    __slots__ = ("file", "key", "up", "key_mark", "mark", "_children", "base", "label", "later")

    def __init__(
        self,
        file: str | None,
        key: Any = None,
        parent: Pos | None = None,
        key_mark: tuple[int, int] | None = None,
        mark: tuple[int, int] | None = None,
        base: Path | None = None,
        label: str | None = None,
    ) -> None:
        self.file = file
        self.key = key
        # (the parent's `up`, key) below a parent; None at the top of a file
        self.up: tuple[Any, Any] | None = None if parent is None else (parent.up, key)
        self.key_mark = key_mark
        self.mark = mark
        self._children: dict[Any, Pos] = {}
        self.base = base
        self.label = label  # a full display path that overrides the computed one
        # (function, a, b): called as function(self, a, b) to fill `children` the first
        # time they are looked at, or as function(self, a, b, key) for the one child at
        # `key` (None if there is none) when only that one is (`child`): the line
        # reader's (a 10,000-namespace file's places are mostly never looked at, issue 24)
        self.later: tuple[Any, Any, Any] | None = None

    @property
    def children(self) -> dict[Any, Pos]:
        if self.later is not None:
            fill, first, second = self.later
            self.later, made, self._children = None, self._children, {}
            fill(self, first, second)
            if made:  # the children `child` made already stay the same objects
                self._children = {key: made.get(key, node) for key, node in self._children.items()}
        return self._children

    @children.setter
    def children(self, value: dict[Any, Pos]) -> None:
        self._children, self.later = value, None

    def child(self, key: Any) -> Pos | None:
        """children.get(key), making only that child while the others wait."""
        found = self._children.get(key)
        if found is None and self.later is not None:
            fill, first, second = self.later
            found = fill(self, first, second, key)
            if found is not None:
                self._children[key] = found
        return found

    def segments(self) -> list[Any]:
        if self.label is not None:
            return self.label.split(".")
        segs: list[Any] = []
        up = self.up
        while up is not None:
            up, key = up
            segs.append(key)
        return list(reversed(segs))


def _norm(key: Any) -> str:
    return str(key).replace("_", "").replace("-", "").lower()


def find_pos(root: Pos, loc: tuple[Any, ...]) -> tuple[Pos, int]:
    """Deepest node along ``loc`` and how many segments matched (names ~ aliases)."""
    node, matched = root, 0
    for seg in loc:
        child = node.child(seg)
        if child is None:
            wanted = _norm(seg)
            child = next((c for k, c in node.children.items() if _norm(k) == wanted), None)
        if child is None:
            break
        node, matched = child, matched + 1
    return node, matched


_PLAIN_SEG = re.compile(r"^[A-Za-z0-9_-]+$")


def format_segment(seg: Any) -> str:
    text = str(seg)
    if _PLAIN_SEG.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_path(segments: list[Any] | tuple[Any, ...]) -> str:
    out = ""
    for seg in segments:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif seg is not None and str(seg).startswith(("env ", "--")):
            out += ("." if out else "") + str(seg)
        else:
            out += ("." if out else "") + format_segment(seg)
    return out


class Problems:
    """The problems of one load, each placed where its value came from.

    ``root`` is the position tree of the main file (of an empty document until it is
    read). ``add`` takes a file, a (line, col) mark and field path segments; ``at`` a node
    of a tree (its value's position, or its key's with ``key=True``); ``in_file`` a
    problem with a whole file or variable; ``add_validation_errors`` pydantic's errors,
    placed by their location in ``root``.
    """

    def __init__(self, root: Pos) -> None:
        self.issues: list[ConfigIssue] = []
        self.root = root

    def add(self, file: str | None, mark: tuple[int, int] | None, segments: list[Any], message: str) -> None:
        line, col = mark or (None, None)
        self.issues.append(ConfigIssue(file, line, col, format_path(segments), message))

    def in_file(self, file: str | None, message: str, mark: tuple[int, int] | None = None) -> None:
        self.add(file, mark, [], message)

    def at(self, node: Pos | None, message: str, *, key: bool = False) -> None:
        """At ``node`` (None: a problem nothing in the files shows, reported without a place)."""
        if node is None:
            self.add(None, None, [], message)
        else:
            self.add(node.file, node.key_mark if key else node.mark, node.segments(), message)

    def add_validation_errors(
        self, exc: PydanticValidationError, failed: set[int], model: type[BaseModel]
    ) -> None:
        """pydantic's errors from validating ``model`` (what an unknown key's message
        suggests instead); ``failed``: the ids of nodes whose ${VAR} is already reported."""
        self.issues.extend(_pydantic_issues(exc, self.root, failed, model))

    def error(self) -> ConfigError:
        """Every problem, each once, in file order."""
        return ConfigError(sorted_unique(self.issues))



def issue_at(root: Pos, loc: tuple[Any, ...], message: str, *, at_key: bool = False) -> ConfigIssue:
    """A problem with the value at field path ``loc`` of the tree ``root`` (at its key with
    ``at_key``), placed at the deepest node of the path that the files show."""
    node, matched = find_pos(root, loc)
    if matched == len(loc):
        mark = node.key_mark if at_key else (node.mark or node.key_mark)
        segs = node.segments()
    else:
        mark = node.key_mark or node.mark
        segs = [*node.segments(), *loc[matched:]]
    line, col = mark or (None, None)
    return ConfigIssue(node.file or root.file, line, col, format_path(segs), message)


# --------------------------------------------------------------------------- pydantic -> issues

_SECRET_WORDS = ("key", "password", "token", "secret")


def unknown_key_message(key: Any, allowed: list[str]) -> str:
    close = close_matches(str(key), allowed)
    if close:
        return f"unknown key {str(key)!r} (did you mean {close[0]!r}?)"
    if allowed:
        return f"unknown key {str(key)!r} (expected one of: {', '.join(allowed)})"
    return f"unknown key {str(key)!r} (this section takes no keys)"


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class a location in ``model`` points into, walking fields (by name or
    alias) and dicts."""
    current: Any = model
    for seg in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = current.model_fields
            name = next((n for n, f in fields.items() if seg in (n, f.alias)), None)
            if name is None:
                return None
            current = fields[name].annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) is list:
            current = typing.get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _allowed_keys(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    keys: list[str] = []
    for name, f in model.model_fields.items():
        keys.append(name)
        if f.alias and f.alias != name:
            keys.append(f.alias)
    return keys


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pydantic_issues(
    exc: PydanticValidationError, root: Pos, failed: set[int], model: type[BaseModel]
) -> list[ConfigIssue]:
    out: list[ConfigIssue] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        node, matched = find_pos(root, loc)
        if id(node) in failed and matched == len(loc):
            continue  # an unset ${VAR} there is already reported
        segs = node.segments() + list(loc[matched:])
        if matched == len(loc):
            mark = node.key_mark if kind == "extra_forbidden" else (node.mark or node.key_mark)
        else:
            mark = node.key_mark or node.mark
        file = node.file or root.file  # a section only the environment touched: the main file
        line, col = mark or (None, None)
        if kind == "extra_forbidden":
            message = unknown_key_message(loc[-1], _allowed_keys(_model_at(model, loc[:-1])))
        elif kind == "missing":
            message = f"missing required key {str(loc[-1])!r}"
            segs = segs[:-1]
        elif kind in ("cadence", "target", "listen", "key_source", "url_scheme", "store"):  # their own words, no input
            message = err["msg"]
        else:
            message = err["msg"]
            secret = any(w in str(s).lower() for s in loc for w in _SECRET_WORDS)
            if "input" in err and not secret and not isinstance(err["input"], (dict, list)):
                message += f" (got {_short(err['input'])})"
            elif isinstance(err.get("input"), dict):
                message += " (got a mapping)"
            elif isinstance(err.get("input"), list):
                message += " (got a list)"
        out.append(ConfigIssue(file, line, col, format_path(segs), message))
    return out


def sorted_unique(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    unique = list(dict.fromkeys(issues))  # each once, first occurrence first
    return sorted(unique, key=lambda i: (i.file or "", i.line or 0, i.col or 0))
