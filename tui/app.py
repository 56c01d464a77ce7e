"""VaultMeshApp: the operator's dashboard. Shows a scheduler's SchedulerControl.

The App keeps the themes, the keymap, the help and the palette; where the scheduler runs
(the engine on this loop, or a scheduler elsewhere over its control socket) and what
running it takes (signals, the terminal guard, the exit watchdog, the stop) is its host's
(tui/host.py). The main screen (tui/dashboard.py DashboardScreen) owns the layout, the
panes (tui/panes), the selection and the actions on them, and reaches the scheduler only
through core/control.py SchedulerControl. Every action is one entry in tui/actions.py
ACTIONS; the styles are in tui/app.tcss. The entry points that build a host and run the
App are cli/dashboard.py's.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable, Mapping

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from core.cadence import format_seconds
from core.control import SchedulerControl
from core.dashboard_settings import action_problem, key_problem
from tui.actions import ACTIONS, MUTATING, bindings, mapped_keys
from tui.dashboard import DashboardScreen, RunState
from tui.host import Host
from tui.panes import PANES, TABLE_HELP
from tui.screens import ConfirmScreen, HelpScreen
from tui.themes import FALLBACKS, ThemeError, bundled_themes, choose_theme, load_theme_file


class VaultMeshApp(App[int]):
    TITLE = "VaultMesh Scheduler"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = bindings("app")
    CSS_PATH = "app.tcss"

    def __init__(
        self,
        host: Host,
        *,
        readonly: bool = False,
        theme: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        # The host runs the scheduler (InProcessHost) or follows one running elsewhere
        # (AttachedHost); the App only shows its control.
        self.host = host
        self.control: SchedulerControl = host.control
        self.readonly = readonly
        self.startup_problems: list[str] = []
        self._tui = host.tui
        self.dashboard = DashboardScreen(
            self.control, data_dir=host.data_dir, readonly=readonly, run_state=self._run_state
        )
        # The dashboard's event subscription, ended before the app exits.
        self._unsubscribe: Callable[[], None] | None = self.dashboard.stop_events
        env = os.environ if env is None else env
        self._theme_names = self._register_themes()
        self.theme = choose_theme(set(self.available_themes), flag=theme, config=self._tui.theme, env=env)

    # ----- themes and keys ---------------------------------------------------------------------

    def _register_themes(self) -> list[str]:
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
        path = self._tui.theme_file
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
        for action, key in (self._tui.keys or {}).items():
            problem = action_problem(action) or key_problem(key)
            if problem:
                self.startup_problems.append(f"tui.keys: {problem}")
            else:
                keymap[action] = key
        return keymap

    def get_default_screen(self) -> DashboardScreen:
        return self.dashboard

    def _run_state(self) -> RunState:
        return self.host.run_state()

    def refresh_views(self) -> None:
        """The host's state changed: the header (and the tables) again."""
        if self.dashboard.is_mounted:
            self.dashboard.refresh_views()

    def flush_now(self) -> None:
        """Apply the pending events at once (tests and snapshots)."""
        self.dashboard.apply_pending()

    def on_mount(self) -> None:
        self.set_keymap(self._config_keymap())
        self.host.start(self)
        log = self.host.log
        for problem in self.startup_problems:
            if log is not None:
                log.error(problem)
            self.notify(problem, severity="error", timeout=30)
        if self.readonly and log is not None:
            log.info("dashboard is read-only: force, reload and pause are disabled")
        # Everything built by the time the first screen is drawn (the job table, the rows of
        # every pane) lives as long as the app, or until its job changes: keep it out of
        # full collections (with 1,000 jobs those took ~100 ms every 10-20 s, a visible
        # hitch; with 100,000, about a second every few full refreshes).
        self.call_after_refresh(gc.freeze)

    def action_next_theme(self) -> None:
        names = [n for n in self._theme_names if n in self.available_themes]
        i = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(i + 1) % len(names)]
        self.notify(f"theme: {self.theme}", timeout=2)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if isinstance(self.screen, HelpScreen):
            return False  # the footer shows the help screen's own keys
        return True

    def action_help(self) -> None:
        rows = []
        for a in ACTIONS:
            key = mapped_keys(a, self._keymap)[0]
            disabled = self.readonly and a.mutating
            rows.append((self.get_key_display(Binding(key, a.action)), a.help + ("  [disabled: --readonly]" if disabled else "")))
        rows.append((" ".join(str(n) for n in range(1, len(PANES) + 1)), "show " + ", ".join(p.title for p in PANES)))
        rows += [*TABLE_HELP, *(line for p in PANES for line in p.help)]
        notes = ["Keys can be remapped in the config: tui.keys: {action: key}, e.g. {force: x}."]
        if self.readonly:
            notes.append("Read-only dashboard (--readonly): force, reload and pause are disabled.")
        self.push_screen(HelpScreen(rows, notes))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Only ours: the action table and the panes (not Textual's own theme picker, Keys,
        Maximize or Screenshot, which list themes and keys this dashboard does not use)."""
        dashboard = self.dashboard
        for a in ACTIONS:
            if a.palette is None or (self.readonly and a.action in MUTATING):
                continue
            owner = self if a.scope == "app" else dashboard
            yield SystemCommand(a.palette, a.palette_help, getattr(owner, f"action_{a.action}"))
        for p in PANES:
            yield SystemCommand(f"Show {p.title}", "switch pane", lambda n=p.name: dashboard.action_show_pane(n))

    # ----- quit and exit (the host stops the scheduler, or detaches) -------------------------

    async def action_quit(self) -> None:
        host = self.host
        in_flight = self.control.in_flight() if host.waits_for_anchors else frozenset()
        if not in_flight or host.stopping:
            host.quit()
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                host.quit()

        self.push_screen(
            ConfirmScreen(
                f"{len(in_flight)} anchor(s) in flight. Quit anyway?",
                f"They get {format_seconds(host.grace)} to finish; any still running stay in the "
                "journal and are resolved at the next start.",
            ),
            confirmed,
        )

    def exit_now(self) -> None:
        """The host is done: end the dashboard's subscription and exit with 0."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.exit(0)

    def on_unmount(self) -> None:
        self.host.unmount()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
