"""The Backoff pane: every job with a backoff level (as the header counts them)."""

from __future__ import annotations

from textual.widgets import Static

from core.control import Snapshot
from tui.panes.base import PaneSource
from tui.rows import BACKOFF_COLUMNS, backoff_row, relative
from tui.widgets import DiffTable


class BackoffPane(PaneSource):
    """The table, and under it the selected job's last error whole, wrapped: the cause
    (at the end of a message that starts with where it happened) never cut off."""

    name = "backoff"
    wide_row = 0
    title = "Backoff"
    no_job = "no job in backoff: select a job in Namespaces (1)"

    def make_body(self) -> DiffTable:
        return DiffTable(BACKOFF_COLUMNS, id=self.name, sort_index=3)

    _errors: dict[str, str] = {}  # noqa: RUF012 (replaced whole on every show)

    def make_note(self) -> Static:
        return Static("", id="backoff-error", classes="note", markup=False)

    def show(self, snapshot: Snapshot) -> None:
        p, now, level, data_dir = self.ctx.palette, snapshot.now, snapshot.max_level, self.ctx.data_dir
        views = [v for v in snapshot.views if v.state.backoff_level > 0]
        self.table.show({str(v.key): backoff_row(v, now, level, p, data_dir) for v in views})
        self._errors = {str(v.key): relative(v.state.last_error or "", data_dir).replace("\n", " ") for v in views}
        self.selection_changed()

    def selection_changed(self) -> None:
        key = self.table.selected_key
        error = self._errors.get(key or "", "")
        text = f"{key}: {error}" if key and error else ""
        note = self.footnote
        assert isinstance(note, Static)
        if str(note.content) != text:
            note.update(text)
        note.display = bool(text)

    def tab_label(self, snapshot: Snapshot | None) -> str:
        n = snapshot.counts.in_backoff if snapshot is not None else 0
        return f"{self.title} ({n})" if n else self.title
