"""VaultMeshApp: the operator's dashboard. Runs the scheduler on the app's loop and shows it.

The App keeps the lifecycle (the run of engine and services, signals, the terminal
guard, shutdown), themes and the keymap; the main screen (tui/dashboard.py
DashboardScreen) owns the layout, the panes (tui/panes), the selection and the actions
on them, and reaches the scheduler only through core/control.py SchedulerControl. Every
action is one entry in tui/actions.py ACTIONS; the styles are in tui/app.tcss.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from core.cadence import format_seconds
from core.config import TuiSettings
from core.control import RuntimeControl, SchedulerControl
from core.dashboard_settings import action_problem, key_problem
from core.lifecycle import running
from core.runtime import CannotStart, Loader, Runtime
from core.services import Services
from core.state import LockHeld
from tui.actions import ACTIONS, MUTATING, bindings, mapped_keys
from tui.dashboard import DashboardScreen, RunState
from tui.panes import PANES, TABLE_HELP
from tui.screens import ConfirmScreen, HelpScreen
from tui.themes import FALLBACKS, ThemeError, bundled_themes, choose_theme, load_theme_file

if TYPE_CHECKING:
    from core.config import LoadedConfig
    from core.remote_control import RemoteControl
    from tui.terminal import ExitWatchdog, TerminalGuard


class VaultMeshApp(App[int]):
    TITLE = "VaultMesh Scheduler"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = bindings("app")
    CSS_PATH = "app.tcss"

    def __init__(
        self,
        runtime: Runtime | None,
        *,
        attached: RemoteControl | None = None,
        tui_settings: TuiSettings | None = None,
        readonly: bool = False,
        theme: str | None = None,
        start_engine: bool = True,
        grace: float = 10.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        # In process (`runtime`) the App runs the engine; attached (`attached`: the control
        # socket of a scheduler running elsewhere) it runs nothing and never stops it.
        self.runtime = runtime
        self.attached = attached
        self.readonly = readonly
        self.start_engine = start_engine and attached is None
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
        if attached is not None:
            self.control: SchedulerControl = attached
            data_dir, self._tui = attached.data_dir, tui_settings or TuiSettings()
        else:
            assert runtime is not None, "the App needs a runtime or a control socket"
            self.control = RuntimeControl(runtime)
            data_dir, self._tui = str(runtime.data_dir.resolve()), runtime.loaded.config.tui
        self.dashboard = DashboardScreen(
            self.control, data_dir=data_dir, readonly=readonly, run_state=self._run_state
        )
        # The dashboard's event subscription, ended by the lifecycle before the app exits.
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
        if self.attached is not None:
            link = self.attached
            lost = None if link.disconnected_since is None else time.monotonic() - link.disconnected_since
            where = f"attached to pid {link.pid} on {link.host}"
            return RunState("running", None, self.stopping, attached=where, disconnected_for=lost)
        http_error = self.services.http_error if self.services is not None else None
        return RunState(self.engine_state, http_error, self.stopping)

    def _refresh_views(self) -> None:
        """The lifecycle's state changed: the header (and the tables) again."""
        if self.dashboard.is_mounted:
            self.dashboard.refresh_views()

    def flush_now(self) -> None:
        """Apply the pending events at once (tests and snapshots)."""
        self.dashboard.apply_pending()

    def on_mount(self) -> None:
        self.set_keymap(self._config_keymap())
        if self.start_engine:
            self._install_signal_handlers()
            self._run_worker = self.run_scheduler()
        elif self.attached is not None:
            self._install_signal_handlers()
            self.attached.on_notice = lambda text: self.notify(text, severity="error", timeout=15)
            self.attached.start()
        for problem in self.startup_problems:
            if self.runtime is not None:
                self.runtime.log.error(problem)
            self.notify(problem, severity="error", timeout=30)
        if self.readonly and self.runtime is not None:
            self.runtime.log.info("dashboard is read-only: force, reload and pause are disabled")
        # Everything built so far lives as long as the app: keep it out of full collections
        # (with 1,000 jobs those took ~100 ms every 10-20 s, a visible hitch).
        gc.freeze()

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
        yield from super().get_system_commands(screen)
        dashboard = self.dashboard
        for a in ACTIONS:
            if a.palette is None or (self.readonly and a.action in MUTATING):
                continue
            owner = self if a.scope == "app" else dashboard
            yield SystemCommand(a.palette, a.palette_help, getattr(owner, f"action_{a.action}"))
        for p in PANES:
            yield SystemCommand(f"Show {p.title}", "switch pane", lambda n=p.name: dashboard.action_show_pane(n))

    # ----- engine lifecycle ---------------------------------------------------------------------

    @work(exclusive=True, exit_on_error=False, group="run")
    async def run_scheduler(self) -> None:
        """The run as in --no-ui (core/lifecycle.py: services, "scheduler started", the
        engine; stopped in reverse), until begin_shutdown; then exit. A port that cannot be
        bound is logged and shown; the dashboard keeps running. Without `start_engine`
        (tests) begin_shutdown runs it to start nothing but stop all the same: the state
        saved, the backends closed."""
        assert self.runtime is not None, "attached: the scheduler runs elsewhere"
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
                    )
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
            if self.runtime is not None:
                self.runtime.log.error("the run failed", error=repr(error))
            self.notify(f"the scheduler failed: {error!r}; no anchors until restart", severity="error", timeout=60)

    # Given by run_dashboard on a real terminal (tui.terminal); Pilot tests run without them.
    terminal: TerminalGuard | None = None  # says when the terminal is gone
    watchdog: ExitWatchdog | None = None  # ends the process if the stop cannot finish

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
            # The app's context (Textual's active_app) goes with the call: timers and workers
            # started by the stop would otherwise fail in their task at shutdown (exit 1).
            context = contextvars.copy_context()
            self.terminal.watch(lambda reason: self._terminal_lost(loop, context, reason))

    def _terminal_lost(self, loop: asyncio.AbstractEventLoop, context: contextvars.Context, reason: str) -> None:
        """From the thread that noticed: arm the watchdog at once (it must not depend on the
        loop), then stop on the loop as for SIGHUP."""
        from tui.terminal import HANGUP_GRACE, HANGUP_SAVE_MARGIN, HANGUP_TEARDOWN

        if self.watchdog is not None:
            self.watchdog.arm(save_within=HANGUP_GRACE + HANGUP_SAVE_MARGIN, teardown_within=HANGUP_TEARDOWN)
        try:
            loop.call_soon_threadsafe(self._on_signal, reason, True, context=context)
        except RuntimeError:  # the loop is closed: the app has already stopped
            pass

    def _on_signal(self, reason: str, hangup: bool = False) -> None:
        """SIGTERM, SIGINT, or the terminal gone (SIGHUP, end of input, failed writes). With no
        terminal left nobody can wait for in-flight anchors: they get HANGUP_GRACE, and any
        still running stay in the journal."""
        from tui.terminal import HANGUP_GRACE

        if self.stopping:
            return
        self.exit_reason = reason
        if self.attached is not None:  # the scheduler runs on: only this dashboard goes
            self.detach()
            return
        assert self.runtime is not None
        self.runtime.log.warning("stopping", reason=reason)
        self.begin_shutdown(min(self.grace, HANGUP_GRACE) if hangup else None)

    async def action_quit(self) -> None:
        if self.attached is not None:  # the scheduler runs on: nothing here to wait for
            self.detach()
            return
        in_flight = self.control.in_flight()
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

        if self.attached is not None:
            self.detach()
            return
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

    @work(exclusive=True, exit_on_error=False, group="detach")
    async def detach(self) -> None:
        """Attached: leave the scheduler running, close the socket, exit."""
        if self.stopping or self.attached is None:
            return
        self.stopping = True
        self._refresh_views()
        try:
            await self.attached.close()
        finally:
            self._exit_now()

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
        if self.start_engine or self.attached is not None:
            self._remove_signal_handlers()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


