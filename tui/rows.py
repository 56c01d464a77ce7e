"""Pure functions from engine snapshots to table rows, health and log lines.

Everything here is a function of its arguments (the clock's `now` is passed in), so the
dashboard's text is deterministic under a FakeClock and these rules are table-testable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from rich.text import Text

from core.cadence import CADENCES, format_seconds
from core.events import LogRecord
from core.receipts import Receipt, ReceiptError, parse_iso_utc
from core.status import Counts, Health, JobStatus, loop_problem, overall
from core.views import JobView

# Styles are theme roles, resolved to Rich colours by `Palette` (so the ANSI theme gets
# ANSI colours and a light theme gets readable ones).
STATUS_ROLE = {
    JobStatus.OK: "success",
    JobStatus.DUE: "accent",
    JobStatus.ANCHORING: "primary",
    JobStatus.BACKING_OFF: "warning",
    JobStatus.STALE: "warning",
    JobStatus.PAUSED: "muted",
    JobStatus.ERROR: "error",
    JobStatus.DISABLED: "muted",
    JobStatus.STUCK: "error",
}
STATUS_TEXT = {status: status.text for status in JobStatus}  # looked up per row, every second
HEALTH_ROLE = {Health.HEALTHY: "success", Health.DEGRADED: "warning", Health.UNHEALTHY: "error"}


class Cell(NamedTuple):
    """A table cell: what is shown, what it sorts by, and its theme role.

    A NamedTuple, not a dataclass: the 1 s refresh builds and compares thousands of
    these, and tuple construction and equality run in C."""

    text: str
    sort: Any = None
    role: str = ""
    style: str = ""  # the resolved Rich style; part of equality so a theme change re-renders

    def __rich__(self) -> Text:
        return Text(self.text, style=self.style, no_wrap=True, overflow="ellipsis")


class ShownTime:
    """The instant a table's live cells are shown at. The dashboard moves it on each
    refresh and each 1 s tick; the cells read it when they are drawn."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now


class LiveCell(NamedTuple):
    """A cell that counts from an instant (an age: `Last`) or to one (a countdown: `Next`,
    a backoff's retry), as of `shown.now`. It stays equal while the job's state does, so
    when only the time moves no row is built again, no cell is rewritten and nothing is
    re-sorted: the table just draws the rows on screen again (O(rows shown), not O(jobs))."""

    prefix: str
    at: float
    counts_down: bool
    sort: Any
    role: str
    style: str
    shown: ShownTime

    @property
    def text(self) -> str:
        if self.counts_down:
            return self.prefix + countdown(self.at - self.shown.now)
        return self.prefix + age(self.shown.now - self.at)

    def __rich__(self) -> Text:
        return Text(self.text, style=self.style, no_wrap=True, overflow="ellipsis")


TableCell = Cell | LiveCell


class Palette:
    """Theme roles -> Rich style strings, from a textual Theme's colours."""

    def __init__(self, colors: Mapping[str, str | None] | None = None) -> None:
        self.constant_cells: dict[Any, tuple[Cell, ...]] = {}  # cells that never change, per key
        self._shared: dict[tuple[str, Any, str], Cell] = {}
        self.shown = ShownTime()  # the time the live cells of job rows are shown at
        self.styles: dict[str, str] = {"muted": "dim", "": ""}
        for role, value in (colors or {}).items():
            self.styles[role] = _rich_color(value)

    def cell(self, text: str, sort: Any = None, role: str = "") -> Cell:
        return Cell(text, text if sort is None else sort, role, self.styles.get(role, ""))

    def shared(self, text: str, sort: Any = None, role: str = "") -> Cell:
        """A cell many rows show alike (a status, "-", "never"): built once per palette."""
        key = (text, sort, role)
        cell = self._shared.get(key)
        if cell is None:
            cell = self._shared[key] = self.cell(text, sort, role)
        return cell

    def live(self, at: float, *, counts_down: bool, sort: Any, prefix: str = "", role: str = "") -> LiveCell:
        return LiveCell(prefix, at, counts_down, sort, role, self.styles.get(role, ""), self.shown)


def _rich_color(value: str | None) -> str:
    if not value:
        return ""
    if value.startswith("ansi_"):
        name = value.removeprefix("ansi_")
        return "" if name == "default" else name
    return value


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return format_seconds(max(0.0, seconds))


def countdown(seconds: float) -> str:
    return "now" if seconds <= 0.5 else format_seconds(seconds)


# --------------------------------------------------------------------------- jobs

