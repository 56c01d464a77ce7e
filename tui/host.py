"""Where the dashboard's scheduler runs: in this process (InProcessHost) or elsewhere
(AttachedHost, over the control socket).

The App (tui/app.py) only shows a core/control.py SchedulerControl; its host gives it
that control and owns what running it takes: the signal handlers, the terminal guard and
the exit watchdog (tui/terminal.py), and the stop. In process that is the engine's run
(core/lifecycle.py: services, engine, stopped in reverse, the state flushed at the end);
attached it is only this dashboard's socket: quitting, a signal or the terminal going
away detach it and never stop the scheduler.
"""

from __future__ import annotations

import asyncio
import contextvars
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from core.config import TuiSettings
from core.control import SchedulerControl
from core.lifecycle import running
from core.runtime_control import RuntimeControl
from tui.dashboard import RunState

if TYPE_CHECKING:
    from textual.driver import Driver
    from textual.worker import Worker

    from core.observe.logs import Log
    from core.remote_control import RemoteControl
    from core.runtime import Runtime
    from core.services import Services
    from tui.terminal import ExitWatchdog, TerminalGuard

SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
HTTP_OFF_TOAST = 10.0  # seconds the "HTTP is off" notification stays up
SILENT_MIN = 10.0  # seconds without a word from an attached scheduler before its data is old


def http_off_text(error: str) -> str:
    """The short notification of a port that cannot be bound (the whole error is logged)."""
    where = error.removeprefix("cannot listen on ").partition(": ")[0] if "in use" in error else ""
    why = f"{where} in use" if where else error.partition(" (")[0]
    return f"/metrics, /health off: {why}. Set METRICS_PORT or http.listen."


def silent_after(tick: float) -> float:
    """Seconds an attached dashboard waits for a line from its scheduler (every pass sends
    one) before it says its data is old: three passes, at least SILENT_MIN."""
    return max(3 * float(tick), SILENT_MIN)


