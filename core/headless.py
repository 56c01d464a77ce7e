"""`vmsh-scheduler --no-ui`: the engine, JSON logs on stdout, metrics and health over HTTP.

Exit codes: 0 stopped by SIGTERM/SIGINT; 1 the engine failed unexpectedly; 2 it could
not start (invalid config, data dir locked by another scheduler, HTTP port taken).
SIGHUP reloads the configuration; an invalid one is logged and the old one stays live.
Signals that arrive during start are recorded by core/signals.py and acted on here: a
SIGTERM/SIGINT stops the scheduler as soon as its loop runs, a SIGHUP reloads then.
The dashboard (tui/app.py, run_dashboard) exits with the same codes, except that there
SIGHUP means its terminal is gone: it stops within 5 s and exits 0, as for any lost
terminal (tui/terminal.py); without a terminal it refuses to start (exit 2).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from pathlib import Path

from core.config import LoadedConfig
from core.observe.http import ListenError
from core.observe.logs import JsonLineWriter
from core.runtime import CannotStart, Loader, Runtime
from core.services import Services
from core.signals import StartupSignals
from core.text import printable

EXIT_OK, EXIT_FAILED, EXIT_CANNOT_START = 0, 1, 2
GRACE_SECONDS = 10.0
PORT_HINT = (
    "stop the process that holds it, or choose a free address: http.listen in the config, "
    "or METRICS_PORT=<port> in the environment"
)


def run_headless(
    loaded: LoadedConfig, loader: Loader | None = None, startup: StartupSignals | None = None
) -> int:
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
    """Run the engine and the HTTP endpoints until `stop` is set or a signal arrives."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload_in_background)  # parsed off the loop
    if startup is not None and startup.stop is not None:  # arrived before the loop's handlers
        runtime.log.info("stopped during start; nothing was anchored", signal=startup.stop.name)
        _remove_signal_handlers(loop)
        await runtime.close()
        return EXIT_OK
    if startup is not None and startup.reload:
        loop.call_soon(runtime.reload_in_background)
    try:
        services = await Services(runtime).start(http_required=True)
    except ListenError as exc:
        print(f"vmsh-scheduler: {printable(str(exc), lines=True)}\n  {PORT_HINT}", file=sys.stderr)
        runtime.log.error("cannot start", error=str(exc), hint=PORT_HINT)
        _remove_signal_handlers(loop)
        await runtime.close()
        return EXIT_CANNOT_START
    runtime.announce()  # only once it serves: a scheduler that cannot start never says it did
    gc.freeze()  # the config, jobs and imports live as long as the process: skip them in full GCs
    engine = loop.create_task(runtime.engine.run(), name="engine")
    stopper = loop.create_task(stop.wait(), name="stop")
    done, _ = await asyncio.wait({engine, stopper}, return_when=asyncio.FIRST_COMPLETED)
    code = EXIT_OK
    if engine in done and engine.exception() is not None:
        runtime.log.error("engine failed", error=repr(engine.exception()))
        code = EXIT_FAILED
    stopper.cancel()
    runtime.log.info("shutting down", grace_seconds=GRACE_SECONDS)
    await runtime.engine.stop(GRACE_SECONDS)
    if not engine.done():
        await asyncio.gather(engine, return_exceptions=True)
    await services.close()
    await runtime.close()
    runtime.log.info("stopped", in_flight=len(runtime.engine.in_flight()))
    _remove_signal_handlers(loop)
    return code


def _remove_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)
