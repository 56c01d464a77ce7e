"""The file store's audit log of the control API: `<data_dir>/audit.jsonl`."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class FileAudit:
    """The control API's audit log: `<data_dir>/audit.jsonl`, one JSON object per line.

    Rotated by size: a record that would take the file past `max_bytes` first renames it
    to `audit.jsonl.1` (`.1` to `.2`, ..., up to `keep`; the oldest is removed), so the log
    never holds more than about `max_bytes * (keep + 1)` on disk. What goes in (refused
    commands compact and rate-limited per uid) is decided by core/control_server.py."""

    MAX_BYTES = 10 * 1024 * 1024
    KEEP = 3

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        self.path = path
        self.where = str(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()  # appends come from worker threads

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.max_bytes:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    def _rotate(self) -> None:
        def numbered(n: int) -> Path:
            return self.path.with_name(f"{self.path.name}.{n}")

        if self.keep <= 0:
            self.path.unlink(missing_ok=True)
            return
        numbered(self.keep).unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            if numbered(n).exists():
                os.replace(numbered(n), numbered(n + 1))
        os.replace(self.path, numbered(1))