# --------------------------------------------------------------------------- entry point


def run_dashboard(loaded: LoadedConfig, args: argparse.Namespace, loader: Loader | None = None) -> int:
    """Run the dashboard until quit / SIGTERM / SIGINT / the terminal is gone; returns the
    process exit code (see cli/main.py). When the terminal is lost (SIGHUP, end of input,
    failed writes) the engine is stopped and its state saved first; if Textual's teardown
    then cannot finish, the watchdog ends the process with exit 0 (1 if state could not be
    saved)."""
    import sys

    from tui.terminal import ExitWatchdog, TerminalGuard, guarded_driver

    try:
        runtime = Runtime.open(loaded, loader=loader)
    except CannotStart as exc:
        if isinstance(exc.__cause__, LockHeld):  # a live scheduler runs there: attach to it
            from core.control_server import socket_path

            return attach_dashboard(socket_path(loaded.config), args, loaded, refused=str(exc))
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


def attach_dashboard(
    socket_path: Path, args: argparse.Namespace, loaded: LoadedConfig | None = None, *, refused: str = ""
) -> int:
    """The dashboard on a scheduler running elsewhere (`vmsh-scheduler attach`, or a data
    dir locked by a live scheduler): no Runtime, no lock, no engine here. Quitting or the
    terminal going away ends this dashboard only. Exit 2 when nothing answers on the
    socket (the message says how to start a scheduler), else 0."""
    import sys

    from core.remote_control import NoScheduler, RemoteControl
    from tui.terminal import ExitWatchdog, TerminalGuard, guarded_driver

    config = loaded.config if loaded is not None else None
    try:
        control = RemoteControl.connect(
            socket_path,
            data_dir=config.scheduler.data_dir if config is not None else None,
            namespaces=dict(config.namespaces) if config is not None else None,
        )
    except NoScheduler as exc:
        print(f"vmsh-scheduler: {refused or exc}", file=sys.stderr)
        if refused:
            print(f"vmsh-scheduler: and could not attach to it: {exc}", file=sys.stderr)
        return 2
    try:
        app = VaultMeshApp(
            None,
            attached=control,
            tui_settings=config.tui if config is not None else None,
            readonly=bool(getattr(args, "readonly", False)),
            theme=getattr(args, "theme", None),
        )
    except ThemeError as exc:
        print(f"vmsh-scheduler: {exc}", file=sys.stderr)
        return 2
    app.terminal = TerminalGuard()
    app.watchdog = ExitWatchdog(save_state=lambda: None, release=lambda: None)  # nothing to save here
    app.driver_class = guarded_driver(app.terminal)
    try:
        app.run(mouse=not getattr(args, "no_mouse", False))
    finally:
        app.terminal.stop()
    if app.return_code not in (0, None):
        return int(app.return_code or 1)
    if app.exit_reason:
        print(f"vmsh-scheduler: detached: {app.exit_reason}", file=sys.stderr)
    return 0
