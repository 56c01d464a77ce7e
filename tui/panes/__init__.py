"""The pane registry: the dashboard's panes, in order (number keys 1.., tabs, layout).

A new pane is one module here (a `PaneSource` subclass: tui/panes/base.py) and one entry
in PANES. The wide layout puts the panes in rows of two, in this order.
"""

from __future__ import annotations

from tui.panes.backoff import BackoffPane
from tui.panes.base import PaneContext, PaneSource
from tui.panes.jobs import JobsPane
from tui.panes.logs import LogsPane
from tui.panes.receipts import ReceiptsPane
from tui.panes.replicas import ReplicasPane

PANES: tuple[type[PaneSource], ...] = (JobsPane, BackoffPane, ReceiptsPane, LogsPane, ReplicasPane)

# Keys every table pane answers to (DiffTable's own bindings), for the help screen.
TABLE_HELP = (
    ("j / k, arrows", "move the selection (tables, log lines) / scroll"),
    ("s / S", "tables: cycle the sort column / reverse the sort"),
)

__all__ = ["PANES", "TABLE_HELP", "PaneContext", "PaneSource"]