JOB_COLUMNS = (
    ("namespace", "Namespace", None),
    ("cadence", "Cad.", 6),
    ("target", "Target", None),
    ("every", "Every", 6),
    ("last", "Last", 6),
    ("next", "Next", 6),
    ("backoff", "Backoff", 8),
    ("status", "Status", 11),
)
_CADENCE_ORDER = {name: n for n, name in enumerate(CADENCES)}
_INF = float("inf")


def job_row_inputs(view: JobView, max_level: int, paused: bool) -> tuple[object, ...]:
    """Everything of a job that `job_row` reads (besides the palette and its key's own
    namespace and cadence): a row equal inputs give need not be built again. Its live cells
    count from these instants, so the inputs do not change when only the time moves."""
    spec, state = view.spec, view.state
    return (view.status, view.in_flight, view.due_at, state.last_anchored_at, state.backoff_level,
            state.next_attempt, paused and not state.failures, max_level, spec.target, spec.every)


def job_row(view: JobView, max_level: int, paused: bool, p: Palette) -> tuple[TableCell, ...]:
    """A job's row. Its `Last`, `Next` and retry countdowns are live cells read at
    `p.shown.now` when drawn, so the row changes only when the job's state does; their sort
    keys are instants, which do not move with the clock."""
    spec, state = view.spec, view.state
    if state.last_anchored_at is None:
        last: TableCell = p.shared("never", _INF, "muted")
    else:  # newest first when sorted ascending, as the ages were
        last = p.live(state.last_anchored_at, counts_down=False, sort=-state.last_anchored_at)
    if view.in_flight:
        nxt: TableCell = p.shared("...", -1.0)
    elif paused and not state.failures:
        nxt = p.shared("paused", _INF)
    elif view.due_at is None:
        nxt = p.shared("-", _INF)
    else:
        nxt = p.live(view.due_at, counts_down=True, sort=view.due_at)
    backoff: TableCell
    if not state.backoff_level:
        backoff = p.shared("-", 0, "muted")
    elif state.next_attempt is None:
        backoff = p.shared(f"{state.backoff_level}/{max_level}", state.backoff_level, "warning")
    else:
        backoff = p.live(state.next_attempt, counts_down=True, sort=state.backoff_level,
                         prefix=f"{state.backoff_level}/{max_level} ", role="warning")
    status = view.status
    ckey = (spec.namespace, spec.cadence, spec.target, spec.every)
    constant = p.constant_cells.get(ckey)
    if constant is None:
        constant = p.constant_cells[ckey] = (
            p.cell(spec.namespace),
            p.cell(spec.cadence, (_CADENCE_ORDER.get(spec.cadence, 9), spec.cadence)),
            p.cell(spec.target),
            p.cell(format_seconds(spec.every), spec.every),
        )
    return (*constant, last, nxt, backoff, p.shared(STATUS_TEXT.get(status, str(status)), status, STATUS_ROLE.get(status, "")))


BACKOFF_COLUMNS = (
    ("job", "Job", None),
    ("level", "Level", 6),
    ("kind", "Kind", 10),
    ("retry", "Retry", 6),
    ("error", "Last error", None),
)


def relative(text: str, data_dir: str) -> str:
    """Paths under the data dir shown relative to it: shorter, and the same on every host."""
    if data_dir and data_dir in text:
        return text.replace(data_dir + "/", "").replace(data_dir, ".")
    return text


def backoff_row(
    view: JobView, now: float, max_level: int, p: Palette, data_dir: str = ""
) -> tuple[Cell, ...]:
    state = view.state
    retry = "-" if state.next_attempt is None else countdown(state.next_attempt - now)
    return (
        p.cell(str(view.key)),
        p.cell(f"{state.backoff_level}/{max_level}", state.backoff_level, "warning"),
        p.cell(state.last_error_kind or "-"),
        p.cell(retry, state.next_attempt or _INF),
        p.cell(relative(state.last_error or "", data_dir).replace("\n", " "), role="error"),
    )


# --------------------------------------------------------------------------- receipts

RECEIPT_COLUMNS = (
    ("time", "Time", 8),
    ("namespace", "Namespace", None),
    ("cadence", "Cad.", 6),
    ("target", "Target", None),
    ("root", "Root", 10),
    ("status", "Status", 9),
    ("verified", "Verified", 8),
)


