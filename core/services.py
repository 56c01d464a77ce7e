"""What runs beside the engine in both run modes, started and stopped as one.

- metrics fed from the event bus (core.observe.metrics),
- the HTTP server for /metrics, /health, /livez, /readyz (core.observe.http),
- the config file watcher (core.observe.watch),
- optional CloudEvents emission (core.observe.cloudevents),
- the confirmation tracker for pending receipts (core.confirmations).

Headless treats an HTTP address it cannot bind as fatal (exit 2: two schedulers must not
fight over a port unnoticed); the dashboard logs it and keeps running, since the operator
is looking at the same facts on screen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from core.confirmations import ConfirmationTracker
from core.observe.cloudevents import start_cloudevents
from core.observe.http import HttpServer, ListenError, start_http
from core.observe.metrics import Metrics
from core.observe.watch import start_watch

Closer = Callable[[], Awaitable[None]]


class Services:
    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.metrics: Metrics | None = None
        self.http: HttpServer | None = None
        # Why /metrics and /health are off (the address could not be bound), or None.
        # The dashboard shows it in its header.
        self.http_error: str | None = None
        self.tracker: ConfirmationTracker | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._closers: list[Closer] = []

    async def start(self, *, http_required: bool = True, watch: bool = True) -> Services:
        """Start everything on the running loop. Raises ListenError when `http_required`
        and the HTTP address cannot be bound (nothing is left running then)."""
        runtime = self.runtime
        self.metrics = Metrics(runtime.bus, engine=runtime.engine, receipts=runtime.receipts)
        try:
            self.http = await start_http(runtime, self.metrics)
            runtime.log.info("serving /metrics, /health, /livez, /readyz", url=self.http.url)
        except ListenError as exc:
            if http_required:
                self.metrics.close()
                raise
            self.http_error = str(exc)
            runtime.log.error("metrics and health endpoints are off", error=str(exc))
        self._closers.append(
            await start_cloudevents(runtime, registry=self.metrics.registry)
        )
        if watch:
            self._tasks.append(start_watch(runtime, self._stop))
        self.tracker = ConfirmationTracker(
            runtime.receipts,
            runtime.backends,
            runtime.bus,
            runtime.clock,
            runtime.log,
            requeue=lambda key: runtime.engine.requeue(
                key, "a reorg dropped the anchoring transaction"
            ),
        )
        self._tasks.append(
            asyncio.get_running_loop().create_task(self.tracker.run(), name="confirmations")
        )
        return self

    async def close(self) -> None:
        """Stop in reverse order of importance: watchers first, the HTTP server last, so
        /health reports the shutdown until the very end."""
        self._stop.set()
        if self.tracker is not None:
            self.tracker.stop()
        for task in self._tasks:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=2.0)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
            except Exception as exc:
                self.runtime.log.error("background task failed", task=task.get_name(), error=repr(exc))
        for closer in self._closers:
            await closer()
        if self.http is not None:
            await self.http.close()
        if self.metrics is not None:
            self.metrics.close()
