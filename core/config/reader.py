"""The YAML reader: composes a file within limits, builds its data and position tree
(core/config/positions.py), expands ${VAR}; and how a config file is opened.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from core.config.positions import Pos, Problems, format_path

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-((?:[^}\\]|\\.)*))?\}")


def _interpolate(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand ${VAR} and ${VAR:-default}; ``$$`` is a literal ``$``. Returns (text, missing)."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is None:
            missing.append(name)
            return ""
        if len(default) >= 2 and default[0] == default[-1] and default[0] in "\"'":
            return default[1:-1]
        return default

    return _VAR.sub(sub, text), missing


# libyaml's composer when PyYAML was built with it: same nodes and marks, a fraction of the
# time and of the peak memory (the pure-Python scanner makes a token object per character run).
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Bounds on one YAML file, so that a hostile or broken file is refused in milliseconds
# instead of freezing (or killing) the scheduler that reads it. A composed document shares
# an aliased value between its uses; building plain data expands every use, so ten lines of
# aliases (the "billion laughs") would expand to 10**9 values. The composed graph is
# measured first, each node once, and refused past these limits.
MAX_CONFIG_BYTES = 32 * 1024 * 1024  # about 190,000 namespaces (100,000 take 16.7 MB); checked before reading
MAX_YAML_DEPTH = 64  # levels of nesting, aliases expanded (a config needs about 6)
MAX_YAML_ALIASES = 10_000  # uses of `*name` in one file
MAX_YAML_ALIAS_VALUES = 250_000  # values that aliases add once expanded


class NotRegularFile(ValueError):
    """A config file that is a FIFO, a device, a directory or a socket: refused unread."""


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages: "a FIFO", "a directory", ..."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading without ever blocking in open() or read(): O_NONBLOCK (a
    FIFO opens at once instead of waiting for a writer), then fstat on what was opened
    (no race with a rename) must say a regular file, else NotRegularFile."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(
                f"not a regular file ({file_kind(mode)}): a config file must be a regular file"
            )
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_config_text(path: Path) -> str:
    """The file's text; ValueError when it is larger than MAX_CONFIG_BYTES (never read past
    it), NotRegularFile (a ValueError) when it is a FIFO, a device or a directory."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(MAX_CONFIG_BYTES + 1) if size <= MAX_CONFIG_BYTES else b""
    if size > MAX_CONFIG_BYTES or len(data) > MAX_CONFIG_BYTES:
        raise ValueError(
            f"the file is {max(size, len(data))} bytes, more than the {MAX_CONFIG_BYTES} bytes "
            "a config file may have"
        )
    return data.decode("utf-8")


def _yaml_children(node: yaml.Node) -> list[tuple[yaml.Node, yaml.Node]]:
    """(child, where an alias there is reported) pairs: an aliased node carries only the
    position of its anchor, so a use is reported at its key, or at the list holding it."""
    if isinstance(node, yaml.MappingNode):
        out: list[tuple[yaml.Node, yaml.Node]] = []
        for key, value in node.value:
            out += [(key, key), (value, key)]
        return out
    if isinstance(node, yaml.SequenceNode):
        return [(item, node) for item in node.value]
    return []


