"""The Namespaces pane: every job, its last anchor, next due time and status; under it,
above it, the selected job's target's latency and failures over the last minutes
(tui/trends.py)."""

from __future__ import annotations

from collections.abc import Sequence

from core.control import Snapshot
from core.events import Event, LogRecord
from tui.panes.base import PaneContext, PaneSource
from tui.rows import JOB_COLUMNS, job_row
from tui.trends import Trends, TrendStrip
from tui.widgets import DiffTable


class JobsPane(PaneSource):
    name = "jobs"
    wide_row = 0
    note_above = True  # the notifications pop up at the bottom right
    title = "Namespaces"

    def __init__(self, ctx: PaneContext) -> None:
        self.trends = Trends()
        self._snapshot: Snapshot | None = None
        super().__init__(ctx)

    def make_note(self) -> TrendStrip:
        return TrendStrip(self.trends, id="trends")

    @property
    def strip(self) -> TrendStrip:
        assert isinstance(self.footnote, TrendStrip)
        return self.footnote

    def take(self, events: Sequence[Event], logs: Sequence[LogRecord]) -> None:
        self.trends.take(events)

    def selection_changed(self) -> None:
        snap = self._snapshot
        if snap is None:
            return
        key = self.selected_job()
        target = next((v.spec.target for v in snap.views if v.key == key), None)
        self.strip.show(target, snap.now)

    def make_body(self) -> DiffTable:
        return DiffTable(JOB_COLUMNS, id=self.name, hidden_when_compact=frozenset({"every"}))

    def show(self, snapshot: Snapshot) -> None:
        p, now, level, paused = self.ctx.palette, snapshot.now, snapshot.max_level, snapshot.paused
        self.table.show({str(v.key): job_row(v, now, level, paused, p) for v in snapshot.views})
        self._snapshot = snapshot
        self.selection_changed()
