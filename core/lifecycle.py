"""One run of the scheduler, for both run modes: what starts, in which order, how it stops.

`running(runtime, http_required=...)` is the one place that order is written. Each part
registers its own teardown on one `AsyncExitStack` as soon as it has started (as
APScheduler 4 does), so leaving the block stops them in the reverse order, whatever
ended the run (a stop request, an engine failure, an exception, a cancelled task):

  start                                       stop (reverse)
  1. the backends are open (Runtime)          5. backends closed (runtime.close)
  2. services (core/services.py): metrics,    4. tracker, watcher, CloudEvents, HTTP,
     HTTP, CloudEvents, watcher, tracker         metrics
  3. "scheduler started" (only once it          -
     serves), gc.freeze(), collector on
  4. the engine task                          3. engine stopped: in-flight anchors get
                                                 `run.grace`, the state is saved

Headless (cli/headless.py) waits in the block for a signal or the engine's end; the
dashboard (tui/host.py InProcessHost) for quit, a signal or its terminal's loss. What each mode does
around the block stays its own: the data-dir lock (Runtime.open / release), its signal
handlers, its exit codes, the dashboard's watchdog.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

from core.errors import StorageError
from core.services import Services

if TYPE_CHECKING:
    from core.runtime import Runtime

GRACE_SECONDS = 10.0  # in-flight anchors get this long at a stop, unless the mode says less
# A full (generation 2) collection every 100 young ones instead of 10: during a
# 10,000-namespace first pass each full one walks ~150,000 objects (80-260 ms on the loop,
# the slowest /livez answers). Cycles are still collected; see bench/livez_bench.py.
GC_THRESHOLDS = (700, 10, 100)


class Run:
    """The scheduler while it runs: its services, the engine task, and how to stop it."""

    def __init__(self, runtime: Runtime, grace: float) -> None:
        self.runtime = runtime
        self.grace = grace
        self.services: Services | None = None  # None in a run that starts nothing
        self.engine: asyncio.Task[None] | None = None
        self._engine_stopped = False

    async def wait(self, stop: asyncio.Event, *, or_engine_end: bool = True) -> None:
        """Until `stop` is set, or (with `or_engine_end`) the engine task has ended."""
        stopper = asyncio.ensure_future(stop.wait())
        waiting: set[asyncio.Future[Any]] = {stopper}
        if or_engine_end and self.engine is not None:
            waiting.add(self.engine)
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()

    @property
    def failure(self) -> BaseException | None:
        """What ended the engine task, if it failed."""
        engine = self.engine
        if engine is None or not engine.done() or engine.cancelled():
            return None
        return engine.exception()

    @property
    def refused(self) -> StorageError | None:
        """The engine failed at recovery (a journal folder it cannot read): anchoring without
        knowing what is in flight could pay twice, so this is a refusal to start."""
        failure = self.failure
        if isinstance(failure, StorageError) and failure.op == "recover":
            return failure
        return None

    async def stop_engine(self) -> None:
        """Stop the engine (in-flight anchors get `grace`, the rest stay journaled) and save
        its state. Once only: leaving `running()` calls it if the mode has not."""
        if self._engine_stopped:
            return
        self._engine_stopped = True
        await self.runtime.engine.stop(self.grace)
        if self.engine is not None and not self.engine.done():
            await asyncio.gather(self.engine, return_exceptions=True)

    def _engine_ended(self, task: asyncio.Task[None]) -> None:
        if self.refused is not None:
            self.runtime.log.error("cannot start", error=str(self.refused))
        elif self.failure is not None:
            self.runtime.log.error("engine failed", error=repr(self.failure))


@asynccontextmanager
async def running(
    runtime: Runtime, *, http_required: bool, grace: float = GRACE_SECONDS, start: bool = True
) -> AsyncIterator[Run]:
    """Start the services, say so, start the engine; on leaving, stop all in reverse.

    `http_required`: an HTTP address that cannot be bound raises ListenError (nothing is
    left running, nothing was announced) instead of being logged. `start=False` starts
    nothing but keeps the teardown (the engine's state saved, the backends closed): the
    dashboard's tests drive the engine themselves.
    """
    async with AsyncExitStack() as stack:
        stack.push_async_callback(runtime.close)
        run = Run(runtime, grace)
        if start:
            run.services = await Services(runtime).start(stack, http_required=http_required)
            runtime.announce()  # only once it serves: a scheduler that cannot start never says it did
            gc.freeze()  # the config, jobs, services and imports live as long as the run
            gc.set_threshold(*GC_THRESHOLDS)
            gc.enable()  # headless starts with it off (cli/headless.py): on for the run
        # Before the services close (the stack runs in reverse); also in a run that never
        # started the engine, whose state is saved all the same.
        stack.push_async_callback(run.stop_engine)
        if start:
            run.engine = asyncio.get_running_loop().create_task(runtime.engine.run(), name="engine")
            run.engine.add_done_callback(run._engine_ended)
        yield run
