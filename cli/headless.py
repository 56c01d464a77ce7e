"""`vmsh-scheduler --no-ui`: the engine, JSON logs on stdout, metrics and health over HTTP.

Exit codes: 0 stopped by SIGTERM/SIGINT; 1 the engine failed unexpectedly; 2 it could
not start (invalid config, data dir locked by another scheduler, a folder under it that
cannot be written or listed, a journal that cannot be read, HTTP port taken). What starts
and stops, in which order, is core/lifecycle.py, shared with the dashboard.
SIGHUP reloads the configuration; an invalid one is logged and the old one stays live.
Signals that arrive during start are recorded by core/signals.py and acted on here: a
SIGTERM/SIGINT stops the scheduler as soon as its loop runs, a SIGHUP reloads then.
The dashboard (cli/dashboard.py, run_dashboard) exits with the same codes, except that there
SIGHUP means its terminal is gone: it stops within 5 s and exits 0, as for any lost
terminal (tui/terminal.py); without a terminal it refuses to start (exit 2).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from core.config import LoadedConfig
from core.heap import no_collection, one_malloc_arena
from core.lifecycle import GRACE_SECONDS, running
from core.observe.http import ListenError
from core.observe.logs import JsonLineWriter
from core.runtime import CannotStart, Loader, Runtime
from core.signals import StartupSignals
from core.text import printable

EXIT_OK, EXIT_FAILED, EXIT_CANNOT_START = 0, 1, 2
PORT_HINT = (
    "stop the process that holds it, or choose a free address: http.listen in the config, "
    "or METRICS_PORT=<port> in the environment"
)
JOURNAL_HINT = (
    "fix the folder's permissions or mount (the scheduler must list it to know which "
    "anchors were in flight), then start again"
)


def run_headless(
    loaded: LoadedConfig, loader: Loader | None = None, startup: StartupSignals | None = None
) -> int:
    one_malloc_arena()  # before any thread of the run: core/heap.py
    writers = [JsonLineWriter(sys.stdout)]
    log_cfg = loaded.config.log
    if log_cfg.file is not None:
        try:
            writers.append(
                JsonLineWriter(path=log_cfg.file, max_bytes=log_cfg.max_bytes, backups=log_cfg.backups)
            )
        except OSError as exc:
            where = Path(exc.filename or log_cfg.file)
            reason = (
                f"{where} is a file, not a folder"
                if where.exists() and not where.is_dir() and where != Path(log_cfg.file)
                else f"{exc.strerror or exc} ({where})"
            )
            message = f"cannot write the log file {log_cfg.file}: {reason}"
            print(f"vmsh-scheduler: {printable(message)}", file=sys.stderr)
            return EXIT_CANNOT_START
    # No cyclic collection while the start builds what lives as long as the run (the job
    # table, the engine, the services' series): at 100,000 namespaces the full collections
    # it set off took 1.6 s of Runtime.open's 2.9 s. running() (core/lifecycle.py) freezes
    # all of it and turns the collector on before the engine starts.
    with no_collection():
        return _open_and_serve(loaded, loader, startup, writers)


def _open_and_serve(
    loaded: LoadedConfig, loader: Loader | None, startup: StartupSignals | None, writers: list[JsonLineWriter]
) -> int:
    try:
        runtime = Runtime.open(loaded, loader=loader)
    except CannotStart as exc:
        print(f"vmsh-scheduler: {printable(str(exc), lines=True)}", file=sys.stderr)
        for writer in writers[1:]:
            writer.close()
        return EXIT_CANNOT_START
    for writer in writers:
        runtime.bus.subscribe(writer)
    try:
        return asyncio.run(serve(runtime, startup=startup))
    finally:
        if startup is not None:
            startup.install()  # the loop's handlers are gone: a signal now is one more stop
        runtime.release()
        for writer in writers:
            writer.close()


async def serve(
    runtime: Runtime, stop: asyncio.Event | None = None, startup: StartupSignals | None = None
) -> int:
    """Run the scheduler (core/lifecycle.py) until `stop` is set, a signal arrives or the
    engine ends; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload_in_background)  # parsed off the loop
    try:
        if startup is not None and startup.stop is not None:  # arrived before the loop's handlers
            runtime.log.info("stopped during start; nothing was anchored", signal=startup.stop.name)
            await runtime.close()
            return EXIT_OK
        if startup is not None and startup.reload:
            loop.call_soon(runtime.reload_in_background)
        async with running(runtime, http_required=True, grace=GRACE_SECONDS) as run:
            await run.wait(stop)
            runtime.log.info("shutting down", grace_seconds=GRACE_SECONDS)
        runtime.log.info("stopped", in_flight=len(runtime.engine.in_flight()))
    except ListenError as exc:
        print(f"vmsh-scheduler: {printable(str(exc), lines=True)}\n  {PORT_HINT}", file=sys.stderr)
        runtime.log.error("cannot start", error=str(exc), hint=PORT_HINT)
        return EXIT_CANNOT_START
    finally:
        _remove_signal_handlers(loop)
    if run.refused is not None:  # a start-up refusal, as a locked data dir is
        message = f"cannot read what was in flight: {run.refused}\n  {JOURNAL_HINT}"
        print(f"vmsh-scheduler: {printable(message, lines=True)}", file=sys.stderr)
        return EXIT_CANNOT_START
    return EXIT_FAILED if run.failure is not None else EXIT_OK


def _remove_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)
