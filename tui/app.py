"""VaultMeshApp: the operator's dashboard. Runs the engine on the app's loop and shows it live.

Data flow (memray's live view, toolong's bounded log): the engine publishes events on the
bus; `_on_event` only appends them to a pending buffer and arms one short timer; `_apply_pending`
applies the whole batch inside `batch_update()`, taking one immutable snapshot of the job
table (`engine.views()`) and diffing every table by row key. A 1 s timer refreshes the
countdowns, and the diff means only the cells whose text changed are touched.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input, Tab, Tabs
from textual.worker import Worker, WorkerState

from core.cadence import format_seconds
from core.clock import Clock
from core.dashboard_settings import action_problem, key_problem
from core.events import (
    ConfigApplied,
    ConfigRejected,
    Event,
    LogRecord,
    Paused,
    ReceiptConfirmed,
    ReceiptWritten,
    TickCompleted,
)
from core.jobs import JobKey
from core.lifecycle import running
from core.runtime import CannotStart, Runtime
from core.services import Services
from core.status import JobStatus, count
from tui.detail import namespace_detail
from tui.rows import (
    BACKOFF_COLUMNS,
    HEALTH_ROLE,
    JOB_COLUMNS,
    RECEIPT_COLUMNS,
    Palette,
    ReceiptInfo,
    backoff_row,
    health,
    job_row,
    log_record_lines,
    receipt_row,
)
from tui.screens import ConfirmScreen, DetailScreen, HelpScreen, MessageScreen
from tui.themes import FALLBACKS, ThemeError, bundled_themes, choose_theme, load_theme_file
from tui.widgets import DiffTable, HeaderBar, LogView, Pane

FLUSH_DELAY = 0.25  # at most ~4 batched renders a second
COUNTDOWN_PERIOD = 1.0
RECEIPTS_SHOWN = 200
LOG_LINES = 5000
WIDE = (120, 36)  # at least this many columns and rows: all four panes at once
PANES = ("jobs", "backoff", "receipts", "logs")
PANE_TITLES = {"jobs": "Namespaces", "backoff": "Backoff", "receipts": "Receipts", "logs": "Logs"}
MUTATING = {"force", "force_namespace", "reload", "pause"}
MAIN_SCREEN_ONLY = {"filter", "verify", "detail", "next_pane", "prev_pane", "show_pane", "back"}

# (binding id, key, action, footer label, shown in footer, help text)
KEYS: tuple[tuple[str, str, str, str, bool, str], ...] = (
    ("force", "f", "force", "Force", True, "force-anchor the selected job or line's job (asks first)"),
    ("force_namespace", "F", "force_namespace", "Force ns", False, "force-anchor every cadence of the namespace (asks first)"),
    ("reload", "R", "reload", "Reload", True, "reload the config; on errors (file:line) the old one stays"),
    ("pause", "space", "pause", "Pause", True, "pause / resume scheduling (forced anchors still run)"),
    ("detail", "enter", "detail", "Detail", False, "the selected namespace's detail; in Logs, the whole line"),
    ("verify", "v", "verify", "Verify", True, "verify the selected receipt, or the selected job's latest"),
    ("filter", "slash", "filter", "Filter", True, "filter the focused pane (esc clears)"),
    ("theme", "t", "next_theme", "Theme", False, "next theme"),
    ("palette", "colon", "command_palette", "Palette", False, "command palette with the same actions"),
    ("help", "question_mark", "help", "Help", True, "this help"),
    ("back", "escape", "back", "Back", False, "back / clear the filter"),
    ("next_pane", "tab", "next_pane", "Next pane", False, "next pane (tabs at 80x24)"),
    ("prev_pane", "shift+tab", "prev_pane", "Prev pane", False, "previous pane"),
    ("quit", "q", "quit", "Quit", True, "quit (asks first if anchors are in flight)"),
)
PANE_KEYS_HELP = (
    ("1 2 3 4", "show Namespaces, Backoff, Receipts, Logs"),
    ("j / k, arrows", "move the selection (tables, log lines) / scroll"),
    ("s / S", "tables: cycle the sort column / reverse the sort"),
    ("l", "logs: cycle the minimum level (DEBUG, INFO, WARNING, ERROR)"),
    ("p / G", "logs: pause-follow / follow the end"),
)


# Above the screen's own tab / shift+tab (focus the next widget), which at 80x24 has only
# the one visible pane to go to.
PRIORITY = {"next_pane", "prev_pane"}


def _bindings() -> list[Binding]:
    out = [
        Binding(key, action, label, show=show, id=bid, priority=bid in PRIORITY)
        for bid, key, action, label, show, _ in KEYS
    ]
    out += [Binding(str(n), f"show_pane('{name}')", PANE_TITLES[name], show=False) for n, name in enumerate(PANES, 1)]
    return out


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


class VaultMeshApp(App[int]):
    TITLE = "VaultMesh Scheduler"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = _bindings()
    CSS = """
    Screen { layout: vertical; }
    #header { height: 1; padding: 0 1; background: $panel; }
    #tabs { height: 2; }
    #panes { height: 1fr; }
    .row { height: 1fr; }
    .pane { border: round $primary 40%; border-title-color: $foreground; border-subtitle-color: $accent; height: 1fr; width: 1fr; }
    .pane:focus-within { border: round $accent; }
    .narrow .pane { border-left: none; border-right: none; }
    .narrow .pane > DataTable { padding-left: 1; }
    #pane-backoff { width: 1fr; }
    .wide #pane-backoff { width: 64; }
    .wide #pane-receipts { width: 84; }
    .pane > DataTable, .pane > LogView { height: 1fr; scrollbar-size-vertical: 1; }
    DataTable { background: $surface 0%; }
    LogView { background: $surface 0%; }
    #filter { height: 1; border: none; padding: 0 1; display: none; background: $boost; }
    #filter.visible { display: block; }
    #dialog { width: 70; max-width: 95%; height: auto; max-height: 90%; border: thick $primary; background: $surface; padding: 1 2; }
    #dialog.error { border: thick $error; }
    #dialog.help { width: 100; max-width: 100%; max-height: 100%; padding: 0 1; }
    #dialog.help #lines { margin: 0; }
    #dialog #lines { height: auto; max-height: 20; margin: 1 0; }
    #dialog #buttons { height: auto; margin-top: 1; align-horizontal: center; }
    #dialog Button { margin: 0 1; }
    ConfirmScreen, MessageScreen, HelpScreen { align: center middle; }
    #detail-body { padding: 0 1; }
    """

    def __init__(
        self,
        runtime: Runtime,
        clock: Clock | None = None,
        *,
        readonly: bool = False,
        theme: str | None = None,
        start_engine: bool = True,
        grace: float = 10.0,
        env: Any = None,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.clock = clock or runtime.clock
        self.readonly = readonly
        self.start_engine = start_engine
        self.grace = grace
        self.startup_problems: list[str] = []
        self.engine_state = "off"  # off | running | stopped | failed
        self.services: Services | None = None
        self.stopping = False
        self._stop_requested = asyncio.Event()  # set by begin_shutdown, for run_scheduler
        self._stop_grace = grace
        self._run_worker: Worker[None] | None = None
        self.stopped_cleanly = False
        self.exit_reason = ""
        self._pending: list[Event] = []
        self._pending_logs: deque[LogRecord] = deque(maxlen=LOG_LINES)
        self._flush_armed = False
        self._unsubscribe = None
        self._verified: dict[str, str] = {}
        self._receipts: dict[str, ReceiptInfo] = {}
        self._active_pane = "jobs"
        self._wide: bool | None = None
        self._filter_target: str | None = None
        self._palette = Palette()
        env = os.environ if env is None else env
        self._theme_names = self._register_themes(runtime)
        self.theme = choose_theme(
            set(self.available_themes), flag=theme, config=runtime.loaded.config.tui.theme, env=env
        )

    # ----- themes and keys ---------------------------------------------------------------------

    def _register_themes(self, runtime: Runtime) -> list[str]:
        """themes/ and the operator's tui.theme_file; problems are shown, never raised."""
        names: list[str] = []
        try:
            themes = bundled_themes()
        except ThemeError as exc:
            self.startup_problems.append(str(exc))
            themes = []
        for t in themes:
            self.register_theme(t)
            names.append(t.name)
        if not names:
            names = list(FALLBACKS.values())
        path = runtime.loaded.config.tui.theme_file
        if path is not None:
            try:
                own = load_theme_file(path)
            except ThemeError as exc:
                self.startup_problems.append(f"tui.theme_file: {exc}")
            else:
                self.register_theme(own)
                names.append(own.name)
        return names

    def _config_keymap(self) -> dict[str, str]:
        """tui.keys as check-config checks it (core.dashboard_settings); a bad entry is shown, not applied."""
        keymap: dict[str, str] = {}
        for action, key in (self.runtime.loaded.config.tui.keys or {}).items():
            problem = action_problem(action) or key_problem(key)
            if problem:
                self.startup_problems.append(f"tui.keys: {problem}")
            else:
                keymap[action] = key
        return keymap

    # ----- layout ---------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        data_dir = str(self.runtime.data_dir.resolve())
        self.jobs = DiffTable(JOB_COLUMNS, id="jobs", hidden_when_compact=frozenset({"every"}))
        self.backoff = DiffTable(BACKOFF_COLUMNS, id="backoff", sort_index=3)
        self.receipts = DiffTable(RECEIPT_COLUMNS, id="receipts", sort_reverse=True)  # newest first
        self.logs = LogView(max_lines=LOG_LINES, data_dir=data_dir, id="logs")
        self.panes = {
            "jobs": Pane("1 Namespaces", self.jobs, id="pane-jobs"),
            "backoff": Pane("2 Backoff", self.backoff, id="pane-backoff"),
            "receipts": Pane("3 Receipts", self.receipts, id="pane-receipts"),
            "logs": Pane("4 Logs", self.logs, id="pane-logs"),
        }
        self.header = HeaderBar(id="header")
        yield self.header
        tabs = {n: Tab(PANE_TITLES[n], id=f"tab-{n}") for n in PANES}
        # Held, not queried: Tabs mounts its tabs in its own container, not always before a
        # refresh runs (a query then finds nothing).
        self._backoff_tab = tabs["backoff"]
        self._tabs = Tabs(*tabs.values(), id="tabs")
        self._tabs.can_focus = False
        yield self._tabs
        self._row_top = Horizontal(self.panes["jobs"], self.panes["backoff"], classes="row", id="row-top")
        self._row_bottom = Horizontal(self.panes["receipts"], self.panes["logs"], classes="row", id="row-bottom")
        yield Vertical(self._row_top, self._row_bottom, id="panes")
        self._filter_box = Input(placeholder="filter", id="filter")
        yield self._filter_box
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.set_keymap(self._config_keymap())
        self._palette = self._palette_for_theme()
        self.theme_changed_signal.subscribe(self, self._on_theme_changed)
        self._event_thread = threading.get_ident()
        self._unsubscribe = self.runtime.bus.subscribe(self._on_event)
        for path, receipt in self.runtime.receipts.recent(RECEIPTS_SHOWN):
            info = ReceiptInfo.from_file(path, receipt)
            self._receipts[info.path] = info
        self._layout(self.size.width, self.size.height)
        self._refresh_all()
        self.jobs.focus()
        self.set_interval(COUNTDOWN_PERIOD, self._refresh_views, name="countdown")
        if self.start_engine:
            self._install_signal_handlers()
            self._run_worker = self.run_scheduler()
        for problem in self.startup_problems:
            self.runtime.log.error(problem)
            self.notify(problem, severity="error", timeout=30)
        if self.readonly:
            self.runtime.log.info("dashboard is read-only: force, reload and pause are disabled")
        # Everything built so far lives as long as the app: keep it out of full collections
        # (with 1,000 jobs those took ~100 ms every 10-20 s, a visible hitch).
        gc.freeze()

    def on_resize(self, event: Resize) -> None:
        self._layout(event.size.width, event.size.height)

    def _layout(self, width: int, height: int) -> None:
        wide = width >= WIDE[0] and height >= WIDE[1]
        if wide == self._wide:
            return
        self._wide = wide
        self.set_class(wide, "wide")
        self.screen.set_class(wide, "wide")
        self.screen.set_class(not wide, "narrow")
        self._tabs.display = not wide
        for table in (self.jobs, self.backoff, self.receipts):
            table.set_compact(not wide)
        self._show_active()

    def _show_active(self) -> None:
        wide = bool(self._wide)
        for name, pane in self.panes.items():
            pane.display = wide or name == self._active_pane
        self._row_top.display = wide or self._active_pane in ("jobs", "backoff")
        self._row_bottom.display = wide or self._active_pane in ("receipts", "logs")
        tabs = self._tabs
        if tabs.active != f"tab-{self._active_pane}":
            tabs.active = f"tab-{self._active_pane}"

    def action_show_pane(self, name: str) -> None:
        self._active_pane = name
        self._show_active()
        self.panes[name].body.focus()

    def action_next_pane(self, step: int = 1) -> None:
        i = PANES.index(self._focused_pane_name())
        self.action_show_pane(PANES[(i + step) % len(PANES)])

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
            for name, pane in self.panes.items():
                if widget is pane:
                    return name
            widget = widget.parent  # type: ignore[assignment]
        return None

    def _focused_pane_name(self) -> str:
        return self._pane_of(self.focused) or self._active_pane

    # ----- events in, batched renders out ---------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Bus subscriber: cheap, never renders. Runs on the engine's (= the app's) loop."""
        if isinstance(event, LogRecord):
            self._pending_logs.append(event)
        else:
            self._pending.append(event)
        if not self._flush_armed:
            self._flush_armed = True
            if threading.get_ident() == self._event_thread:
                self.set_timer(FLUSH_DELAY, self._apply_pending, name="flush")
            else:  # a backend publishing from a thread: hand over, never touch widgets here
                self.call_from_thread(self.set_timer, FLUSH_DELAY, self._apply_pending)

    def flush_now(self) -> None:
        """Apply what is pending immediately (tests and snapshots)."""
        self._apply_pending()

    def _apply_pending(self) -> None:
        self._flush_armed = False
        events, self._pending = self._pending, []
        logs = list(self._pending_logs)
        self._pending_logs.clear()
        with self.batch_update():
            receipts_changed = False
            for event in events:
                if isinstance(event, ReceiptWritten):
                    self._receipts[event.path] = ReceiptInfo(
                        event.path, event.anchored_at, event.job.namespace, event.job.cadence,
                        event.target, event.root, event.status,
                    )  # fmt: skip
                    receipts_changed = True
                elif isinstance(event, ReceiptConfirmed) and event.path in self._receipts:
                    old = self._receipts[event.path]
                    self._receipts[event.path] = ReceiptInfo(
                        old.path, old.anchored_at, old.namespace, old.cadence, old.target, old.root, "confirmed"
                    )
                    receipts_changed = True
                elif isinstance(event, Paused):
                    self.refresh_bindings()
                elif isinstance(event, ConfigRejected):
                    self.notify(config_rejected_text(event), severity="error", timeout=30)
                elif isinstance(event, ConfigApplied):
                    self.notify(config_applied_text(event), timeout=8)
            if receipts_changed:
                self._refresh_receipts()
            # A tick alone changes nothing the 1 s countdown refresh will not show anyway.
            if any(not isinstance(e, TickCompleted) for e in events):
                self._refresh_views()
            if logs:
                self.logs.add(logs)

    def _refresh_all(self) -> None:
        with self.batch_update():
            self._refresh_receipts()
            self._refresh_views()

    def _refresh_receipts(self) -> None:
        if len(self._receipts) > RECEIPTS_SHOWN:
            for path in sorted(self._receipts, key=lambda p: self._receipts[p].anchored_at)[: len(self._receipts) - RECEIPTS_SHOWN]:
                del self._receipts[path]
                self._verified.pop(path, None)
        p = self._palette
        self.receipts.show({path: receipt_row(r, self._verified.get(path, ""), p) for path, r in self._receipts.items()})

    def _refresh_views(self) -> None:
        """One snapshot of the job table -> diffed rows, backoff rows and the header."""
        engine = self.runtime.engine
        now = engine.clock.now()  # the engine's steady clock: its times are on it
        views = engine.views(now)
        max_level = engine.policy.max_level
        p = self._palette
        self.jobs.show({str(v.key): job_row(v, now, max_level, engine.paused, p) for v in views})
        # The Backoff pane lists every job with a backoff level, as the header counts them.
        backing = {str(v.key): backoff_row(v, now, max_level, p, self.logs.data_dir) for v in views if v.state.backoff_level > 0}
        self.backoff.show(backing)
        tab = self._backoff_tab
        label = f"Backoff ({len(backing)})" if backing else "Backoff"
        if str(tab.label) != label:
            tab.label = label
        self.header.show(self._header_text(views, now))

    def _header_text(self, views: list, now: float) -> Text:
        engine = self.runtime.engine
        c = count(views)
        state, why = health(
            c, engine=self.engine_state, last_tick=engine.last_tick, started_at=engine.started_at,
            now=now, tick=engine.tick,
        )  # fmt: skip
        role = HEALTH_ROLE[state]
        s = self._palette.styles
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append("● " + state, style=f"bold {s.get(role, '')}")
        if why:
            out.append(f" ({why})", style=s.get(role, ""))
        # Badges right after the health, the config hash last: at 80 columns what does not
        # fit is cut from the end, and what the operator must not miss is at the start.
        http_error = self.services.http_error if self.services is not None else None
        if http_error:
            why_off = "port in use" if "in use" in http_error else "cannot listen"
            out.append(f"  HTTP OFF: {why_off}", style=f"bold reverse {s.get('error', '')}")
        if engine.paused:
            out.append("  PAUSED", style=f"bold reverse {s.get('warning', '')}")
        if self.readonly:
            out.append("  READONLY", style=f"bold reverse {s.get('accent', '')}")
        if self.stopping:
            out.append("  stopping...", style="bold")
        out.append(f"  up {format_seconds(max(0.0, now - engine.started_at))}")
        # Counts the operator can check against the rows: a job anchoring is not also "ok",
        # and "backoff" is the Backoff pane's count.
        out.append(f"  ok {c.ok}")
        out.append(f"  anchoring {c[JobStatus.ANCHORING]}")
        out.append(f"  backoff {c.in_backoff}", style=s.get("warning", "") if c.in_backoff else "")
        for status in (JobStatus.STALE, JobStatus.STUCK, JobStatus.ERROR):
            if c[status]:
                out.append(f"  {status.text} {c[status]}", style=s.get("warning" if status == JobStatus.STALE else "error", ""))
        out.append(f"  cfg {engine.config_hash[:8]}")
        return out

    # ----- themes ---------------------------------------------------------------------------------

    def _palette_for_theme(self) -> Palette:
        t = self.current_theme
        return Palette({
            "primary": t.primary, "accent": t.accent, "success": t.success,
            "warning": t.warning, "error": t.error,
        })  # fmt: skip

    def _on_theme_changed(self, _theme: Any) -> None:
        self._palette = self._palette_for_theme()
        self._refresh_all()

    def action_next_theme(self) -> None:
        names = [n for n in self._theme_names if n in self.available_themes]
        i = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(i + 1) % len(names)]
        self.notify(f"theme: {self.theme}", timeout=2)

    # ----- selection ------------------------------------------------------------------------------

    def _selected_job(self) -> JobKey | None:
        """The job of what is selected in the pane the operator is looking at: a job row, a
        receipt's job, or the `job` field of a log line. None if it names no job."""
        pane = self._focused_pane_name()
        if pane == "receipts":
            info = self._receipts.get(self.receipts.selected_key or "")
            return None if info is None or info.cadence == "?" else JobKey(info.namespace, info.cadence)
        if pane == "logs":
            record = self.logs.selected_record
            fields = record.fields if record is not None else {}
            jobs = fields.get("jobs")
            job = fields.get("job") or (jobs[0] if isinstance(jobs, list) and len(jobs) == 1 else None)
            try:
                return JobKey.parse(job) if isinstance(job, str) else None
            except ValueError:
                return None
        table = self.backoff if pane == "backoff" else self.jobs
        key = table.selected_key
        return JobKey.parse(key) if key else None

    def _no_job_selected(self) -> None:
        """Say what the key needs in the pane the operator is looking at."""
        needs = {
            "jobs": "no job selected",
            "backoff": "no job in backoff: select a job in Namespaces (1)",
            "receipts": "no receipt selected: select one, or a job in Namespaces (1)",
            "logs": "the selected log line names no job: select a line with job=... (j/k), or a job in Namespaces (1)",
        }
        self.notify(needs[self._focused_pane_name()], severity="warning")

    def _selected_namespace(self) -> str | None:
        job = self._selected_job()
        return job.namespace if job else None

    # ----- actions --------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if isinstance(self.screen, HelpScreen):
            return False  # the footer shows the help screen's own keys
        if self.readonly and action in MUTATING:
            return False  # not in the footer; pressed, on_key says "read-only"
        if action in MAIN_SCREEN_ONLY and len(self.screen_stack) > 1:
            return False  # on the detail screen these would act on hidden panes
        return True

    def _readonly_keys(self) -> dict[str, str]:
        """{key: action} of the actions --readonly disables, as currently mapped."""
        keys: dict[str, str] = {}
        for bid, key, action, *_ in KEYS:
            if action in MUTATING:
                for k in self._keymap_key(bid, key, every=True):
                    keys[k] = action
        return keys

    def on_key(self, event: Any) -> None:
        """In --readonly the mutating keys are unbound; say so instead of doing nothing."""
        if self.readonly and len(self.screen_stack) == 1:
            action = self._readonly_keys().get(event.key)
            if action is not None:
                event.stop()
                self.notify(f"read-only: {action.replace('_', ' ')} is disabled (--readonly)", severity="warning", timeout=4)

    def action_force(self) -> None:
        key = self._selected_job()
        if key is None:
            self._no_job_selected()
            return
        spec = self.runtime.engine.jobs.get(key)
        if spec is None:
            self.notify(f"{key} is no longer configured", severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._force([key])

        self.push_screen(
            ConfirmScreen(f"Force-anchor {key} now?", f"Target {spec.target}. Ignores due time, backoff and unchanged roots."),
            confirmed,
        )

    def action_force_namespace(self) -> None:
        namespace = self._selected_namespace()
        if namespace is None:
            self._no_job_selected()
            return
        keys = [k for k in self.runtime.engine.jobs if k.namespace == namespace]
        if not keys:
            self.notify(f"{namespace} is no longer configured", severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._force(keys)

        self.push_screen(
            ConfirmScreen(
                f"Force-anchor all of {namespace} now?",
                f"{len(keys)} job(s): {', '.join(k.cadence for k in keys)}.",
            ),
            confirmed,
        )

    def _force(self, keys: list[JobKey]) -> None:
        started = []
        for key in keys:
            try:
                if self.runtime.engine.force(key):
                    started.append(str(key))
            except KeyError:
                pass
        if started:
            self.notify(f"forced: {', '.join(started)}", timeout=4)
        else:
            self.notify("already in flight", severity="warning")

    def action_reload(self) -> None:
        self.reload_config()

    @work(group="reload", exit_on_error=False)
    async def reload_config(self) -> None:
        """Reload now, the files read off the loop (anchoring and the screen go on). What
        changed, or the errors, are told by the ConfigApplied / ConfigRejected events, as
        for an edit the file watcher picked up; settings only a restart applies are named."""
        result = await self.runtime.reload_off_loop()
        if result.errors:
            self.push_screen(
                MessageScreen("Config reload rejected: the previous config stays live", result.errors)
            )
        elif not result.changed:
            self.notify(f"config reload: {result.summary or 'no change'}", timeout=4)
        restart = result.summary.partition("restart needed: ")[2]
        if restart:
            self.notify(
                f"config reload: restart needed for {restart}; they keep their running values until then",
                severity="warning", timeout=15,
            )  # fmt: skip
        self.flush_now()

    def action_pause(self) -> None:
        engine = self.runtime.engine
        if engine.paused:
            engine.resume()
            self.notify("scheduling resumed", timeout=3)
        else:
            engine.pause()
            self.notify("scheduling paused: no new anchors until resumed (space)", timeout=4)
        self._refresh_views()

    def action_detail(self) -> None:
        if self._focused_pane_name() == "logs":
            self._show_log_record()
            return
        namespace = self._selected_namespace()
        if namespace is None:
            self._no_job_selected()
            return
        engine = self.runtime.engine
        views = [engine.view(k) for k in engine.jobs if k.namespace == namespace]
        receipts: list[ReceiptInfo] = []
        for v in views:
            for path, receipt in self.runtime.receipts.for_job(namespace, v.spec.cadence, 5):
                receipts.append(ReceiptInfo.from_file(path, receipt))
        receipts.sort(key=lambda r: r.anchored_at, reverse=True)
        jobs = {str(v.key) for v in views}
        errors = [
            r for r in self.logs.records
            if r.level in ("WARNING", "ERROR") and str(r.fields.get("job", "")) in jobs
        ][-10:]  # fmt: skip
        ns_config = self.runtime.loaded.config.namespaces.get(namespace)
        body = namespace_detail(
            namespace, ns_config, views, receipts[:10], errors, now=engine.clock.now(),
            max_level=engine.policy.max_level, data_dir=self.logs.data_dir,
        )  # fmt: skip
        self.push_screen(DetailScreen(namespace, body))

    def _show_log_record(self) -> None:
        record = self.logs.selected_record
        if record is None:
            self.notify("no log line selected (j/k select one)", severity="warning")
            return
        lines = log_record_lines(record, self.logs.data_dir)
        self.push_screen(MessageScreen(f"Log line: {record.level}", lines, error=record.level == "ERROR"))

    def on_data_table_row_selected(self, event: DiffTable.RowSelected) -> None:
        self.action_detail()

    def action_verify(self) -> None:
        """Verify the selected receipt (Receipts pane), else the latest receipt of the job
        selected in the pane the operator is looking at."""
        if self._focused_pane_name() == "receipts":
            path = self.receipts.selected_key
            if path is None:
                self.notify("no receipt selected", severity="warning")
                return
        else:
            job = self._selected_job()
            if job is None:
                self._no_job_selected()
                return
            latest = self.runtime.receipts.for_job(job.namespace, job.cadence, 1)
            if not latest:
                self.notify(f"{job} has no receipt yet", severity="warning")
                return
            path = str(latest[0][0])
        if path in self._receipts:
            self._verified[path] = "..."
            self._refresh_receipts()
        self.verify_receipt(path)

    @work(group="verify", exit_on_error=False)
    async def verify_receipt(self, path: str) -> None:
        from core.receipts import (
            ReceiptError,
            ReceiptInvalid,
            ReceiptUncheckable,
            load_receipt,
            verify_receipt,
        )

        name = Path(path).name
        try:
            receipt = load_receipt(path)
            await verify_receipt(receipt, self.runtime.backends)
        except ReceiptUncheckable as exc:  # not a verdict: something it needs is missing here
            self._verified[path] = "UNKNOWN"
            self.notify(f"verify CANNOT CHECK {name}: {exc}", severity="warning", timeout=15)
        except (ReceiptError, ReceiptInvalid) as exc:
            self._verified[path] = "FAIL"
            self.notify(f"verify FAIL {name}: {exc}", severity="error", timeout=15)
        except Exception as exc:  # a verifier bug must not kill the dashboard
            self._verified[path] = "FAIL"
            self.notify(f"verify FAIL {name}: {exc!r}", severity="error", timeout=15)
        else:
            self._verified[path] = "OK"
            job = f"{receipt.get('namespace')}/{receipt.get('cadence')}"
            self.notify(f"verify OK {job} {name}: audit path and attestation check out", timeout=6)
        self._refresh_receipts()

    def action_filter(self) -> None:
        name = self._focused_pane_name()
        self._filter_target = name
        box = self._filter_box
        box.placeholder = f"filter {PANE_TITLES[name]} (enter keeps, esc clears)"
        box.value = self.panes[name].body.filter_text
        box.add_class("visible")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter" and self._filter_target:
            self.panes[self._filter_target].body.set_filter(event.value)
            self.panes[self._filter_target].describe_filter()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self._close_filter()

    def _close_filter(self) -> None:
        box = self._filter_box
        box.remove_class("visible")
        target = self._filter_target or self._active_pane
        self._filter_target = None
        self.panes[target].body.focus()

    def on_diff_table_filter_changed(self, event: DiffTable.FilterChanged) -> None:
        name = self._pane_of(event.table)
        if name:
            self.panes[name].describe_filter()

    def on_log_view_filter_changed(self, event: LogView.FilterChanged) -> None:
        self.panes["logs"].describe_filter()

    def action_back(self) -> None:
        box = self._filter_box
        if box.has_class("visible"):
            target = self._filter_target
            if target:
                self.panes[target].body.set_filter("")
                self.panes[target].describe_filter()
            self._close_filter()
            return
        pane = self.panes[self._focused_pane_name()]
        if pane.body.filter_text:
            pane.body.set_filter("")
            pane.describe_filter()

    def action_help(self) -> None:
        rows = []
        for bid, key, action, _label, _show, text in KEYS:
            binding_key = self._keymap_key(bid, key)
            disabled = self.readonly and action in MUTATING
            rows.append((self.get_key_display(Binding(binding_key, action)), text + ("  [disabled: --readonly]" if disabled else "")))
        rows += list(PANE_KEYS_HELP)
        notes = ["Keys can be remapped in the config: tui.keys: {action: key}, e.g. {force: x}."]
        if self.readonly:
            notes.append("Read-only dashboard (--readonly): force, reload and pause are disabled.")
        self.push_screen(HelpScreen(rows, notes))

    def _keymap_key(self, binding_id: str, default: str, *, every: bool = False) -> Any:
        """The key of a binding as mapped by tui.keys (the first; `every`: all of them)."""
        keys = (self._keymap.get(binding_id) or default).split(",")
        return [k.strip() for k in keys] if every else keys[0].strip()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        actions = [
            ("Force-anchor selected job", "f: anchor the selected job now", self.action_force, "force"),
            ("Force-anchor selected namespace", "F: anchor every cadence of the namespace", self.action_force_namespace, "force_namespace"),
            ("Reload config", "R: load the config again; errors keep the old one", self.action_reload, "reload"),
            ("Pause / resume scheduling", "space", self.action_pause, "pause"),
            ("Namespace detail", "enter: config, receipts, errors", self.action_detail, "detail"),
            ("Verify selected receipt", "v: audit path and attestation", self.action_verify, "verify"),
            ("Filter focused pane", "/", self.action_filter, "filter"),
            ("Next theme", "t", self.action_next_theme, "next_theme"),
            ("Help", "?: every key", self.action_help, "help"),
        ]
        for title, help_text, callback, action in actions:
            if self.readonly and action in MUTATING:
                continue
            yield SystemCommand(title, help_text, callback)
        for name in PANES:
            yield SystemCommand(f"Show {PANE_TITLES[name]}", "switch pane", lambda n=name: self.action_show_pane(n))

    # ----- engine lifecycle ---------------------------------------------------------------------

    @work(exclusive=True, exit_on_error=False, group="run")
    async def run_scheduler(self) -> None:
        """The run as in --no-ui (core/lifecycle.py: services, "scheduler started", the
        engine; stopped in reverse), until begin_shutdown; then exit. A port that cannot be
        bound is logged and shown; the dashboard keeps running. Without `start_engine`
        (tests) begin_shutdown runs it to start nothing but stop all the same: the state
        saved, the backends closed."""
        try:
            async with running(
                self.runtime, http_required=False, grace=self.grace, start=self.start_engine
            ) as run:
                self.services = run.services
                if run.engine is not None:
                    self.engine_state = "running"
                    run.engine.add_done_callback(self._engine_ended)
                if self.services is not None and self.services.http_error:
                    self.notify(
                        f"/metrics and /health are off: {self.services.http_error}. "
                        "Set METRICS_PORT or http.listen to a free port and restart.",
                        severity="error", timeout=60,
                    )  # fmt: skip
                self._refresh_views()
                await run.wait(self._stop_requested, or_engine_end=False)
                run.grace = self._stop_grace
                await run.stop_engine()
                self.stopped_cleanly = True
                if self.watchdog is not None:
                    self.watchdog.state_saved()
        finally:
            if self.stopping:
                self._exit_now()

    def _engine_ended(self, task: asyncio.Task[None]) -> None:
        """The engine task is done: stopped, or failed (logged by core/lifecycle.py)."""
        error = None if task.cancelled() else task.exception()
        self.engine_state = "failed" if error is not None else "stopped"
        if error is not None:
            self.notify(f"engine failed: {error!r}; no anchors until restart", severity="error", timeout=60)
        self._refresh_views()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "run" and event.state == WorkerState.ERROR:
            error = event.worker.error
            self.runtime.log.error("the run failed", error=repr(error))
            self.notify(f"the scheduler failed: {error!r}; no anchors until restart", severity="error", timeout=60)

    # Given by run_dashboard on a real terminal (tui.terminal); Pilot tests run without them.
    terminal: Any = None  # TerminalGuard: says when the terminal is gone
    watchdog: Any = None  # ExitWatchdog: ends the process if the stop cannot finish

    def _install_signal_handlers(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        for sig, reason in (
            (signal.SIGHUP, "terminal hung up (SIGHUP)"),
            (signal.SIGTERM, "SIGTERM"),
            (signal.SIGINT, "SIGINT"),
        ):
            try:
                loop.add_signal_handler(sig, self._on_signal, reason, sig == signal.SIGHUP)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        if self.terminal is not None:
            self.terminal.watch(lambda reason: self._terminal_lost(loop, reason))

    def _terminal_lost(self, loop: Any, reason: str) -> None:
        """From the thread that noticed: arm the watchdog at once (it must not depend on the
        loop), then stop on the loop as for SIGHUP."""
        from tui.terminal import HANGUP_GRACE, HANGUP_TEARDOWN

        if self.watchdog is not None:
            self.watchdog.arm(save_within=HANGUP_GRACE + 0.5, teardown_within=HANGUP_TEARDOWN)
        try:
            loop.call_soon_threadsafe(self._on_signal, reason, True)
        except RuntimeError:  # the loop is closed: the app has already stopped
            pass

    def _on_signal(self, reason: str, hangup: bool = False) -> None:
        """SIGTERM, SIGINT, or the terminal gone (SIGHUP, end of input, failed writes). With no
        terminal left nobody can wait for in-flight anchors: they get HANGUP_GRACE, and any
        still running stay in the journal."""
        from tui.terminal import HANGUP_GRACE

        if self.stopping:
            return
        self.runtime.log.warning("stopping", reason=reason)
        self.exit_reason = reason
        self.begin_shutdown(min(self.grace, HANGUP_GRACE) if hangup else None)

    async def action_quit(self) -> None:
        in_flight = self.runtime.engine.in_flight()
        if not in_flight or self.stopping:
            self.begin_shutdown()
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.begin_shutdown()

        self.push_screen(
            ConfirmScreen(
                f"{len(in_flight)} anchor(s) in flight. Quit anyway?",
                f"They get {format_seconds(self.grace)} to finish; any still running stay in the "
                "journal and are resolved at the next start.",
            ),
            confirmed,
        )

    def begin_shutdown(self, grace: float | None = None) -> None:
        """Stop the engine within `grace` (default: the app's), then exit; once only."""
        from tui.terminal import STOP_MARGIN, TEARDOWN_LIMIT

        if self.stopping:
            return
        self.stopping = True
        grace = self.grace if grace is None else grace
        if self.watchdog is not None:
            self.watchdog.arm(save_within=grace + STOP_MARGIN, teardown_within=TEARDOWN_LIMIT)
        self._refresh_views()
        self._stop_grace = grace
        self._stop_requested.set()  # run_scheduler stops the run, then exits
        if self._run_worker is None:  # tests without the engine: only the stop runs
            self._run_worker = self.run_scheduler()
        elif self._run_worker.is_finished:
            self._exit_now()  # nothing runs to stop (its start failed): run_dashboard saves the state

    def _exit_now(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.exit(0)

    def _remove_signal_handlers(self) -> None:
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    def on_unmount(self) -> None:
        if self.start_engine:
            self._remove_signal_handlers()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


# --------------------------------------------------------------------------- entry point


def run_dashboard(loaded: Any, args: argparse.Namespace, loader: Any = None) -> int:
    """Run the dashboard until quit / SIGTERM / SIGINT / the terminal is gone; returns the
    process exit code (see core/cli.py). When the terminal is lost (SIGHUP, end of input,
    failed writes) the engine is stopped and its state saved first; if Textual's teardown
    then cannot finish, the watchdog ends the process with exit 0 (1 if state could not be
    saved)."""
    import sys

    from tui.terminal import ExitWatchdog, TerminalGuard, guarded_driver

    try:
        runtime = Runtime.open(loaded, loader=loader)
    except CannotStart as exc:
        print(f"vmsh-scheduler: {exc}", file=sys.stderr)
        return 2
    try:
        app = VaultMeshApp(
            runtime,
            readonly=bool(getattr(args, "readonly", False)),
            theme=getattr(args, "theme", None),
        )
    except ThemeError as exc:
        runtime.release()
        print(f"vmsh-scheduler: {exc}", file=sys.stderr)
        return 2
    app.terminal = TerminalGuard()
    app.watchdog = ExitWatchdog(save_state=runtime.engine.flush, release=runtime.release)
    app.driver_class = guarded_driver(app.terminal)
    try:
        app.run(mouse=not getattr(args, "no_mouse", False))
    finally:
        app.terminal.stop()
        if not app.stopped_cleanly:
            # The app ended without the orderly stop (e.g. a crash): save state at least.
            try:
                runtime.engine.flush()
            except Exception as exc:
                print(f"vmsh-scheduler: could not save state: {exc}", file=sys.stderr)
        runtime.release()
    if app.return_code not in (0, None):
        return int(app.return_code or 1)
    if app.exit_reason:
        print(f"vmsh-scheduler: stopped: {app.exit_reason}", file=sys.stderr)
    return 0
