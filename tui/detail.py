"""The text of the namespace detail screen, from the live config, engine and receipts."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from rich.text import Text

from core.cadence import format_seconds
from core.config import WITNESSES_NOTE
from core.control import SchedulerControl
from core.events import LogRecord
from core.status import JobStatus
from core.views import JobView
from tui.rows import ReceiptInfo, age, countdown, log_line, relative, short_root


def _heading(out: Text, title: str) -> None:
    out.append(f"\n{title}\n", style="bold underline")


def namespace_detail(
    namespace: str,
    ns_config: object | None,
    views: list[JobView],
    receipts: list[ReceiptInfo],
    errors: Iterable[LogRecord],
    *,
    now: float,
    max_level: int,
    data_dir: str = "",
) -> Text:
    out = Text()
    description = getattr(ns_config, "description", "") or ""
    out.append(namespace, style="bold")
    if description:
        out.append(f"  {description}")
    out.append("\n")
    newest: dict[str, ReceiptInfo] = {}
    for r in sorted(receipts, key=lambda r: r.anchored_at):
        newest[r.cadence] = r
    _cadences(out, views, now, max_level, newest)
    _witnesses(out, getattr(ns_config, "witnesses", None))
    _schema_policy(out, getattr(ns_config, "schema_policy", None))
    _receipts(out, receipts)
    _errors(out, views, errors, data_dir)
    return out


def _cadences(out: Text, views: list[JobView], now: float, max_level: int, newest: dict[str, ReceiptInfo]) -> None:
    _heading(out, "Cadences")
    for v in views:
        s, st = v.spec, v.state
        extras = []
        if s.confirmations:
            extras.append(f"confirmations {s.confirmations}")
        if s.policy_oid:
            extras.append(f"policyOID {s.policy_oid}")
        if s.anchor_unchanged:
            extras.append("anchor_unchanged")
        # Two short lines a cadence, so that at 80 columns a long target name or
        # `backing off` never wraps the status line into the first column.
        out.append(f"  {s.cadence:<7}", style="bold")
        out.append(f"{s.target}  every {format_seconds(s.every)}\n")
        last = None if st.last_anchored_at is None else now - st.last_anchored_at
        nxt = "-" if v.due_at is None else countdown(v.due_at - now)
        out.append(f"         last {age(last)}  next {nxt}  ")
        out.append(JobStatus(v.status).text, style="bold")
        if st.backoff_level:
            retry = "" if st.next_attempt is None else f", retry in {countdown(st.next_attempt - now)}"
            out.append(f"  backoff {st.backoff_level}/{max_level}{retry}", style="bold")
        if getattr(v, "disabled", None):  # why it never runs: its target is refused
            out.append(f"\n         {v.disabled}", style="dim")
        if extras:
            out.append("\n         " + ", ".join(extras), style="dim")
        anchor = newest.get(s.cadence)
        if anchor is not None and anchor.tx_hash:  # a chain job: its newest anchor's transaction
            out.append(f"\n         last {anchor.transaction()}", style="dim")
        out.append("\n")
        _targets(out, v, now)
    if not views:
        out.append("  (no jobs: removed from the config?)\n", style="dim")


def _targets(out: Text, view: JobView, now: float) -> None:
    """A line per target of a redundant job: when it last attested, or until when it backs off."""
    for t in view.targets:
        out.append(f"         {t.target:<20} ")
        if t.retry_at is not None and t.retry_at > now:
            out.append(f"backing off, retry in {countdown(t.retry_at - now)} ({t.failures} failed)", style="bold")
            if t.error:
                out.append(f"  {t.error}", style="dim")
        elif t.attested_at is not None:
            out.append(f"attested {age(now - t.attested_at)} ago")
        else:
            out.append("not asked yet", style="dim")
        out.append("\n")


def _witnesses(out: Text, witnesses: Any) -> None:
    _heading(out, "Witnesses")
    if witnesses is not None and (witnesses.allowlist or witnesses.min_required):
        out.append(f"  {WITNESSES_NOTE}\n", style="italic")
        out.append(f"  min required: {witnesses.min_required}\n")
        for w in witnesses.allowlist:
            out.append(f"  - {w}\n")
    else:
        out.append("  (none)\n", style="dim")


def _schema_policy(out: Text, policy: Any) -> None:
    _heading(out, "Schema policy")
    if policy is not None and policy.allow:
        for item in policy.allow:
            out.append(f"  allow {item}\n")
    else:
        out.append("  (none)\n", style="dim")


def _receipts(out: Text, receipts: list[ReceiptInfo]) -> None:
    _heading(out, "Recent receipts")
    for r in receipts:
        when = datetime.fromtimestamp(r.anchored_at, UTC).strftime("%Y-%m-%d %H:%M:%S") if r.anchored_at else "?"
        out.append(f"  {when}  {r.cadence:<7} {r.target:<14} {short_root(r.root)}  {r.status}\n")
        if r.tx_hash:
            out.append(f"    {r.transaction()}\n", style="dim")
        if r.error:
            out.append(f"    {r.error}\n", style="red")
    if not receipts:
        out.append("  (none yet)\n", style="dim")


def _errors(out: Text, views: list[JobView], errors: Iterable[LogRecord], data_dir: str) -> None:
    _heading(out, "Recent errors")
    shown = 0
    for v in views:
        if v.state.last_error:
            message = relative(v.state.last_error, data_dir)
            out.append(f"  {v.key}: [{v.state.last_error_kind}] {message}\n", style="red")
            shown += 1
    for record in errors:
        out.append(f"  {log_line(record, data_dir)}\n")
        shown += 1
    if not shown:
        out.append("  (none)\n", style="dim")


def namespace_detail_of(control: SchedulerControl, namespace: str, records: Iterable[LogRecord], data_dir: str) -> Text:
    """`namespace_detail` from the scheduler: its jobs, their newest receipts, and the
    warnings and errors among the log `records` that name one of its jobs."""
    snap = control.snapshot()
    views = [v for v in snap.views if v.key.namespace == namespace]
    receipts: list[ReceiptInfo] = []
    for v in views:
        for path, receipt in control.job_receipts(v.key, 5):
            receipts.append(ReceiptInfo.from_file(path, receipt))
    receipts.sort(key=lambda r: r.anchored_at, reverse=True)
    jobs = {str(v.key) for v in views}
    errors = [r for r in records if r.level in ("WARNING", "ERROR") and str(r.fields.get("job", "")) in jobs][-10:]
    return namespace_detail(
        namespace, control.namespace_config(namespace), views, receipts[:10], errors,
        now=snap.now, max_level=snap.max_level, data_dir=data_dir,
    )
