"""The Receipts pane: the newest receipts, their status and what verify found."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from textual.widgets import Static

from core.control import Snapshot
from core.events import (
    Event,
    LogRecord,
    ReceiptConfirmed,
    ReceiptDepth,
    ReceiptWritten,
    ReplicasSeen,
)
from core.jobs import JobKey
from tui.panes.base import PaneContext, PaneSource
from tui.rows import RECEIPT_COLUMNS, ReceiptInfo, receipt_row
from tui.widgets import DiffTable

RECEIPTS_SHOWN = 200


class ReceiptsPane(PaneSource):
    name = "receipts"
    wide_row = 1
    title = "Receipts"
    no_job = "no receipt selected: select one, or a job in Namespaces (1)"

    def __init__(self, ctx: PaneContext) -> None:
        super().__init__(ctx)
        self.infos: dict[str, ReceiptInfo] = {}
        self.verified: dict[str, str] = {}  # path -> OK | FAIL | UNKNOWN | ...
        self._copied: tuple[str, int] = ("", -1)  # the row the copy key last copied, and which of it
        for path, receipt in ctx.control.recent_receipts(RECEIPTS_SHOWN):
            info = ReceiptInfo.from_file(path, receipt)
            self.infos[info.path] = info

    def make_body(self) -> DiffTable:
        return DiffTable(RECEIPT_COLUMNS, id=self.name, sort_reverse=True)  # newest first

    def make_note(self) -> Static:
        """The selected receipt's transaction and confirmations (chain receipts only)."""
        note = Static("", id="receipt-tx", classes="note", markup=False)
        note.display = False
        return note

    def selection_changed(self) -> None:
        info = self.infos.get(self.selected_receipt() or "")
        text = "" if info is None else info.transaction()
        note = self.footnote
        assert isinstance(note, Static)
        if str(note.content) != text:
            note.update(text)
        note.display = bool(text)

    def take(self, events: Sequence[Event], logs: Sequence[LogRecord]) -> None:
        changed = False
        for event in events:
            if isinstance(event, ReceiptWritten):
                self.infos[event.path] = ReceiptInfo(
                    event.path, event.anchored_at, event.job.namespace, event.job.cadence,
                    event.target, event.root, event.status,
                    tx_hash=event.tx_hash, observed=event.observed, required=event.required,
                )
                changed = True
            elif isinstance(event, ReceiptDepth) and event.path in self.infos:
                self.infos[event.path] = replace(self.infos[event.path], observed=event.observed)
                changed = True
            elif isinstance(event, ReplicasSeen):  # cluster mode: the other replicas' receipts too
                for path, receipt in self.ctx.control.recent_receipts(RECEIPTS_SHOWN):
                    info = ReceiptInfo.from_file(path, receipt)
                    if info.path not in self.infos:
                        self.infos[info.path] = info
                        changed = True
            elif isinstance(event, ReceiptConfirmed) and event.path in self.infos:
                old = self.infos[event.path]
                self.infos[event.path] = replace(old, status="confirmed", observed=max(old.observed, old.required))
                changed = True
        if changed:
            self.redraw()

    def set_verified(self, path: str, word: str) -> None:
        if path in self.infos:
            self.verified[path] = word
            self.redraw()

    def redraw(self) -> None:
        infos = self.infos
        if len(infos) > RECEIPTS_SHOWN:
            for path in sorted(infos, key=lambda p: infos[p].anchored_at)[: len(infos) - RECEIPTS_SHOWN]:
                del infos[path]
                self.verified.pop(path, None)
        p = self.ctx.palette
        self.table.show({path: receipt_row(r, self.verified.get(path, ""), p) for path, r in infos.items()})
        self.selection_changed()

    def selected_receipt(self) -> str | None:
        return self.table.selected_key

    def copy_text(self, snapshot: Snapshot) -> tuple[str, str] | None:
        """The receipt's path; pressed again on the same row, its batch root, and so on."""
        path = self.selected_receipt()
        info = self.infos.get(path or "")
        if path is None or info is None:
            return None
        choices = [("receipt path", path), *([("root", info.root)] if info.root else []),
                   *([("transaction", info.tx_hash)] if info.tx_hash else [])]
        last_path, last = self._copied
        turn = (last + 1) % len(choices) if last_path == path else 0
        self._copied = (path, turn)
        return choices[turn]

    def selected_job(self) -> JobKey | None:
        info = self.infos.get(self.selected_receipt() or "")
        return None if info is None or info.cadence == "?" else JobKey(info.namespace, info.cadence)
