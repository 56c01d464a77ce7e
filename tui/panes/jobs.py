"""The Namespaces pane: every job, its last anchor, next due time and status."""

from __future__ import annotations

from core.control import Snapshot
from tui.panes.base import PaneSource
from tui.rows import JOB_COLUMNS, job_row
from tui.widgets import DiffTable


class JobsPane(PaneSource):
    name = "jobs"
    wide_row = 0
    title = "Namespaces"

    def make_body(self) -> DiffTable:
        return DiffTable(JOB_COLUMNS, id=self.name, hidden_when_compact=frozenset({"every"}))

    def show(self, snapshot: Snapshot) -> None:
        p, now, level, paused = self.ctx.palette, snapshot.now, snapshot.max_level, snapshot.paused
        self.table.show({str(v.key): job_row(v, now, level, paused, p) for v in snapshot.views})
