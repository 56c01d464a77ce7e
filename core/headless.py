"""`vmsh-scheduler --no-ui`: the engine, JSON logs on stdout, metrics and health over HTTP.

Exit codes: 0 stopped by SIGTERM/SIGINT; 1 the engine failed unexpectedly; 2 it could
not start (invalid config, data dir locked by another scheduler, HTTP port taken).
SIGHUP reloads the configuration; an invalid one is logged and the old one stays live.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys

from core.config import LoadedConfig
from core.observe.http import ListenError
from core.observe.logs import JsonLineWriter
from core.runtime import CannotStart, Loader, Runtime
from core.services import Services

EXIT_OK, EXIT_FAILED, EXIT_CANNOT_START = 0, 1, 2
GRACE_SECONDS = 10.0


def run_headless(loaded: LoadedConfig, loader: Loader | None = None) -> int:
    try:
        runtime = Runtime.open(loaded, loader=loader)
    except CannotStart as exc:
        print(f"vmsh-scheduler: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    writers = [JsonLineWriter(sys.stdout)]
    log_cfg = loaded.config.log
    if log_cfg.file is not None:
        writers.append(JsonLineWriter(path=log_cfg.file, max_bytes=log_cfg.max_bytes, backups=log_cfg.backups))
    for writer in writers:
        runtime.bus.subscribe(writer)
    try:
        return asyncio.run(serve(runtime))
    finally:
        runtime.release()
        for writer in writers:
            writer.close()


async def serve(runtime: Runtime, stop: asyncio.Event | None = None) -> int:
    """Run the engine and the HTTP endpoints until `stop` is set or a signal arrives."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload)
    runtime.announce()
    try:
        services = await Services(runtime).start(http_required=True)
    except ListenError as exc:
        print(f"vmsh-scheduler: {exc}", file=sys.stderr)
        runtime.log.error("cannot start", error=str(exc))
        _remove_signal_handlers(loop)
        await runtime.close()
        return EXIT_CANNOT_START
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
