"""JSON-lines logging. Records are published on the event bus; writers subscribe to it.

The engine and the rest of core log through `Log`, which only publishes `LogRecord`
events. `JsonLineWriter` turns them into one JSON object per line for stdout or a file;
the dashboard renders the same records. Nothing here may ever print a secret: callers
pass identifiers and messages, never settings objects.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from json.encoder import encode_basestring as _quote
from pathlib import Path
from typing import IO, Any

from core.clock import Clock, iso_utc
from core.events import Event, EventBus, LogRecord

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}


def level_number(name: str) -> int:
    return LEVELS.get(name.upper(), 20)


class Log:
    def __init__(self, bus: EventBus, clock: Clock, level: str = "INFO") -> None:
        self._bus = bus
        self._clock = clock
        self.threshold = level_number(level)

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if LEVELS[level] >= self.threshold:
            self._bus.publish(LogRecord(at=self._clock.now(), level=level, msg=msg, fields=fields))

    def debug(self, msg: str, **fields: Any) -> None:
        self.log("DEBUG", msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.log("INFO", msg, **fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self.log("WARNING", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log("ERROR", msg, **fields)


# json.dumps(body, default=str, ensure_ascii=False), its encoder made once (json.dumps makes
# one per call with these options: a third of a line's cost)
_ENCODE = json.JSONEncoder(default=str, ensure_ascii=False).encode
_OWN = ("time", "level", "msg")  # a record's own keys: a field of that name is not written


def format_record(record: LogRecord) -> str:
    """One JSON object: time, level, msg, then the fields (json.dumps with default=str,
    ensure_ascii=False). Fields that are all texts, integers, booleans and nulls (an
    "anchored" line's, one a receipt) are written out directly, the same bytes."""
    if type(record.level) is not str or type(record.msg) is not str:
        return _format_any(record)
    parts = ['{"time": "', iso_utc(record.at), '", "level": ', _quote(record.level), ', "msg": ', _quote(record.msg)]
    for key, value in record.fields.items():
        kind = type(value)
        if type(key) is not str:
            return _format_any(record)
        if kind is str:
            text = _quote(value)
        elif value is None:
            text = "null"
        elif kind is bool:
            text = "true" if value else "false"
        elif kind is int:
            text = int.__repr__(value)
        else:
            return _format_any(record)
        if key not in _OWN:
            parts += (", ", _quote(key), ": ", text)
    parts.append("}")
    return "".join(parts)


def _format_any(record: LogRecord) -> str:
    body = {"time": iso_utc(record.at), "level": record.level, "msg": record.msg}
    for key, value in record.fields.items():
        if key not in body:
            body[key] = value
    return _ENCODE(body)


class JsonLineWriter:
    """Bus subscriber writing LogRecords as JSON lines; rotates a file by size if asked.

    On an event loop the lines of one loop iteration are written together, in one write,
    at its end (a pass of 10,000 "anchored" lines costs a few writes, not 10,000);
    elsewhere (a thread, a command without a loop) each line is written at once. A file
    rotates once it passed `max_bytes`, after the write that passed it."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        path: Path | None = None,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 5,
    ) -> None:
        self._stream = stream
        self._path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._file: IO[str] | None = None
        self._size = 0  # bytes in the file, as written (no tell() per line)
        self._flush_queued = False
        self._lines: list[str] = []  # formatted, not written yet
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            self._size = self._file.tell()

    def __call__(self, event: Event) -> None:
        if not isinstance(event, LogRecord):
            return
        self._lines.append(format_record(event) + "\n")
        self._flush_soon()

    def _flush_soon(self) -> None:
        if self._flush_queued:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_queued = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the lines gathered since the last flush in one write per output (each
        write on the loop is a system call, after which the loop waits for the GIL behind
        the writer thread: 10,000 lines written one by one stalled /livez), then flush."""
        self._flush_queued = False
        text, self._lines = "".join(self._lines), []
        for out in (self._stream, self._file):
            if out is None or out.closed:
                continue
            try:
                if text:
                    out.write(text)
                out.flush()
            except (OSError, ValueError) as exc:  # a log nobody can read must never stop anchoring
                print(f"log writer {self!r} failed: {exc!r}", file=sys.stderr)
        if text and self._file is not None:
            self._size += len(text.encode())
            if self._size >= self._max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        assert self._path is not None and self._file is not None
        self._file.close()
        for i in range(self._backups - 1, 0, -1):
            older = self._path.with_name(f"{self._path.name}.{i}")
            if older.exists():
                os.replace(older, self._path.with_name(f"{self._path.name}.{i + 1}"))
        if self._backups > 0:
            os.replace(self._path, self._path.with_name(f"{self._path.name}.1"))
        else:
            self._path.unlink(missing_ok=True)
        self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
