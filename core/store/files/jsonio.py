"""Reading and writing the file store's JSON documents (the state file, journal files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic_core

from core import safejson
from core.store.protocols import StateError


def load_json(path: Path, what: str) -> Any:
    """Parse a JSON file, raising StateError naming the file (line:col for syntax errors)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StateError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    try:
        # The Rust parser is twice as fast; the stdlib one gives the line:col of an error.
        return pydantic_core.from_json(data)
    except ValueError:
        pass
    try:
        return safejson.loads(data)
    except UnicodeDecodeError as exc:
        raise StateError(f"{path}: {what} is not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise StateError(
            f"{path}:{exc.lineno}:{exc.colno}: {what} is not valid JSON: {exc.msg}"
        ) from exc


ENCODE_SLICE = 1000  # members of a big object encoded in one call of the encoder


def to_json_in_slices(doc: dict[str, Any], key: str) -> bytes:
    """`pydantic_core.to_json(doc)` with `doc[key]` (an object: the state file's jobs) moved
    last, the same compact bytes, that object encoded ENCODE_SLICE members a call. The Rust
    encoder holds the GIL for a whole call: 10,000 jobs' states were 20 ms in which the
    engine's loop (/livez with it) waited for the writer thread; it takes the GIL between
    two slices now."""
    items = list(doc[key].items())
    head = pydantic_core.to_json({name: value for name, value in doc.items() if name != key})[:-1]
    parts = [
        pydantic_core.to_json(dict(items[start : start + ENCODE_SLICE]))[1:-1]
        for start in range(0, len(items), ENCODE_SLICE)
    ]
    return b"".join((head, b"," if len(head) > 1 else b"", pydantic_core.to_json(key), b":{", b",".join(parts), b"}}"))