@dataclass(frozen=True, slots=True)
class ReceiptInfo:
    """What the Receipts pane shows of one receipt file."""

    path: str
    anchored_at: float
    namespace: str
    cadence: str
    target: str
    root: str
    status: str
    error: str | None = None
    tx_hash: str = ""  # a chain anchor's transaction, else ""
    observed: int = 0  # its confirmations, as last seen
    required: int = 0  # the confirmations it waits for (0: none)

    @classmethod
    def from_file(cls, path: Path, receipt: Receipt | ReceiptError) -> ReceiptInfo:
        if isinstance(receipt, ReceiptError):
            return cls(str(path), 0.0, path.parent.name, "?", "?", "", "unreadable", str(receipt))
        at = parse_iso_utc(receipt.anchored_at).timestamp()
        return cls(
            str(path), at, receipt.namespace, receipt.cadence,
            receipt.target, receipt.batch.root, receipt.status,
            tx_hash=str(receipt.attestation.get("tx_hash") or ""),
            observed=receipt.confirmations.observed, required=receipt.confirmations.required,
        )

    @property
    def depth(self) -> str:
        """Confirmations observed/required of a chain receipt ("" for a timestamp token)."""
        return f"{self.observed}/{self.required}" if self.required else ""

    def transaction(self) -> str:
        """One line: its transaction and confirmations ("" without a transaction)."""
        if not self.tx_hash:
            return ""
        depth = f", confirmations {self.depth}" if self.depth else ""
        return f"tx {self.tx_hash}{depth}"


def short_root(root: str) -> str:
    return root.removeprefix("sha256:")[:10] or "-"


# UNKNOWN: the receipt cannot be checked here (a trust bundle, a node is missing): no verdict.
VERIFY_ROLE = {"OK": "success", "FAIL": "error", "UNKNOWN": "warning", "...": "primary"}


def receipt_row(info: ReceiptInfo, verified: str, p: Palette) -> tuple[Cell, ...]:
    when = datetime.fromtimestamp(info.anchored_at, UTC).strftime("%H:%M:%S") if info.anchored_at else "?"
    status_role = {"confirmed": "success", "pending": "warning", "unreadable": "error"}.get(info.status, "")
    return (
        p.cell(when, info.anchored_at),
        p.cell(info.namespace),
        p.cell(info.cadence, (_CADENCE_ORDER.get(info.cadence, 9), info.cadence)),
        p.cell(info.target),
        p.cell(short_root(info.root)),
        # a pending chain receipt: how deep its transaction is, of how deep it must be
        p.cell(f"{info.depth} conf" if info.status == "pending" and info.depth else info.status, role=status_role),
        p.cell(verified or "-", role=VERIFY_ROLE.get(verified, "muted")),
    )


# --------------------------------------------------------------------------- health


def health(
    counts: Counts, *, engine: str, last_tick: float | None, started_at: float, now: float, tick: float,
    also: Iterable[str | None] = (),
) -> tuple[Health, str]:
    """(health, why) by core.status's one definition, as /health says it. `engine` is
    running | stopped | failed | off (off: this dashboard does not run the loop, so it
    cannot be stuck); `also`: core.control.snapshot_problems (store, files, clock)."""
    if engine in ("stopped", "failed"):
        return Health.UNHEALTHY, f"engine {engine}"
    problem = None
    if engine == "running":
        problem = loop_problem(stopped=False, last_tick=last_tick, started_at=started_at, tick=tick, now=now)
    return overall(counts, problem, also)


# --------------------------------------------------------------------------- logs

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LEVEL_RANK = {name: n for n, name in enumerate(LOG_LEVELS)}


_HEX = re.compile(r"(sha256:)?([0-9a-f]{64})")


def _abbreviate(text: str) -> str:
    """Full digests are in the JSON log; the pane shows their first 12 hex digits."""
    return _HEX.sub(lambda m: (m.group(1) or "") + m.group(2)[:12] + "…", text)


def log_line(record: LogRecord, data_dir: str = "") -> str:
    """`HH:MM:SS LEVEL msg key=value ...`; paths under the data dir are shown relative to it."""
    when = datetime.fromtimestamp(record.at, UTC).strftime("%H:%M:%S")
    parts = [when, f"{record.level:<7}", record.msg]
    for key, value in record.fields.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
        text = relative(text, data_dir)
        parts.append(f"{key}={_abbreviate(text)}")
    return " ".join(parts).replace("\n", " ")


def log_record_lines(record: LogRecord, data_dir: str = "") -> list[str]:
    """A log record whole, one field a line: the pane abbreviates digests and cuts at its
    width; this is what `enter` on a log line shows."""
    when = datetime.fromtimestamp(record.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    out = [f"{when}  {record.level}", record.msg]
    if record.fields:
        out.append("")
    for key, value in record.fields.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
        out.append(f"{key}: {relative(text, data_dir)}")
    return out
