"""The filter line under the panes: `/` opens it for the focused pane, each keystroke
filters that pane, enter keeps the filter, esc clears it. On a table of more than
LARGE_TABLE rows (filtering 100,000 rows takes most of a second) the filter waits for a
TYPING_PAUSE in the typing, so a word typed costs one filter, not one per letter."""

from __future__ import annotations

from textual.timer import Timer
from textual.widgets import Input

from tui.widgets import DiffTable, Pane

LARGE_TABLE = 10_000  # rows
TYPING_PAUSE = 0.2  # seconds


class FilterBox(Input):
    def __init__(self) -> None:
        super().__init__(placeholder="filter", id="filter")
        self.pane: Pane | None = None  # the pane it filters while open
        self._typing: Timer | None = None  # a large table's filter, waiting for a pause

    @property
    def is_open(self) -> bool:
        return self.has_class("visible")

    def open(self, pane: Pane) -> None:
        self.pane = pane
        self.placeholder = f"filter {pane.title} (enter keeps, esc clears)"
        self.value = pane.body.filter_text
        self.add_class("visible")
        self.focus()

    def close(self, *, clear: bool = False) -> Pane | None:
        """Hide it (clearing its pane's filter with `clear`); the pane it filtered."""
        self._stop_typing()
        pane, self.pane = self.pane, None
        if clear and pane is not None:
            filter_pane(pane, "")
        self.remove_class("visible")
        return pane

    def on_input_changed(self, event: Input.Changed) -> None:
        pane = self.pane
        if pane is None:
            return
        self._stop_typing()
        if isinstance(pane.body, DiffTable) and len(pane.body.all_rows) > LARGE_TABLE:
            self._typing = self.set_timer(TYPING_PAUSE, lambda: filter_pane(pane, event.value), name="filter")
        else:
            filter_pane(pane, event.value)

    def _stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.stop()
            self._typing = None

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.pane is not None and self._typing is not None:  # enter: now, not after the pause
            self._stop_typing()
            filter_pane(self.pane, self.value)
        pane = self.close()
        if pane is not None:
            pane.body.focus()


def filter_pane(pane: Pane, text: str) -> None:
    pane.body.set_filter(text)
    pane.describe_filter()
