"""DashboardScreen: the main screen. Layout, the panes (tui/panes), selection, and the
actions on them, over the one engine interface (core/control.py SchedulerControl).

Data flow (memray's live view, toolong's bounded log): the scheduler publishes events;
`_on_event` only appends them to a pending buffer and arms one short timer; `apply_pending`
applies the whole batch inside `batch_update()`, taking one immutable snapshot of the job
table and diffing every table by row key. A 1 s timer refreshes the countdowns, and the
diff means only the cells whose text changed are touched.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import ActiveBinding, Binding
from textual.containers import Horizontal, Vertical
from textual.events import Key, Resize
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Tab, Tabs

from core.control import SchedulerControl, Snapshot, VerifyOutcome
from core.events import ConfigApplied, ConfigRejected, Event, LogRecord, Paused, TickCompleted
from core.jobs import JobKey
from tui.actions import MUTATING, bindings
from tui.detail import namespace_detail_of
from tui.filter_box import FilterBox, filter_pane
from tui.header import RunState, header_text
from tui.pace import PacedRefresh
from tui.panes import PANES, PaneContext, PaneSource
from tui.panes.logs import LOG_LINES, LogsPane
from tui.panes.receipts import ReceiptsPane
from tui.rows import Palette
from tui.screens import ConfirmScreen, DetailScreen, MessageScreen
from tui.widgets import DiffTable, HeaderBar, LogView, Pane

FLUSH_DELAY = 0.25  # at most ~4 batched renders a second
COUNTDOWN_PERIOD = 1.0
WIDE = (120, 36)  # at least this many columns and rows: all panes at once
VERIFY_WORD = {
    VerifyOutcome.OK: "OK",
    VerifyOutcome.FAIL: "FAIL",
    VerifyOutcome.CANNOT_CHECK: "UNKNOWN",
    VerifyOutcome.PENDING: "PENDING",
}
NAMES_SHOWN = 4  # job names listed per kind of change in a notification


def _names(keys: Iterable[JobKey]) -> str:
    names = [str(k) for k in keys]
    more = f" +{len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return ", ".join(names[:NAMES_SHOWN]) + more


def config_applied_text(event: ConfigApplied) -> str:
    """What a config edit changed, for the operator (the watcher or R applied it)."""
    parts = [
        f"{what} {len(keys)}: {_names(keys)}"
        for what, keys in (("added", event.added), ("removed", event.removed), ("changed", event.changed))
        if keys
    ]
    return f"config applied ({event.config_hash[:8]}): " + ("; ".join(parts) if parts else "targets or settings only")


def config_rejected_text(event: ConfigRejected, shown: int = 6) -> str:
    """A rejected edit: every file:line error (up to `shown`), and that nothing changed."""
    lines = list(event.errors[:shown])
    if len(event.errors) > shown:
        lines.append(f"... {len(event.errors) - shown} more: press R to see them all")
    return "config edit rejected, the previous config stays live:\n" + "\n".join(lines)


class DashboardScreen(Screen[None]):
    BINDINGS = [
        *bindings("dashboard"),
        *(Binding(str(n), f"show_pane('{p.name}')", p.title, show=False) for n, p in enumerate(PANES, 1)),
    ]

    def __init__(
        self,
        control: SchedulerControl,
        *,
        data_dir: str,
        readonly: bool = False,
        run_state: Callable[[], RunState] = RunState,
    ) -> None:
        super().__init__()
        self.control = control
        self.readonly = readonly
        self.run_state = run_state
        self.ctx = PaneContext(control, data_dir)
        self.panes: dict[str, PaneSource] = {}
        self.boxes: dict[str, Pane] = {}
        self._pending: list[Event] = []
        self._pending_logs: deque[LogRecord] = deque(maxlen=LOG_LINES)
        self._flush_armed = False
        # Full refreshes at a pace that leaves the loop free at 100,000 jobs (tui/pace.py).
        self.refresher = PacedRefresh(self._show_snapshot, self._show_time, self.set_timer)
        self._event_thread = threading.get_ident()
        # From the start, not from mount: what the scheduler says before the screen is up
        # (the App starts the run in its own on_mount) is shown once it is.
        self._unsubscribe: Callable[[], None] | None = control.subscribe(self._on_event)
        self._snapshot: Snapshot | None = None
        self._active_pane = PANES[0].name
        self._wide: bool | None = None
        self._rejection_shown: tuple[str, ...] | None = None  # the config errors last told

    # ----- the panes as the tests and the App address them

    def body(self, name: str) -> DiffTable | LogView:
        return self.panes[name].body

    @property
    def receipts_pane(self) -> ReceiptsPane:
        pane = self.panes["receipts"]
        assert isinstance(pane, ReceiptsPane)
        return pane

    # ----- layout ---------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        for n, source in enumerate(PANES, 1):
            pane = source(self.ctx)
            self.panes[pane.name] = pane
            self.boxes[pane.name] = Pane(f"{n} {pane.title}", pane.body, id=f"pane-{pane.name}", note=pane.footnote, note_above=pane.note_above)
        self.header = HeaderBar(id="header")
        yield self.header
        tabs = {name: Tab(pane.title, id=f"tab-{name}") for name, pane in self.panes.items()}
        # Held, not queried: Tabs mounts its tabs in its own container, not always before a
        # refresh runs (a query then finds nothing).
        self._tab_widgets = tabs
        self._tabs = Tabs(*tabs.values(), id="tabs")
        self._tabs.can_focus = False
        yield self._tabs
        # The wide layout's rows (each pane's `wide_row`); at 80x24 only the active pane's row shows.
        grouped: dict[int, list[str]] = {}
        for name, pane in self.panes.items():
            grouped.setdefault(pane.wide_row, []).append(name)
        row_ids = ("row-top", "row-bottom", *(f"row-{k}" for k in range(2, 9)))
        self._rows = [
            (names, Horizontal(*(self.boxes[n] for n in names), classes="row", id=row_ids[i]))
            for i, (_, names) in enumerate(sorted(grouped.items()))
        ]
        yield Vertical(*(row for _, row in self._rows), id="panes")
        self._filter_box = FilterBox()
        yield self._filter_box
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.ctx.palette = self._palette_for_theme()
        self.app.theme_changed_signal.subscribe(self, self._on_theme_changed)
        self._event_thread = threading.get_ident()
        self._layout(self.app.size.width, self.app.size.height)
        self.refresh_all()
        if self._pending or self._pending_logs:
            self.apply_pending()
        self.body(self._active_pane).focus()
        self.set_interval(COUNTDOWN_PERIOD, self.refresher.countdown, name="countdown")

    def stop_events(self) -> None:
        """No more events from the scheduler (the App calls it before it exits: what the
        engine says while it stops must not reach a screen being torn down)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def on_unmount(self) -> None:
        self.stop_events()

    def on_resize(self, event: Resize) -> None:
        self._layout(event.size.width, event.size.height)

    def _layout(self, width: int, height: int) -> None:
        wide = width >= WIDE[0] and height >= WIDE[1]
        if wide == self._wide:
            return
        self._wide = wide
        self.app.set_class(wide, "wide")
        self.set_class(wide, "wide")
        self.set_class(not wide, "narrow")
        self._tabs.display = not wide
        for pane in self.panes.values():
            if isinstance(pane.body, DiffTable):
                pane.body.set_compact(not wide)
        self._show_active()

    def _show_active(self) -> None:
        wide = bool(self._wide)
        for name, box in self.boxes.items():
            box.display = wide or name == self._active_pane
        for names, row in self._rows:
            row.display = wide or self._active_pane in names
        if self._tabs.active != f"tab-{self._active_pane}":
            self._tabs.active = f"tab-{self._active_pane}"

    def action_show_pane(self, name: str) -> None:
        self._active_pane = name
        self._show_active()
        self.body(name).focus()

    def action_next_pane(self, step: int = 1) -> None:
        names = list(self.panes)
        i = names.index(self.focused_pane_name())
        self.action_show_pane(names[(i + step) % len(names)])

    def action_prev_pane(self) -> None:
        self.action_next_pane(-1)

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        name = (event.tab.id or "").removeprefix("tab-")
        if name in self.panes and name != self._active_pane:
            self.action_show_pane(name)

    def on_descendant_focus(self, event: Any) -> None:
        name = self._pane_of(self.focused)
        if name is not None and name != self._active_pane:
            self._active_pane = name
            self._show_active()

    def _pane_of(self, widget: Widget | None) -> str | None:
        while widget is not None:
            for name, box in self.boxes.items():
                if widget is box:
                    return name
            widget = widget.parent  # type: ignore[assignment]
        return None

    def focused_pane_name(self) -> str:
        return self._pane_of(self.focused) or self._active_pane

    # ----- events in, batched renders out ---------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Subscriber: cheap, never renders. Runs on the engine's (= the app's) loop."""
        if isinstance(event, LogRecord):
            self._pending_logs.append(event)
        else:
            self._pending.append(event)
        if not self._flush_armed and self.is_mounted:  # else on_mount applies them
            self._flush_armed = True
            if threading.get_ident() == self._event_thread:
                self.set_timer(FLUSH_DELAY, self.apply_pending, name="flush")
            else:  # a backend publishing from a thread: hand over, never touch widgets here
                self.app.call_from_thread(self.set_timer, FLUSH_DELAY, self.apply_pending)

    def apply_pending(self) -> None:
        self._flush_armed = False
        events, self._pending = self._pending, []
        logs = list(self._pending_logs)
        self._pending_logs.clear()
        with self.app.batch_update():
            for event in events:
                if isinstance(event, Paused):
                    self.refresh_bindings()
                elif isinstance(event, ConfigRejected):
                    # Once per rejection: R and the file watcher both report the same edit,
                    # and R shows its errors in a window already.
                    if tuple(event.errors) != self._rejection_shown:
                        self._rejection_shown = tuple(event.errors)
                        self.notify(config_rejected_text(event), severity="error", timeout=30)
                elif isinstance(event, ConfigApplied):
                    self._rejection_shown = None
                    self.notify(config_applied_text(event), timeout=8)
            for pane in self.panes.values():
                pane.take(events, logs)
            # A tick alone changes nothing the 1 s countdown refresh will not show anyway.
            if any(not isinstance(e, TickCompleted) for e in events):
                self.refresher.soon()

    def _show_time(self) -> None:
        """Between full refreshes: the rows' ages and countdowns count from the scheduler's now."""
        now = self.control.now()
        for pane in self.panes.values():
            pane.show_time(now)

    def refresh_all(self) -> None:
        with self.app.batch_update():
            for pane in self.panes.values():
                pane.redraw()
            self.refresh_views()

    def refresh_views(self) -> None:
        """One snapshot of the job table -> every pane, the tab labels and the header."""
        self.refresher.run()

    def _show_snapshot(self) -> None:
        before = self._snapshot
        snapshot = self._snapshot = self.control.snapshot()
        if before is None or before.paused != snapshot.paused:
            self.refresh_bindings()  # the footer's Pause / Resume
        for name, pane in self.panes.items():
            pane.show(snapshot)
            tab, label = self._tab_widgets[name], pane.tab_label(snapshot)
            if str(tab.label) != label:
                tab.label = label
        run = self.run_state()
        self.header.show(self._header_text(snapshot, run))
        self.set_class(run.data_age is not None, "stale")  # greyed: old data

    def _header_text(self, snap: Snapshot, run: RunState) -> Text:
        """The header line (tui/header.py); what does not fit its width is said shorter."""
        width = self.header.size.width or self.app.size.width - 2  # its content, inside its padding
        return header_text(snap, run, self.ctx.palette.styles, readonly=self.readonly, width=width)

    # ----- theme ----------------------------------------------------------------------------------

    def _palette_for_theme(self) -> Palette:
        t = self.app.current_theme
        return Palette({
            "primary": t.primary, "accent": t.accent, "success": t.success,
            "warning": t.warning, "error": t.error,
        })

    def _on_theme_changed(self, _theme: Any) -> None:
        self.ctx.palette = self._palette_for_theme()
        self.refresh_all()

    # ----- selection ------------------------------------------------------------------------------

    def selected_job(self) -> JobKey | None:
        """The job of what is selected in the pane the operator is looking at: a job row, a
        receipt's job, or the `job` field of a log line. None if it names no job."""
        return self.panes[self.focused_pane_name()].selected_job()

    def _no_job_selected(self) -> None:
        """Say what the key needs in the pane the operator is looking at."""
        self.notify(self.panes[self.focused_pane_name()].no_job, severity="warning")

    def _views(self) -> dict[JobKey, Any]:
        return {v.key: v for v in self.control.snapshot().views}

    # ----- actions --------------------------------------------------------------------------------

    @property
    def active_bindings(self) -> dict[str, ActiveBinding]:
        """The footer's bindings; while paused, the pause key says what it now does."""
        active = super().active_bindings
        snap = self._snapshot
        if snap is not None and snap.paused:
            for key, item in active.items():
                if item.binding.action == "pause":
                    active[key] = item._replace(binding=replace(item.binding, description="Resume"))
        return active

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.readonly and action in MUTATING:
            return False  # not in the footer; pressed, on_key says "read-only"
        return True

    def _readonly_keys(self) -> dict[str, str]:
        """{key: action} of the actions --readonly disables, as currently mapped."""
        from tui.actions import ACTIONS, mapped_keys

        keymap: dict[str, str] = getattr(self.app, "_keymap", {})
        return {k: a.action for a in ACTIONS if a.mutating for k in mapped_keys(a, keymap)}

    def on_key(self, event: Key) -> None:
        """In --readonly the mutating keys are unbound; say so instead of doing nothing."""
        if self.readonly:
            action = self._readonly_keys().get(event.key)
            if action is not None:
                event.stop()
                self.notify(f"read-only: {action.replace('_', ' ')} is disabled (--readonly)", severity="warning", timeout=4)

    def action_force(self) -> None:
        key = self.selected_job()
        if key is None:
            self._no_job_selected()
            return
        view = self._views().get(key)
        if view is None:
            self.notify(f"{key} is no longer configured", severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._force(key)

        self.app.push_screen(
            ConfirmScreen(f"Force-anchor {key} now?", f"Target {view.spec.target}. Ignores due time, backoff and unchanged roots."),
            confirmed,
        )

    def action_force_namespace(self) -> None:
        job = self.selected_job()
        if job is None:
            self._no_job_selected()
            return
        namespace = job.namespace
        keys = [k for k in self._views() if k.namespace == namespace]
        if not keys:
            self.notify(f"{namespace} is no longer configured", severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._force(namespace)

        self.app.push_screen(
            ConfirmScreen(
                f"Force-anchor all of {namespace} now?",
                f"{len(keys)} job(s): {', '.join(k.cadence for k in keys)}.",
            ),
            confirmed,
        )

    def _force(self, target: JobKey | str) -> None:
        """Force a job, or a namespace (a str) as ONE command: one request over the socket."""
        try:
            if isinstance(target, str):
                started = self.control.force_namespace(target)[0]
            else:
                started = [target] if self.control.force(target) else []
        except KeyError:
            started = []
        if started:
            self.notify(f"forced: {', '.join(str(k) for k in started)}", timeout=4)
        else:
            self.notify("already in flight", severity="warning")

    def action_reload(self) -> None:
        self.reload_config()

    @work(group="reload", exit_on_error=False)
    async def reload_config(self) -> None:
        """Reload now, the files read off the loop (anchoring and the screen go on). What
        changed, or the errors, are told by the ConfigApplied / ConfigRejected events, as
        for an edit the file watcher picked up; settings only a restart applies are named."""
        result = await self.control.reload()
        if result.errors:
            self._rejection_shown = tuple(result.errors)  # told here, not again as a toast
            self.app.push_screen(
                MessageScreen("Config reload rejected: the previous config stays live", result.errors)
            )
        elif not result.changed:
            self.notify(f"config reload: {result.summary or 'no change'}", timeout=4)
        restart = result.summary.partition("restart needed: ")[2]
        if restart:
            self.notify(
                f"config reload: restart needed for {restart}; they keep their running values until then",
                severity="warning", timeout=15,
            )
        self.apply_pending()

    def action_pause(self) -> None:
        if self.control.snapshot().paused:
            self.control.resume()
            self.notify("scheduling resumed", timeout=3)
        else:
            self.control.pause()
            self.notify("scheduling paused: no new anchors until resumed (space)", timeout=4)
        self.refresh_views()

    def action_detail(self) -> None:
        shown = self.panes[self.focused_pane_name()].detail()
        if isinstance(shown, str):
            self.notify(shown, severity="warning")
            return
        if shown is not None:
            self.app.push_screen(shown)
            return
        job = self.selected_job()
        if job is None:
            self._no_job_selected()
            return
        logs = self.body("logs")
        records = logs.records if isinstance(logs, LogView) else ()
        body = namespace_detail_of(self.control, job.namespace, records, self.ctx.data_dir)
        self.app.push_screen(DetailScreen(job.namespace, body))

    def on_data_table_row_selected(self, event: DiffTable.RowSelected) -> None:
        self.action_detail()

    def on_data_table_row_highlighted(self, event: DiffTable.RowHighlighted) -> None:
        name = self._pane_of(event.data_table)
        if name is not None:
            self.panes[name].selection_changed()

    def action_verify(self) -> None:
        """Verify the selected receipt (in a pane that lists receipts), else the latest
        receipt of the job selected in the pane the operator is looking at."""
        pane = self.panes[self.focused_pane_name()]
        if isinstance(pane, ReceiptsPane):
            path = pane.selected_receipt()
            if path is None:
                self.notify("no receipt selected", severity="warning")
                return
        else:
            job = pane.selected_job()
            if job is None:
                self._no_job_selected()
                return
            latest = self.control.job_receipts(job, 1)
            if not latest:
                self.notify(f"{job} has no receipt yet", severity="warning")
                return
            path = str(latest[0][0])
        self.receipts_pane.set_verified(path, "...")
        self.verify_receipt(path)

    @work(group="verify", exit_on_error=False)
    async def verify_receipt(self, path: str) -> None:
        result = await self.control.verify(path)
        name = Path(path).name
        if result.outcome == VerifyOutcome.OK:
            self.notify(f"verify OK {result.job} {name}: {result.message}", timeout=6)
        else:  # CANNOT CHECK and PENDING are no verdict against the receipt: warnings
            bad = result.outcome == VerifyOutcome.FAIL
            self.notify(f"verify {result.outcome} {name}: {result.message}", severity="error" if bad else "warning", timeout=15)
        self.receipts_pane.set_verified(path, VERIFY_WORD[result.outcome])

    def action_copy(self) -> None:
        """The selected row's root, receipt path or transaction id to the clipboard, by
        OSC 52 (Textual's copy_to_clipboard): the terminal does it, so over ssh too."""
        pane = self.panes[self.focused_pane_name()]
        copied = pane.copy_text(self.control.snapshot())
        if copied is None:
            self.notify(f"nothing to copy in {pane.title}: select a row with a root, receipt or tx", severity="warning")
            return
        what, text = copied
        self.app.copy_to_clipboard(text)
        self.notify(f"copied {what}: {text}", timeout=4)

    def action_save_logs(self) -> None:
        logs = self.panes["logs"]
        assert isinstance(logs, LogsPane)
        saved, message = logs.save(Path.cwd(), self.control.snapshot().now)
        self.notify(message, severity="information" if saved else "error", timeout=10)

    def action_filter(self) -> None:
        self._filter_box.open(self.boxes[self.focused_pane_name()])

    def on_diff_table_filter_changed(self, event: DiffTable.FilterChanged) -> None:
        name = self._pane_of(event.table)
        if name:
            self.boxes[name].describe_filter()

    def on_log_view_filter_changed(self, event: LogView.FilterChanged) -> None:
        name = self._pane_of(event.view)
        if name:
            self.boxes[name].describe_filter()

    def action_clear_filter(self) -> None:
        """esc: close the filter box and clear its filter, else dismiss the notifications
        shown, else clear the focused pane's filter."""
        if self._filter_box.is_open:
            pane = self._filter_box.close(clear=True)
            (self.body(self._active_pane) if pane is None else pane.body).focus()
            return
        if self.query("Toast"):  # the notifications shown (each screen has its own rack)
            self.app.clear_notifications()
            return
        name = self.focused_pane_name()
        if self.body(name).filter_text:
            filter_pane(self.boxes[name], "")
