"""The Namespaces pane: every job, its last anchor, next due time and status; under it,
above it, the selected job's target's latency and failures over the last minutes
(tui/trends.py)."""

from __future__ import annotations

from collections.abc import Sequence

from core.control import Snapshot
from core.events import Event, LogRecord
from tui.panes.base import PaneContext, PaneSource
from tui.rows import JOB_COLUMNS, Palette, TableCell, job_row, job_row_inputs
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
        self._rows: dict[str, tuple[tuple[object, ...], tuple[TableCell, ...]]] = {}
        self._rows_palette: Palette | None = None
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
        p, level, paused = self.ctx.palette, snapshot.max_level, snapshot.paused
        if p is not self._rows_palette:  # a new theme: every row again
            self._rows, self._rows_palette = {}, p
        before, rows = self._rows, {}
        for v in snapshot.views:
            made_of = job_row_inputs(v, level, paused)  # built again only when one changed
            key = str(v.key)
            kept = before.get(key)
            rows[key] = kept if kept is not None and kept[0] == made_of else (made_of, job_row(v, level, paused, p))
        self._rows = rows
        self.table.show({key: row for key, (_, row) in rows.items()})
        self._snapshot = snapshot
        self.show_time(snapshot.now)
        self.selection_changed()

    def show_time(self, now: float) -> None:
        """Count the rows' ages and countdowns from `now` (drawn again if it moved)."""
        shown = self.ctx.palette.shown
        if shown.now != now:
            shown.now = now
            self.table.redraw()
