"""The Backoff pane: every job with a backoff level (as the header counts them)."""

from __future__ import annotations

from core.control import Snapshot
from tui.panes.base import PaneSource
from tui.rows import BACKOFF_COLUMNS, backoff_row
from tui.widgets import DiffTable


class BackoffPane(PaneSource):
    name = "backoff"
    title = "Backoff"
    no_job = "no job in backoff: select a job in Namespaces (1)"

    def make_body(self) -> DiffTable:
        return DiffTable(BACKOFF_COLUMNS, id=self.name, sort_index=3)

    def show(self, snapshot: Snapshot) -> None:
        p, now, level, data_dir = self.ctx.palette, snapshot.now, snapshot.max_level, self.ctx.data_dir
        self.table.show({
            str(v.key): backoff_row(v, now, level, p, data_dir)
            for v in snapshot.views if v.state.backoff_level > 0
        })

    def tab_label(self, snapshot: Snapshot | None) -> str:
        n = snapshot.counts.in_backoff if snapshot is not None else 0
        return f"{self.title} ({n})" if n else self.title
