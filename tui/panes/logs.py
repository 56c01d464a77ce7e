"""The Logs pane: the bounded log, a minimum level, follow, and a selected line."""

from __future__ import annotations

from collections.abc import Sequence

from textual.screen import Screen

from core.events import Event, LogRecord
from core.jobs import JobKey
from tui.panes.base import PaneSource
from tui.rows import log_record_lines
from tui.screens import MessageScreen
from tui.widgets import LogView

LOG_LINES = 5000


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

    def detail(self) -> Screen[None] | str:
        record = self.view.selected_record
        if record is None:
            return "no log line selected (j/k select one)"
        lines = log_record_lines(record, self.ctx.data_dir)
        return MessageScreen(f"Log line: {record.level}", lines, error=record.level == "ERROR")
