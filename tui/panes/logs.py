"""The Logs pane: the bounded log, a minimum level, follow, and a selected line."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from textual.screen import Screen

from core.control import Snapshot
from core.events import Event, LogRecord
from core.jobs import JobKey
from tui.panes.base import PaneSource
from tui.rows import log_line, log_record_lines
from tui.screens import MessageScreen
from tui.widgets import LogView

LOG_LINES = 5000
COPIED_FIELDS = ("tx_hash", "tx", "receipt", "root")  # the copy key's preference


class LogsPane(PaneSource):
    name = "logs"
    wide_row = 2
    title = "Logs"
    no_job = "the selected log line names no job: select a line with job=... (j/k), or a job in Namespaces (1)"
    help = (
        ("l", "logs: cycle the minimum level (DEBUG, INFO, WARNING, ERROR)"),
        ("p / G", "logs: pause-follow / follow the end"),
    )
    compact_table = False

    def make_body(self) -> LogView:
        return LogView(max_lines=LOG_LINES, data_dir=self.ctx.data_dir, id=self.name)

    @property
    def view(self) -> LogView:
        assert isinstance(self.body, LogView)
        return self.body

    def take(self, events: Sequence[Event], logs: Sequence[LogRecord]) -> None:
        if logs:
            self.view.add(logs)

    def selected_job(self) -> JobKey | None:
        """The `job` field of the selected line (or its one `jobs` entry)."""
        record = self.view.selected_record
        fields = record.fields if record is not None else {}
        jobs = fields.get("jobs")
        job = fields.get("job") or (jobs[0] if isinstance(jobs, list) and len(jobs) == 1 else None)
        try:
            return JobKey.parse(job) if isinstance(job, str) else None
        except ValueError:
            return None

    def copy_text(self, snapshot: Snapshot) -> tuple[str, str] | None:
        """The selected line's transaction id, receipt or root, else the line itself."""
        record = self.view.selected_record
        if record is None:
            return None
        for field in COPIED_FIELDS:
            value = record.fields.get(field)
            if isinstance(value, str) and value:
                return field, value
        return "log line", log_line(record, self.ctx.data_dir)

    def lines(self) -> list[str]:
        """The lines the pane shows (its filter and level), whole, oldest first."""
        return [log_line(r, self.ctx.data_dir) for r in self.view.shown]

    def save(self, folder: Path, now: float) -> tuple[bool, str]:
        """The lines shown (as filtered, whole) to `folder`/vmsh-logs-<now, UTC>.txt, never
        over an existing file; (saved, what to tell the operator: the path, or why not)."""
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
        path = folder / f"vmsh-logs-{stamp}.txt"
        lines = self.lines()
        try:
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640), "w", encoding="utf-8") as out:
                out.writelines(line + "\n" for line in lines)
        except OSError as exc:
            return False, f"logs not saved: {path}: {exc.strerror or exc}"
        return True, f"logs saved: {path} ({len(lines)} lines)"

    def detail(self) -> Screen[None] | str:
        record = self.view.selected_record
        if record is None:
            return "no log line selected (j/k select one)"
        lines = log_record_lines(record, self.ctx.data_dir)
        return MessageScreen(f"Log line: {record.level}", lines, error=record.level == "ERROR")