class HostedApp(Protocol):
    """What a host asks of the App that shows its scheduler."""

    def notify(self, message: str, *, severity: Any = ..., timeout: float | None = ...) -> None: ...

    def call_after_refresh(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> bool: ...

    def run_worker(self, work: Any, *, group: str = ..., exit_on_error: bool = ...,
                   exclusive: bool = ...) -> Worker[Any]: ...

    def refresh_views(self) -> None:
        """The host's state changed: the header (and the tables) again."""
        ...

    def exit_now(self) -> None:
        """Stop showing the scheduler and exit with 0."""
        ...


class Host:
    """What both hosts share: the signals and the terminal going away, told to `stop`."""

    control: SchedulerControl
    data_dir: str
    tui: TuiSettings
    log: Log | None = None  # where the App's start-up problems are logged (None: nowhere)
    waits_for_anchors = False  # quitting asks first while anchors are in flight
    grace = 0.0  # what in-flight anchors get to finish when the dashboard stops
    # Given by guard_terminal on a real terminal (tui.terminal); Pilot tests run without them.
    terminal: TerminalGuard | None = None  # says when the terminal is gone
    watchdog: ExitWatchdog | None = None  # ends the process if the stop cannot finish

    def __init__(self) -> None:
        self.app: HostedApp | None = None
        self.stopping = False
        self.exit_reason = ""
        self._signals = False

    def guard_terminal(self) -> type[Driver]:
        """The terminal guard and the exit watchdog of a real terminal; returns the driver
        class the App runs with (it reports failed writes to the guard)."""
        from tui.terminal import ExitWatchdog, TerminalGuard, guarded_driver

        self.terminal = TerminalGuard()
        self.watchdog = ExitWatchdog(save_state=self._save_state, release=self._release)
        return guarded_driver(self.terminal)

    def _save_state(self) -> None:
        """The watchdog's last resort when the stop cannot finish in time."""

    def _release(self) -> None:
        """The watchdog's last step before it ends the process."""

    def start(self, app: HostedApp) -> None:
        """On the App's mount, on its loop."""
        self.app = app

    def unmount(self) -> None:
        if self._signals:
            _remove_signal_handlers()
            self._signals = False

    def run_state(self) -> RunState:
        return RunState(stopping=self.stopping)

    def finish(self) -> None:
        """After the App ended (cli/dashboard.py)."""
        if self.terminal is not None:
            self.terminal.stop()

    def quit(self) -> None:
        """The App's quit action (confirmed when anchors are in flight)."""
        raise NotImplementedError

    def stop(self, reason: str = "", hangup: bool = False) -> None:
        """A signal, or the terminal gone (`hangup`)."""
        raise NotImplementedError

    def _notify(self, message: str, **kw: Any) -> None:
        if self.app is not None:
            self.app.notify(message, **kw)

    def _refresh_views(self) -> None:
        if self.app is not None:
            self.app.refresh_views()

    def _exit_now(self) -> None:
        if self.app is not None:
            self.app.exit_now()

    def _run_worker(self, work: Coroutine[Any, Any, None], group: str) -> Worker[Any]:
        assert self.app is not None, "started by the App's mount"
        return self.app.run_worker(work, group=group, exclusive=True, exit_on_error=False)

    def _install_signal_handlers(self) -> None:
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
        self._signals = True
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
        """SIGTERM, SIGINT, or the terminal gone (SIGHUP, end of input, failed writes)."""
        if self.stopping:
            return
        self.exit_reason = reason
        self.stop(reason, hangup)


def _remove_signal_handlers() -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    for sig in SIGNALS:
        try:
            loop.remove_signal_handler(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass


class InProcessHost(Host):
    """The engine runs here, on the App's loop (`vmsh-scheduler --config FILE`).

    Without `start_engine` (tests) nothing runs until the stop, which starts nothing but
    stops all the same: the state saved, the backends closed."""

    waits_for_anchors = True

    def __init__(self, runtime: Runtime, *, start_engine: bool = True, grace: float = 10.0) -> None:
        super().__init__()
        self.runtime = runtime
        self.control = RuntimeControl(runtime)
        self.data_dir = str(runtime.data_dir.resolve())
        self.tui = runtime.loaded.config.tui
        self.log = runtime.log
        self.start_engine = start_engine
        self.grace = grace
        self.engine_state = "off"  # off | running | stopped | failed
        self.services: Services | None = None
        self.stopped_cleanly = False
        self._stop_requested = asyncio.Event()  # set by stop(), for the run
        self._stop_grace = grace
        self._run_worker_: Worker[Any] | None = None

    def _save_state(self) -> None:
        self.runtime.engine.flush()

    def _release(self) -> None:
        self.runtime.release()

    def start(self, app: HostedApp) -> None:
        super().start(app)
        if self.start_engine:
            self._install_signal_handlers()
            self._run_worker_ = self._run_worker(self._run(), "run")

    def run_state(self) -> RunState:
        http_error = self.services.http_error if self.services is not None else None
        return RunState(self.engine_state, http_error, self.stopping)

    async def _run(self) -> None:
        try:
            await self.run_scheduler()
        except Exception as error:
            self.runtime.log.error("the run failed", error=repr(error))
            self._notify(f"the scheduler failed: {error!r}; no anchors until restart", severity="error", timeout=60)
            raise

    async def run_scheduler(self) -> None:
        """The run as in --no-ui (core/lifecycle.py: services, "scheduler started", the
        engine; stopped in reverse), until stop(); then exit. A port that cannot be bound
        is logged and shown; the dashboard keeps running."""
        try:
            async with running(
                self.runtime, http_required=False, grace=self.grace, start=self.start_engine
            ) as run:
                self.services = run.services
                if run.engine is not None:
                    self.engine_state = "running"
                    run.engine.add_done_callback(self._engine_ended)
                if self.services is not None and self.services.http_error:
                    # Short-lived (esc dismisses it sooner): the header keeps "HTTP OFF".
                    self._notify(http_off_text(self.services.http_error), severity="error", timeout=HTTP_OFF_TOAST)
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
            self._notify(f"engine failed: {error!r}; no anchors until restart", severity="error", timeout=60)
        self._refresh_views()

    def stop(self, reason: str = "", hangup: bool = False) -> None:
        """A signal or the terminal gone. With no terminal left nobody can wait for in-flight
        anchors: they get HANGUP_GRACE, and any still running stay in the journal."""
        from tui.terminal import HANGUP_GRACE

        self.runtime.log.warning("stopping", reason=reason)
        self.begin_shutdown(min(self.grace, HANGUP_GRACE) if hangup else None)

    def quit(self) -> None:
        self.begin_shutdown()

    def begin_shutdown(self, grace: float | None = None) -> None:
        """Stop the engine within `grace` (default: the host's), then exit; once only."""
        from tui.terminal import STOP_MARGIN, TEARDOWN_LIMIT

        if self.stopping:
            return
        self.stopping = True
        grace = self.grace if grace is None else grace
        if self.watchdog is not None:
            self.watchdog.arm(save_within=grace + STOP_MARGIN, teardown_within=TEARDOWN_LIMIT)
        self._refresh_views()
        self._stop_grace = grace
        self._stop_requested.set()  # the run stops, then exits
        if self._run_worker_ is None:  # tests without the engine: only the stop runs
            self._run_worker_ = self._run_worker(self._run(), "run")
        elif self._run_worker_.is_finished:
            self._exit_now()  # nothing runs to stop (its start failed): finish() saves the state

    def finish(self) -> None:
        """After the App ended: the state saved if the orderly stop did not (a crash), the
        data dir's lock released."""
        super().finish()
        if not self.stopped_cleanly:
            try:
                self.runtime.engine.flush()
            except Exception as exc:
                print(f"vmsh-scheduler: could not save state: {exc}", file=sys.stderr)
        self.runtime.release()


class AttachedHost(Host):
    """The scheduler runs elsewhere (`vmsh-scheduler attach`): this dashboard follows its
    control socket, runs nothing, and never stops it."""

    def __init__(self, control: RemoteControl, tui_settings: TuiSettings | None = None) -> None:
        super().__init__()
        self.remote = control
        self.control = control
        self.data_dir = control.data_dir
        self.tui = tui_settings or TuiSettings()

    def start(self, app: HostedApp) -> None:
        super().start(app)
        self._install_signal_handlers()
        self.remote.on_notice = lambda text: self._notify(text, severity="error", timeout=15)
        # The first page's rows drawn first: the whole table (10,000 jobs, 8 MB read and
        # parsed, sharing this process's GIL) and the stream follow once they are on screen.
        app.call_after_refresh(self.remote.start)

    def run_state(self) -> RunState:
        link = self.remote
        now = time.monotonic()
        lost = None if link.disconnected_since is None else now - link.disconnected_since
        where = f"attached to pid {link.pid} on {link.host}"
        age = link.data_age(now)
        # Live: connected, and heard from within a few scheduling passes (a stream that
        # went silent without closing is no better than a lost one).
        fresh = link.connected and age <= silent_after(link.snapshot().tick)
        return RunState("running", None, self.stopping, attached=where, disconnected_for=lost,
                        data_age=None if fresh else age)

    def stop(self, reason: str = "", hangup: bool = False) -> None:
        """The scheduler runs on: only this dashboard goes."""
        self.detach()

    def quit(self) -> None:
        self.detach()

    def detach(self) -> None:
        """Leave the scheduler running, close the socket, exit."""
        if self.stopping:
            return
        self.stopping = True
        self._refresh_views()
        self._run_worker(self._detach(), "detach")

    async def _detach(self) -> None:
        try:
            await self.remote.close()
        finally:
            self._exit_now()