def _too_deep(document: yaml.Node) -> tuple[yaml.Node, str] | None:
    """_yaml_refusal for a document without aliases (its text holds no anchor `&`): only
    nesting can be refused, at the first node (in document order) past the limit. A
    collection at the limit holding anything is enough to know, so only collections are
    walked."""
    stack: list[tuple[yaml.Node, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        kids = [k for k, _ in _yaml_children(node)]
        if not kids:
            continue
        if depth >= MAX_YAML_DEPTH:
            return kids[0], f"nested more than {MAX_YAML_DEPTH} levels deep"
        stack.extend((kid, depth + 1) for kid in reversed(kids) if not isinstance(kid, yaml.ScalarNode))
    return None


def _yaml_refusal(document: yaml.Node) -> tuple[yaml.Node, str] | None:
    """Why a composed document must not be built, and the node to report it at; or None.

    One pass over the distinct nodes (an alias is the node it names, met again): the
    expanded size and height of each node are kept, so an alias costs one look-up.
    """
    sizes: dict[int, int] = {}  # values under a node once aliases are expanded, itself included
    heights: dict[int, int] = {}  # levels from a node down, aliases expanded
    open_nodes: set[int] = set()  # the node being measured and its ancestors
    distinct = aliases = 0
    stack: list[tuple[yaml.Node, yaml.Node, int, bool]] = [(document, document, 1, False)]
    while stack:
        node, where, depth, leaving = stack.pop()
        nid = id(node)
        if leaving:
            kids = [id(k) for k, _ in _yaml_children(node)]
            sizes[nid] = 1 + sum(sizes[k] for k in kids)
            heights[nid] = 1 + max((heights[k] for k in kids), default=0)
            open_nodes.discard(nid)
            if sizes[nid] - distinct > MAX_YAML_ALIAS_VALUES:
                return node, (
                    f"aliases here expand to {sizes[nid]} values; aliases may add at most "
                    f"{MAX_YAML_ALIAS_VALUES} to a file (an alias bomb?)"
                )
            continue
        if nid in open_nodes:
            return where, "an alias refers to a value that contains it (a recursive alias)"
        if nid in sizes:
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                return where, f"more than {MAX_YAML_ALIASES} aliases (*name) in one file"
            if depth - 1 + heights[nid] > MAX_YAML_DEPTH:
                return where, f"nested more than {MAX_YAML_DEPTH} levels deep (aliases expanded)"
            continue
        if depth > MAX_YAML_DEPTH:
            return node, f"nested more than {MAX_YAML_DEPTH} levels deep"
        distinct += 1
        open_nodes.add(nid)
        stack.append((node, where, depth, True))
        # In document order, so an anchor is measured before its aliases and those are
        # reported where they are used.
        stack.extend((kid, at, depth + 1, False) for kid, at in reversed(_yaml_children(node)))
    return None


_STR = "tag:yaml.org,2002:str"  # a string scalar: its text, without the constructor's bookkeeping


class YamlReader:
    """Composes a YAML file, builds plain data and a position tree, expands ${VAR}."""

    def __init__(
        self, env: Mapping[str, str], problems: Problems, *, allow_unset: bool = False,
        unused: Callable[[list[Any]], str | None] = lambda segments: None,
        plain_lines: bool = True,
    ) -> None:
        self.env = env
        # The plainest files read line by line (_LineBuild); False: always through libyaml
        # (tests compare the two).
        self.plain_lines = plain_lines
        self.problems = problems
        self.failed: set[int] = set()  # ids of Pos whose value failed interpolation
        self.allow_unset = allow_unset  # unset ${VAR}: "" and a warning instead of an error
        # Why a value at these segments is never used (a btc target's), else None: an
        # unset ${VAR} there is "" and a warning saying why, never an error.
        self.unused = unused
        self.unset: list[str] = []

    def read(self, path: Path, display: str, base: Path) -> tuple[Any, Pos] | None:
        try:
            text = read_config_text(path)
        except FileNotFoundError:
            self.problems.in_file(display, "file not found")
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.in_file(display, f"cannot read: {exc}")
            return None
        except ValueError as exc:  # too large
            self.problems.in_file(display, str(exc))
            return None
        self.file = display
        self.base = base
        self.constructor = yaml.SafeLoader("")  # constructs scalars with YAML's own rules
        fast = _LineBuild(self, text).read(Pos(display, base=base)) if self.plain_lines else None
        if fast is None:
            fast = _EventBuild(self, text).read(Pos(display, base=base))
        if fast is not None:
            return fast
        try:
            node = yaml.compose(text, Loader=_COMPOSER)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or "invalid YAML"
            if exc.context:
                problem = f"{problem} ({exc.context}"
                if exc.context_mark and mark is not exc.context_mark:
                    problem += f" at line {exc.context_mark.line + 1}"
                problem += ")"
            where = (mark.line + 1, mark.column + 1) if mark else None
            if mark is not None and _char_at(text, mark.line, mark.column) == "\t":
                problem = "a tab character: YAML indents with spaces only, replace it with spaces"
            self.problems.in_file(display, f"YAML syntax error: {problem}", where)
            return None
        except yaml.YAMLError as exc:
            self.problems.in_file(display, f"YAML error: {exc}")
            return None
        except RecursionError:  # the pure-Python composer (no libyaml) recurses per level
            self.problems.in_file(display, "YAML nested too deeply")
            return None
        root = Pos(display, base=base)
        if node is None:
            return {}, root
        # Without an anchor there is no alias to measure: the cheap walk (issue 24).
        refusal = _yaml_refusal(node) if "&" in text else _too_deep(node)
        if refusal is not None:
            at, message = refusal
            self.problems.in_file(display, message, (at.start_mark.line + 1, at.start_mark.column + 1))
            return None
        root.mark = (node.start_mark.line + 1, node.start_mark.column + 1)
        return self._build(node, root), root

    def _build(self, node: yaml.Node, pos: Pos) -> Any:
        if isinstance(node, yaml.MappingNode):
            self.constructor.flatten_mapping(node)
            out: dict[Any, Any] = {}
            first: dict[Any, tuple[int, int]] = {}
            for key_node, value_node in node.value:
                key_mark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                if not isinstance(key_node, yaml.ScalarNode):
                    self.problems.add(pos.file, key_mark, pos.segments(), "a key must be a plain value, not a list or mapping")
                    continue
                key = key_node.value if key_node.tag == _STR else self.constructor.construct_object(key_node)
                if key in first:
                    child = Pos(self.file, key, pos, key_mark, None, self.base)
                    self.problems.at(child, f"duplicate key {str(key)!r} (first at line {first[key][0]}, column {first[key][1]})", key=True)
                    continue
                first[key] = key_mark
                value_mark = (value_node.start_mark.line + 1, value_node.start_mark.column + 1)
                child = Pos(self.file, key, pos, key_mark, value_mark, self.base)
                pos.children[key] = child
                out[key] = self._build(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                mark = (item.start_mark.line + 1, item.start_mark.column + 1)
                child = Pos(self.file, i, pos, mark, mark, self.base)
                pos.children[i] = child
                items.append(self._build(item, child))
            return items
        value = node.value if node.tag == _STR else self.constructor.construct_object(node)
        quoted = isinstance(node, yaml.ScalarNode) and bool(node.style)
        return self.scalar(value, node.value, quoted, pos)

    def scalar(self, value: Any, text: str, quoted: bool, pos: Pos) -> Any:
        """A scalar's value once constructed (`text` as written): hex stays text, ${VAR}
        expanded."""
        if isinstance(value, int) and not quoted and text.lower().startswith(("0x", "+0x", "-0x")):
            value = text  # 0x... are addresses and keys here, not numbers: keep the text
        if isinstance(value, str) and "$" in value:
            value, missing = _interpolate(value, self.env)
            why_unused = self.unused(pos.segments()) if missing else None
            for name in missing:
                if why_unused is not None:
                    line = f":{pos.mark[0]}:{pos.mark[1]}" if pos.mark else ""
                    self.unset.append(
                        f"{pos.file}{line}: {format_path(pos.segments())}: variable {name} is not set, "
                        f"and need not be: {why_unused}"
                    )
                    continue
                if self.allow_unset:
                    self.unset.append(f"{pos.file}: {format_path(pos.segments())}: variable {name} is not set")
                    continue
                self.failed.add(id(pos))
                self.problems.at(pos, f"variable {name} is not set (set it, or write ${{{name}:-default}})")
        return value


class _GeneralPath(Exception):
    """The text needs the composed path (YamlReader.read): an anchor, an explicit tag, a
    merge key or another uncommon scalar type, a key that is a collection, several
    documents, nesting past the limit, or a YAML error to report."""


_UNSEEN = object()
_PLAIN_TAGS = frozenset(
    {_STR, *(f"tag:yaml.org,2002:{kind}" for kind in ("int", "float", "bool", "null"))}
)


class _EventBuild:
    """The common file built straight from libyaml's events (issue 24: a 10,000-namespace
    file composed into nodes, measured and then built took most of a load). The same data,
    positions and problems as YamlReader._build; anything else is left to the composed
    path, with what this pass reported taken back."""

    def __init__(self, reader: YamlReader, text: str) -> None:
        self.reader = reader
        self.text = text
        self.constructed: dict[str, Any] = {}  # plain scalars: text -> value

    def read(self, root: Pos) -> tuple[Any, Pos] | None:
        """(data, root) or None when the composed path must read the text."""
        if "&" in self.text:  # an anchor: aliases to measure
            return None
        reader = self.reader
        before = (len(reader.problems.issues), len(reader.unset), set(reader.failed))
        try:
            return self._document(root), root
        except (_GeneralPath, yaml.YAMLError):
            del reader.problems.issues[before[0]:]
            del reader.unset[before[1]:]
            reader.failed = before[2]
            return None

    def _document(self, root: Pos) -> Any:
        self.events = _COMPOSER(self.text)
        self.get: Any = self.events.get_event
        self.get()  # StreamStart
        event = self.get()
        if isinstance(event, yaml.StreamEndEvent):
            return {}
        first: Any = self.get()
        root.mark = _mark(first)
        data = self._node(first, root, 1)
        if not isinstance(self.get(), yaml.DocumentEndEvent) or not isinstance(self.get(), yaml.StreamEndEvent):
            raise _GeneralPath  # several documents: the composer's error
        return data

    def _node(self, event: Any, pos: Pos, depth: int) -> Any:  # a yaml.Event
        if depth > MAX_YAML_DEPTH or getattr(event, "tag", None) is not None:
            raise _GeneralPath
        kind = type(event)
        if kind is yaml.ScalarEvent:
            value = self._construct(event)
            if type(value) is str and "$" not in value:
                return value  # what reader.scalar would return, without the call
            return self.reader.scalar(value, event.value, bool(event.style), pos)
        if kind is yaml.MappingStartEvent:
            return self._mapping(pos, depth)
        if kind is yaml.SequenceStartEvent:
            return self._sequence(pos, depth)
        raise _GeneralPath

    def _construct(self, event: Any) -> Any:  # a yaml.ScalarEvent
        text = event.value
        if not event.implicit[0]:  # quoted or a block scalar: a string
            return text
        value = self.constructed.get(text, _UNSEEN)
        if value is _UNSEEN:
            tag = self.events.resolve(yaml.ScalarNode, text, (True, False))
            if tag not in _PLAIN_TAGS:
                raise _GeneralPath  # timestamps, merge keys, `=`
            node = yaml.ScalarNode(tag, text, event.start_mark, event.end_mark, event.style)
            value = text if tag == _STR else self.reader.constructor.construct_object(node)
            self.constructed[text] = value
        return value

    def _mapping(self, pos: Pos, depth: int) -> dict[Any, Any]:
        reader, get, construct = self.reader, self.get, self._construct
        file, base, children = reader.file, reader.base, pos.children  # children: fresh, {}
        out: dict[Any, Any] = {}
        if depth >= MAX_YAML_DEPTH:
            if type(get()) is yaml.MappingEndEvent:
                return out
            raise _GeneralPath  # a key past the limit
        while True:
            key_event: Any = get()
            if type(key_event) is yaml.MappingEndEvent:
                return out
            if type(key_event) is not yaml.ScalarEvent or key_event.tag is not None:
                raise _GeneralPath  # a collection as a key, a tagged key
            key = construct(key_event)
            mark: Any = key_event.start_mark
            key_mark = (mark.line + 1, mark.column + 1)
            value_event = get()
            if key in children:
                line, column = children[key].key_mark or key_mark  # always set here
                child = Pos(file, key, pos, key_mark, None, base)
                reader.problems.at(child, f"duplicate key {str(key)!r} (first at line {line}, column {column})", key=True)
                self._skip(value_event, depth + 1)
                continue
            mark = value_event.start_mark
            child = children[key] = Pos(file, key, pos, key_mark, (mark.line + 1, mark.column + 1), base)
            if type(value_event) is yaml.ScalarEvent and value_event.tag is None:  # _node, inlined
                value = construct(value_event)
                if type(value) is not str or "$" in value:
                    value = reader.scalar(value, value_event.value, bool(value_event.style), child)
                out[key] = value
            else:
                out[key] = self._node(value_event, child, depth + 1)

    def _sequence(self, pos: Pos, depth: int) -> list[Any]:
        reader, get = self.reader, self.get
        items: list[Any] = []
        while True:
            event = get()
            if type(event) is yaml.SequenceEndEvent:
                return items
            mark = _mark(event)
            child = Pos(reader.file, len(items), pos, mark, mark, reader.base)
            pos.children[len(items)] = child
            items.append(self._node(event, child, depth + 1))

    def _skip(self, event: Any, depth: int) -> None:  # a yaml.Event
        """Past a value that is not built (a duplicate key's), its nesting still limited."""
        open_collections = 0
        while True:
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                open_collections -= 1
            elif depth + open_collections > MAX_YAML_DEPTH:
                raise _GeneralPath
            elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                open_collections += 1
            if open_collections == 0:
                return
            event = self.get()


# _LineBuild's grammar: single-line scalars whose extent is the same whatever YAML's
# finer rules say (no spaces, no indicators, a colon only inside), and the characters
# libyaml reads as they are (no tab, no CR, no line break but \n, no BOM, no comment).
_PLAIN_KEY = r"[A-Za-z0-9_][A-Za-z0-9_.@/-]*(?::[A-Za-z0-9_.@/-]+)*"
_PLAIN_VALUE = r"[A-Za-z0-9_./~+][A-Za-z0-9_./~+*@=%-]*(?::[A-Za-z0-9_./~+*@=%-]+)*"
_FLOW_KEY = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_FLOW_VALUE = r"[A-Za-z0-9_./~+][A-Za-z0-9_./~+*@=%-]*"
_QUOTED = r""""[^"\\]*"|'[^']*'"""
# `rest` ends at its last non-space (greedy: a lazy `.*?` tried the end at every character)
_ENTRY = re.compile(rf"( *)(?:(?P<plain>{_PLAIN_KEY})|\"(?P<dq>[^\"\\]*)\"):(?: +(?P<rest>.*[^ ]))? *$")
_BLOCK_SCALAR = re.compile(rf"{_PLAIN_VALUE}|{_QUOTED}")
_FLOW_PAIR = re.compile(
    rf" *(?:(?P<key>{_FLOW_KEY})|\"(?P<dqkey>[^\"\\]*)\"): +"
    rf"(?P<value>{_FLOW_VALUE}|{_QUOTED}) *(?P<end>[,}}])"
)
_UNREAD_CHARS = "[^\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
_READ_ASCII = b"\n" + bytes(range(0x20, 0x7F))  # _UNREAD_CHARS's complement in ASCII


@functools.cache
def _unread_chars() -> re.Pattern[str]:
    """_UNREAD_CHARS compiled when a text that is not ASCII first needs it (13 ms of every
    start, for a config that is ASCII)."""
    return re.compile(_UNREAD_CHARS)


def _has_unread_chars(text: str) -> bool:
    """_UNREAD_CHARS searched in `text`, for an ASCII text without the regex (a third of its time)."""
    if text.isascii():
        return bool(text.encode("ascii").translate(None, _READ_ASCII))
    return _unread_chars().search(text) is not None


_LINE_WIDTH = 1000  # libyaml refuses a key over 1024 characters: such a line is its to read
_LINE_DEPTH = 32  # deeper than a config goes, well within MAX_YAML_DEPTH
# What one line says (_LineBuild._parse), by kind: a key and a nested block on the lines
# after; a key and a scalar; a key and a flow mapping of scalars.
_NESTED, _SCALAR, _FLOW = 0, 1, 2
# The first characters of YAML's implicit tags: a plain scalar starting with another is a
# string, as resolve() would find going through none of them (None: a tag for any first
# character or a path resolver is registered, and resolve() decides every time).
_FIRSTS: frozenset[Any] = frozenset(yaml.resolver.Resolver.yaml_implicit_resolvers)
_IMPLICIT_FIRST = None if None in _FIRSTS or yaml.resolver.Resolver.yaml_path_resolvers else _FIRSTS
# The depth from which _LineBuild._data gives equal blocks one mapping (a namespace's
# cadences, a cadence: 10,000 namespaces repeat a few), below what a load changes in the
# raw data (the sections, 2, and their entries, 3: the environment's and the flags'
# settings, the VaultMesh files' merge, verify's dropped targets): nothing changes a
# mapping this deep, and SharedWhenEqual knows a shared one by its identity.
_SHARED_DEPTH = 4
_NOWHERE = Pos(None)  # YamlReader.scalar's place of a value without ${VAR}: never read
# value (a plain scalar's constructed, YamlReader.scalar's when the text holds no $, which
# only then depends on where it is), text as written, quoted, and whether it holds a $
_Scalar = tuple[Any, str, bool, bool]


class _LineBuild:
    """The plainest files read line by line, without libyaml (issue 24: its events alone
    cost a 10,000-namespace VaultMesh namespaces.yaml more than the rest of a load): block
    mappings indented with spaces whose values are nested mappings, single-line plain or
    quoted scalars, or single-line flow mappings of those. The same data, positions and
    problems as _EventBuild (tests/unit/test_config_lines.py compares them); anything else (a
    comment, a list, an anchor, a duplicate key, a multi-line or escaped scalar, a syntax
    error) is left to _EventBuild, with what this pass reported taken back. A line's text
    is parsed once: thousands of namespaces repeat the same cadence lines."""

    def __init__(self, reader: YamlReader, text: str) -> None:
        self.reader = reader
        self.text = text
        self.constructed: dict[str, Any] = {}  # plain scalars: text -> value
        self.parsed: dict[str, tuple[Any, ...] | None] = {}  # line -> _parse(line)
        # a nested block's data by its lines (the ids of their parses), from _SHARED_DEPTH
        self.blocks: dict[tuple[int, ...], dict[Any, Any]] = {}
        self.resolve: Any = yaml.resolver.Resolver().resolve  # YAML's implicit tags

    def read(self, root: Pos) -> tuple[Any, Pos] | None:
        """(data, root) or None when _EventBuild must read the text."""
        reader = self.reader
        before = (len(reader.problems.issues), len(reader.unset), set(reader.failed))
        try:
            if "#" in self.text or _has_unread_chars(self.text):
                raise _GeneralPath
            self.lines = self.text.split("\n")
            if max(map(len, self.lines)) > _LINE_WIDTH:
                raise _GeneralPath
            self.entries = self._entries()
            self.at = 0  # the next entry to read
            if not self.entries or self.entries[0][1][0] != 0:
                raise _GeneralPath  # empty, or not a mapping at the left margin
            root.mark = (self.entries[0][0] + 1, 1)
            if "$" in self.text:  # a ${VAR} is expanded, and reported, at its place
                return self._block(0, root, 1), root
            data = self._data(0, 1)
            root.later = (_block_children, self.entries, 0)
            return data, root
        except _GeneralPath:
            del reader.problems.issues[before[0]:]
            del reader.unset[before[1]:]
            reader.failed = before[2]
            return None

    def _entries(self) -> list[tuple[int, tuple[Any, ...]]]:
        """(index, what it says) of each line that is not blank."""
        parsed = self.parsed
        entries: list[tuple[int, tuple[Any, ...]]] = []
        known, add = parsed.get, entries.append
        for i, line in enumerate(self.lines):
            info: Any = known(line, _UNSEEN)
            if info is _UNSEEN:
                info = parsed[line] = self._parse(line)
            if info is not None:
                add((i, info))
        return entries

    def _parse(self, line: str) -> tuple[Any, ...] | None:
        """(indent, key, kind, what follows: None, a _Scalar, or the flow mapping's
        (key, key column, value column, _Scalar) in order), None for a blank line."""
        if not line.strip(" "):
            return None
        m = _ENTRY.fullmatch(line)
        if m is None:
            raise _GeneralPath  # a list, a stray word, anything else
        plain = m.group("plain")
        key = self._plain(plain) if plain is not None else m.group("dq")
        rest = m.group("rest")
        if not rest:
            return len(m.group(1)), key, _NESTED, None
        col = m.start("rest")
        if rest[0] != "{":
            if _BLOCK_SCALAR.fullmatch(rest) is None:
                raise _GeneralPath
            return len(m.group(1)), key, _SCALAR, (col, self._scalar(rest))
        pairs: list[tuple[Any, int, int, _Scalar]] = []
        at = col + 1
        if line[at:].strip(" ") != "}":
            while True:
                pair = _FLOW_PAIR.match(line, at)
                if pair is None:
                    raise _GeneralPath
                plain = pair.group("key")
                name = self._plain(plain) if plain is not None else pair.group("dqkey")
                if any(name == seen for seen, *_ in pairs):
                    raise _GeneralPath  # a duplicate key: _EventBuild reports it
                start = pair.start("key") if plain is not None else pair.start("dqkey") - 1
                pairs.append((name, start, pair.start("value"), self._scalar(pair.group("value"))))
                at = pair.end()
                if pair.group("end") == "}":
                    break
            if line[at:].strip(" "):
                raise _GeneralPath  # more after the mapping
        # the mapping as data when no value holds a ${VAR} (then where they are is looked
        # up only for a problem: _flow_leaves)
        plain = None if any(expand for *_, (_, _, _, expand) in pairs) else {name: v[0] for name, _, _, v in pairs}
        return len(m.group(1)), key, _FLOW, (col, tuple(pairs), plain)

    def _scalar(self, text: str) -> _Scalar:
        if text[0] in "\"'":
            value, text, quoted = text[1:-1], text[1:-1], True
        else:
            value, quoted = self._plain(text), False
        if "$" in text:
            return value, text, quoted, True
        if type(value) is not str:  # a number's text may be kept (0x...); a string stays
            value = self.reader.scalar(value, text, quoted, _NOWHERE)
        return value, text, quoted, False

    def _plain(self, text: str) -> Any:
        """A plain scalar's value, by YAML's implicit resolution (as _EventBuild._construct)."""
        value = self.constructed.get(text, _UNSEEN)
        if value is _UNSEEN and _IMPLICIT_FIRST is not None and text[0] not in _IMPLICIT_FIRST:
            return text  # no implicit tag starts so (a path): a string, as resolve() says
        if value is _UNSEEN:
            tag = self.resolve(yaml.ScalarNode, text, (True, False))
            if tag not in _PLAIN_TAGS:
                raise _GeneralPath
            node = yaml.ScalarNode(tag, text)
            value = text if tag == _STR else self.reader.constructor.construct_object(node)
            self.constructed[text] = value
        return value

    def _data(self, indent: int, depth: int) -> dict[Any, Any]:
        """_block's data alone, for a text without `$` (no value to expand, no problem
        to place while reading): the places are made when first looked at
        (_block_children), and a 100,000-namespace file's are mostly never looked at."""
        if depth > _LINE_DEPTH:
            raise _GeneralPath
        out: dict[Any, Any] = {}
        entries, at, end = self.entries, self.at, len(self.entries)
        while at < end:
            _, (n, key, kind, what) = entries[at]
            if n < indent:
                break
            if n > indent or key in out:
                raise _GeneralPath  # a stray indent; a duplicate key (_EventBuild reports it)
            at += 1
            if kind == _SCALAR:
                out[key] = what[1][0]
            elif kind == _FLOW:
                out[key] = what[2].copy()
            else:  # a nested block mapping, more indented, on the next line
                if at == end or entries[at][1][0] <= indent:
                    raise _GeneralPath  # an empty value
                self.at = at
                block = self._data(entries[at][1][0], depth + 1)
                if depth + 1 >= _SHARED_DEPTH:  # the same lines: one mapping
                    block = self.blocks.setdefault(tuple([id(info) for _, info in entries[at:self.at]]), block)
                out[key] = block
                at = self.at
        self.at = at
        return out

    def _block(self, indent: int, pos: Pos, depth: int) -> dict[Any, Any]:
        """The block mapping whose keys are at column `indent` (0-based), from the next line."""
        if depth > _LINE_DEPTH:
            raise _GeneralPath
        reader = self.reader
        file, base, children, scalar = reader.file, reader.base, pos.children, reader.scalar
        out: dict[Any, Any] = {}
        entries = self.entries
        while self.at < len(entries):
            i, (n, key, kind, what) = entries[self.at]
            if n < indent:
                break
            if n > indent or key in children:
                raise _GeneralPath  # a stray indent; a duplicate key (_EventBuild reports it)
            key_mark = (i + 1, n + 1)
            self.at += 1
            if kind == _NESTED:  # a nested block mapping, more indented, on the next line
                if self.at == len(entries) or entries[self.at][1][0] <= indent:
                    raise _GeneralPath  # an empty value
                j, inner = entries[self.at][0], entries[self.at][1][0]
                child = children[key] = Pos(file, key, pos, key_mark, (j + 1, inner + 1), base)
                out[key] = self._block(inner, child, depth + 1)
                continue
            child = children[key] = Pos(file, key, pos, key_mark, (i + 1, what[0] + 1), base)
            if kind == _SCALAR:
                value, text, quoted, expand = what[1]
                out[key] = scalar(value, text, quoted, child) if expand else value
                continue
            _, pairs, plain = what
            if plain is not None:
                child.later = (_flow_leaves, i, pairs)
                out[key] = plain.copy()
                continue
            _flow_leaves(child, i, pairs)
            leaves = child.children
            out[key] = {
                name: scalar(value, text, quoted, leaves[name]) if expand else value
                for name, _, _, (value, text, quoted, expand) in pairs
            }
        return out


def _block_children(
    pos: Pos, entries: list[tuple[int, tuple[Any, ...]]], first: int, only: Any = _UNSEEN
) -> Pos | None:
    """The places of a block mapping's keys (its first at `entries[first]`) at `pos`, as
    _LineBuild._block makes them, or (`only`) the place of that one key, returned; a
    nested block's and a flow mapping's own are made when they are looked at."""
    file, base = pos.file, pos.base
    children = pos.children if only is _UNSEEN else {}
    indent, end, at = entries[first][1][0], len(entries), first
    while at < end:
        i, (n, key, kind, what) = entries[at]
        if n < indent:
            break
        at += 1
        if n > indent or (only is not _UNSEEN and key is not only and key != only):
            continue  # inside a nested block; another key
        if kind == _NESTED:
            j, inner = entries[at][0], entries[at][1][0]
            child = children[key] = Pos(file, key, pos, (i + 1, n + 1), (j + 1, inner + 1), base)
            child.later = (_block_children, entries, at)
        else:
            child = children[key] = Pos(file, key, pos, (i + 1, n + 1), (i + 1, what[0] + 1), base)
            if kind == _FLOW:
                child.later = (_flow_leaves, i, what[1])
        if only is not _UNSEEN:
            return child
    return None


def _flow_leaves(pos: Pos, i: int, pairs: tuple[tuple[Any, int, int, _Scalar], ...], only: Any = _UNSEEN) -> Pos | None:
    """The positions of the values of a one-line mapping (line `i`, 0-based) at `pos`, or
    (`only`) the position of that one key's, returned."""
    file, base = pos.file, pos.base
    if only is not _UNSEEN:
        for name, key_col, value_col, _ in pairs:
            if name is only or name == only:
                return Pos(file, name, pos, (i + 1, key_col + 1), (i + 1, value_col + 1), base)
        return None
    children = pos.children
    for name, key_col, value_col, _ in pairs:
        children[name] = Pos(file, name, pos, (i + 1, key_col + 1), (i + 1, value_col + 1), base)
    return None


def _mark(event: Any) -> tuple[int, int]:
    """Where an event starts: (line, column), 1-based."""
    return event.start_mark.line + 1, event.start_mark.column + 1


def _char_at(text: str, line: int, column: int) -> str:
    """The character at 0-based `line`, `column` of `text` ("" past its end)."""
    lines = text.split("\n")
    return lines[line][column:column + 1] if line < len(lines) else ""
