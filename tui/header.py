"""The dashboard's header line: health as /health says it (core.status, core.control),
or "unknown" with the age of the data when an attached dashboard has not heard from its
scheduler lately; the badges; the counts. At 80 columns its words get shorter rather than
cut off (`header_text` tries each `short` level until the line fits)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rich.cells import cell_len
from rich.text import Text

from core.cadence import format_seconds
from core.control import Snapshot, snapshot_problems
from core.status import JobStatus
from tui.panes.replicas import cluster_badges
from tui.rows import HEALTH_ROLE, health


@dataclass(frozen=True, slots=True)
class RunState:
    """What the App's lifecycle tells the header: the engine worker's state (off | running |
    stopped | failed), why HTTP is off if it is, and whether the app is stopping."""

    engine_state: str = "off"
    http_error: str | None = None
    stopping: bool = False
    attached: str | None = None  # "attached to pid N on HOST" when the engine runs elsewhere
    disconnected_for: float | None = None  # seconds since that scheduler's socket went away
    data_age: float | None = None  # seconds since that scheduler last said anything, when too long


def header_text(snap: Snapshot, run: RunState, styles: Mapping[str, str], *, readonly: bool, width: int) -> Text:
    """The header line within `width` cells: the full words if they fit, else shorter ones."""
    for level in (0, 1, 2, 3):
        parts = header_parts(snap, run, styles, readonly=readonly, short=min(level, 2))
        if level == 3:  # one space between the parts
            parts = [(text[1:] if text.startswith("  ") else text, style) for text, style in parts]
        if sum(cell_len(text) for text, _ in parts) <= width:
            break
    out = Text(no_wrap=True, overflow="ellipsis")
    for text, style in parts:
        out.append(text, style=style)
    return out


def header_parts(
    snap: Snapshot, run: RunState, s: Mapping[str, str], *, readonly: bool, short: int
) -> list[tuple[str, str]]:
    """(text, style) of the header; `short` 1: the 80-column words (`pid N@host`,
    `anch`, `bkoff`, a 4-digit config hash), 2: `disconnected (N)` too."""
    c = snap.counts
    parts: list[tuple[str, str]] = []
    if run.data_age is None:
        state, why = health(
            c, engine=run.engine_state, last_tick=snap.last_tick, started_at=snap.started_at, now=snap.now,
            tick=snap.tick, also=snapshot_problems(snap),
        )
        role = s.get(HEALTH_ROLE[state], "")
        parts.append(("● " + state, f"bold {role}"))
    else:  # no word from the scheduler lately: what it says now is not known here
        age = format_seconds(run.data_age)
        role, why = s.get("muted", "dim"), f"{age} old" if short > 1 else f"data {age} old"
        parts.append(("● unknown", f"bold {role}"))
    if why:
        parts.append((f" ({why})", role))
    if run.disconnected_for is not None:
        lost = format_seconds(max(0.0, run.disconnected_for))
        text = f"  disconnected ({lost})" if short > 1 else f"  disconnected — reconnecting ({lost})"
        parts.append((text, f"bold reverse {s.get('error', '')}"))
    elif run.attached:
        text = run.attached.replace("attached to pid ", "pid ").replace(" on ", "@") if short else run.attached
        parts.append((f"  {text}", s.get("accent", "")))
    # Badges right after the health, the config hash last: what the operator must not
    # miss is at the start.
    if run.http_error:
        why_off = "port in use" if "in use" in run.http_error else "cannot listen"
        parts.append(("  HTTP OFF" if short > 1 else f"  HTTP OFF: {why_off}", f"bold reverse {s.get('error', '')}"))
    for badge, badge_role in cluster_badges(snap):  # the store, the replicas' configs
        parts.append((f"  {badge}", f"bold reverse {s.get(badge_role, '')}"))
    if snap.paused:
        parts.append(("  PAUSED", f"bold reverse {s.get('warning', '')}"))
    if readonly:
        parts.append(("  RO" if short else "  READONLY", f"bold reverse {s.get('accent', '')}"))
    if run.stopping:
        parts.append(("  stopping...", "bold"))
    parts.append((f"  up {format_seconds(max(0.0, snap.now - snap.started_at))}", ""))
    # Counts the operator can check against the rows: a job anchoring is not also "ok",
    # and "backoff" is the Backoff pane's count.
    parts.append((f"  ok {c.ok}", ""))
    parts.append((f"  {'anch' if short else 'anchoring'} {c[JobStatus.ANCHORING]}", ""))
    parts.append((f"  {'bkoff' if short else 'backoff'} {c.in_backoff}", s.get("warning", "") if c.in_backoff else ""))
    for status in (JobStatus.STALE, JobStatus.STUCK, JobStatus.ERROR):
        if c[status]:
            parts.append((f"  {status.text} {c[status]}", s.get("warning" if status == JobStatus.STALE else "error", "")))
    parts.append((f"  cfg {snap.config_hash[:4 if short else 8]}", ""))
    return parts
