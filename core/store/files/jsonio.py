"""Reading the file store's JSON documents (the state file, journal files)."""

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
