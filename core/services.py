"""What runs beside the engine in both run modes, each started with its own teardown.

- metrics fed from the event bus (core.observe.metrics), and the signers' balances read
  after each anchor (core.observe.wallets),
- the HTTP server for /metrics, /health, /livez, /readyz (core.observe.http),
- the control socket for `ctl` and attached dashboards (core.control_server); one it
  cannot serve is logged and left off, in both modes: anchoring goes on,
- optional CloudEvents emission (core.observe.cloudevents),
- the config file watcher (core.observe.watch),
- the confirmation tracker for pending receipts (core.confirmations),
- the freed heap given back after a burst of anchors (core.heap).

`Services.start(stack)` starts them in that order and registers each one's teardown on
the run's `AsyncExitStack` (core/lifecycle.py) as soon as it runs, so they stop in the
reverse order: the tracker and the watcher first, the HTTP server late so /health reports
the shutdown until the very end, metrics last; a start that fails half-way stops what
had started. A new service is one start here plus its teardown on the stack.

Headless treats an HTTP address it cannot bind as fatal (exit 2: two schedulers must not
fight over a port unnoticed); the dashboard logs it and keeps running, since the operator
is looking at the same facts on screen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from core.confirmations import ConfirmationTracker
from core.control_server import ControlServer, ControlSocketError, start_control
from core.heap import HeapTrim, malloc_trim
from core.observe.cloudevents import start_cloudevents
from core.observe.http import HttpServer, ListenError, start_http
from core.observe.metrics import Metrics
from core.observe.wallets import WalletWatch
from core.observe.watch import start_watch

if TYPE_CHECKING:
    from core.runtime import Runtime

TASK_STOP_SECONDS = 2.0  # a background task that has not ended this long after its stop is cancelled


class Services:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.metrics: Metrics | None = None
        self.http: HttpServer | None = None
        # Why /metrics and /health are off (the address could not be bound), or None.
        # The dashboard shows it in its header.
        self.http_error: str | None = None
        self.tracker: ConfirmationTracker | None = None
        self.control: ControlServer | None = None
        # Why the control socket is off (core/control_server.py), or None.
        self.control_error: str | None = None

    async def start(self, stack: AsyncExitStack, *, http_required: bool = True, watch: bool = True) -> Services:
        """Start everything on the running loop, each teardown on `stack`. Raises ListenError
        when `http_required` and the HTTP address cannot be bound (the caller's stack then
        stops what had started)."""
        runtime = self.runtime
        self.metrics = metrics = Metrics(runtime.bus, engine=runtime.engine, receipts=runtime.receipts)
        stack.callback(metrics.close)
        runtime.wallets = wallets = WalletWatch(runtime.bus, runtime.log, runtime.backends)
        stack.callback(wallets.close)
        try:
            self.http = await start_http(runtime, metrics)
            stack.push_async_callback(self.http.close)
            runtime.log.info("serving /metrics, /health, /livez, /readyz", url=self.http.url)
        except ListenError as exc:
            if http_required:
                raise
            self.http_error = str(exc)
            runtime.log.error("metrics and health endpoints are off", error=str(exc))
        try:
            self.control = await start_control(runtime)
            stack.push_async_callback(self.control.close)
            runtime.log.info("serving the control API", socket=str(self.control.path))
        except ControlSocketError as exc:  # control off; anchoring goes on (docs/control-api.md)
            self.control_error = str(exc)
            runtime.log.error("control socket is off", error=str(exc))
        stack.push_async_callback(await start_cloudevents(runtime, registry=metrics.registry))
        if watch:
            stop_watching = asyncio.Event()
            watcher = start_watch(runtime, stop_watching)
            stack.push_async_callback(self._stop_task, watcher, stop_watching.set)
        self.tracker = tracker = ConfirmationTracker(
            runtime.receipts,
            runtime.backends,
            runtime.bus,
            runtime.clock,
            runtime.log,
            requeue=lambda key: runtime.engine.requeue(key, "a reorg dropped the anchoring transaction"),
        )
        tracking = asyncio.get_running_loop().create_task(tracker.run(), name="confirmations")
        stack.push_async_callback(self._stop_task, tracking, tracker.stop)
        heap = HeapTrim(runtime.bus, lambda: bool(runtime.engine.in_flight()), malloc_trim())
        trimming = asyncio.get_running_loop().create_task(heap.run(), name="heap trim")
        stack.push_async_callback(self._stop_task, trimming, heap.stop)
        store = runtime.store
        if store.db is not None and store.replica is not None:  # cluster mode (core/cluster.py)
            from core.cluster import Cluster

            cluster = Cluster(runtime, store.db, store.replica)
            await cluster.start()
            runtime.cluster = cluster
            stack.push_async_callback(cluster.stop)
            runtime.log.info("cluster mode", store=store.display, replica=store.replica)
        return self

    async def _stop_task(self, task: asyncio.Task[Any], stop: Callable[[], object]) -> None:
        """Ask `task` to stop, give it TASK_STOP_SECONDS, then cancel it."""
        stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=TASK_STOP_SECONDS)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        except Exception as exc:
            self.runtime.log.error("background task failed", task=task.get_name(), error=repr(exc))
