"""`loads` for JSON the scheduler did not write itself: batch files, receipts handed to
`verify`, state files to import, control-socket request bodies.

json's C scanner recurses once per nesting level and stops only at the interpreter's
recursion limit, which a dependency (py_ecc, imported by eth-account) raises to 100,000:
deep enough to overflow the C stack, a segfault rather than a RecursionError. So nesting
is measured before parsing, and anything deeper than MAX_DEPTH is refused as a
`JsonTooDeep`, a `json.JSONDecodeError` with the line:column where the limit was passed:
every caller's existing handler for bad JSON reports it with the file and position.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 256

_OPEN, _CLOSE = (0x5B, 0x7B), (0x5D, 0x7D)  # [ {   ] }
_QUOTE, _BACKSLASH = 0x22, 0x5C


class JsonTooDeep(json.JSONDecodeError):
    """Nested deeper than MAX_DEPTH (a JSONDecodeError, so handlers of bad JSON catch it)."""


def depth_exceeded_at(data: bytes, limit: int = MAX_DEPTH) -> int | None:
    """The offset of the bracket that nests deeper than `limit` (brackets inside strings do
    not count), or None. The linear scan runs only when the text holds more opening
    brackets than the limit, so ordinary documents cost two `bytes.count` calls."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return None
    depth, in_string, escaped = 0, False, False
    for offset, byte in enumerate(data):
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            if depth > limit:
                return offset
        elif byte in _CLOSE:
            depth -= 1
    return None


def loads(data: bytes | str) -> Any:
    """json.loads, refusing nesting deeper than MAX_DEPTH with JsonTooDeep."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    offset = depth_exceeded_at(raw)
    if offset is not None:
        text = raw[:offset].decode("utf-8", "replace")  # for the line:column only
        raise JsonTooDeep(f"nested deeper than {MAX_DEPTH} levels", text, len(text))
    return json.loads(data)


__all__ = ["MAX_DEPTH", "JsonTooDeep", "depth_exceeded_at", "loads"]
