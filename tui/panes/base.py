"""What every pane is: a body widget fed from snapshots and events, and its selection.

A pane module subclasses `PaneSource` and is listed once in tui/panes/__init__.py PANES;
the DashboardScreen builds, lays out, feeds and switches panes from that list alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from textual.screen import Screen
from textual.widget import Widget

from core.control import SchedulerControl, Snapshot
from core.events import Event, LogRecord
from core.jobs import JobKey
from tui.rows import Palette
from tui.widgets import DiffTable, LogView


@dataclass
class PaneContext:
    """What the panes share: the engine interface, the palette of the current theme (set
    again on a theme change), the data dir (paths are shown relative to it)."""

    control: SchedulerControl
    data_dir: str
    palette: Palette = field(default_factory=Palette)


class PaneSource:
    """One pane. Class attributes describe it; the methods feed and read its body."""

    name: ClassVar[str]  # id: the pane is #pane-<name>, its body #<name>, its tab #tab-<name>
    title: ClassVar[str]  # tab and border title (the border adds the pane's number key)
    help: ClassVar[tuple[tuple[str, str], ...]] = ()  # (keys, what they do) for the help screen
    no_job: ClassVar[str] = "no job selected"  # said when an action needs a job and has none
    compact_table: ClassVar[bool] = True  # a table that packs its columns at 80 columns
    wide_row: ClassVar[int] = 0  # the row of the wide layout (120x36 and up) it sits in
    note_above: ClassVar[bool] = False  # its note (make_note) above the body, not under it

    def __init__(self, ctx: PaneContext) -> None:
        self.ctx = ctx
        self.body: DiffTable | LogView = self.make_body()
        self.footnote: Widget | None = self.make_note()

    @property
    def table(self) -> DiffTable:
        """The body, in a pane whose body is a table."""
        assert isinstance(self.body, DiffTable)
        return self.body

    def make_body(self) -> DiffTable | LogView:
        raise NotImplementedError

    def make_note(self) -> Widget | None:
        """A few wrapped lines under the body telling the whole of its selected row, where
        a cell cannot (None: none)."""
        return None

    def selection_changed(self) -> None:
        """The body's cursor moved (the note follows it)."""

    def show(self, snapshot: Snapshot) -> None:
        """Every refresh (events, the 1 s countdown): the job table as of `snapshot`."""

    def show_time(self, now: float) -> None:
        """Between full refreshes: the time its ages and countdowns count from moved."""

    def take(self, events: Sequence[Event], logs: Sequence[LogRecord]) -> None:
        """A batch of events (logs separately, already bounded), before `show`."""

    def redraw(self) -> None:
        """Everything again, e.g. with a new palette (theme change)."""

    def tab_label(self, snapshot: Snapshot | None) -> str:
        return self.title

    def selected_job(self) -> JobKey | None:
        """The job of what is selected, if it names one."""
        key = self.body.selected_key if isinstance(self.body, DiffTable) else None
        return JobKey.parse(key) if key else None

    def selected_receipt(self) -> str | None:
        """The receipt file selected, in a pane that lists receipts."""
        return None

    def copy_text(self, snapshot: Snapshot) -> tuple[str, str] | None:
        """(what, text) the copy key puts on the clipboard: here the selected job's last
        anchored root; None when there is nothing to copy."""
        job = self.selected_job()
        view = next((v for v in snapshot.views if v.key == job), None)
        root = None if view is None else view.state.last_root
        return None if root is None else (f"root of {job}", root)

    def detail(self) -> Screen[None] | str | None:
        """What enter opens here: a screen, a warning to show, or None for the namespace
        detail of the selected job."""
        return None
