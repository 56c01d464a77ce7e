"""Optional CloudEvents 1.0 emission of what the scheduler does, to HTTP and/or a file.

Enabled by the ``cloudevents:`` section of the config (core.config.CloudEventsSettings)::

    cloudevents:
      http: {url: "https://events.example/ingest", timeout: 5, max_queue: 1000, retries: 3}
      file: /var/lib/vmsh-scheduler/cloudevents.jsonl
      source: /vaultmesh/scheduler/prod-1
      types: [anchor.succeeded, anchor.failed, receipt.confirmed, config.reloaded, control.command]

Events, from the bus (core.events), and their CloudEvents ``type``:

| bus event          | type                                          | subject            |
|--------------------|-----------------------------------------------|--------------------|
| `AnchorSucceeded`  | `org.vaultmesh.scheduler.anchor.succeeded`    | `<ns>/<cadence>`   |
| `AnchorFailed`     | `org.vaultmesh.scheduler.anchor.failed`       | `<ns>/<cadence>`   |
| `ReceiptConfirmed` | `org.vaultmesh.scheduler.receipt.confirmed`   | `<ns>/<cadence>`   |
| `ConfigApplied`    | `org.vaultmesh.scheduler.config.reloaded`     | (none)             |
| `ControlCommand`   | `org.vaultmesh.scheduler.control.command`     | the command        |

Each event is one JSON object (JSON event format): ``specversion`` "1.0", ``id`` (a
random UUID), ``source``, ``type``, ``subject``, ``time`` (RFC 3339, UTC),
``datacontenttype`` "application/json" and ``data``: names, roots, times, error kinds
and scrubbed messages, never settings, keys, credentials or file contents.

Delivery never holds up anchoring. The bus subscriber only converts the event and puts
it, with ``put_nowait``, on a bounded queue per sink; a full queue drops the event. One
worker task per sink drains its queue:

- HTTP, structured content mode: ``POST`` with ``Content-Type:
  application/cloudevents+json; charset=utf-8``. A 2xx is delivered; a connection error,
  a timeout, 408, 429 or 5xx is retried ``retries`` times with exponential backoff
  (0.5 s doubling, at most 30 s, with jitter); another 4xx is not retried.
- File: one JSON object per line, appended and flushed.

Every event not delivered is counted in ``vmsh_cloudevents_dropped_total{sink, reason}``
(reason: ``queue_full``, ``send_failed``, ``rejected``, ``write_failed``, ``shutdown``);
deliveries in ``vmsh_cloudevents_sent_total{sink}``. Both live on the registry given
to `start_cloudevents` (the scheduler's Metrics registry).

Entry point: ``closer = await start_cloudevents(runtime, settings, registry)``; ``await
closer()`` stops listening, drains the queues for up to `DRAIN_SECONDS`, then stops the
workers (what is left is counted as ``shutdown``). With no settings, or no sink, nothing
starts and the closer does nothing. The settings are read at start: a reload that
changes the ``cloudevents`` section takes effect at the next start.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter

from core.clock import iso_utc
from core.events import (
    AnchorFailed,
    AnchorSucceeded,
    ConfigApplied,
    ControlCommand,
    Event,
    EventBus,
    ReceiptConfirmed,
)
from core.jobs import JobKey

if TYPE_CHECKING:
    from core.config import CloudEventsHttp, CloudEventsSettings
    from core.observe.logs import Log
    from core.runtime import Runtime

SPECVERSION = "1.0"
TYPE_PREFIX = "org.vaultmesh.scheduler."
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
DATA_CONTENT_TYPE = "application/json"
DRAIN_SECONDS = 2.0
FILE_QUEUE = 10_000
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_MESSAGE = 500

Closer = Callable[[], Awaitable[None]]

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@")
_URL_QUERY = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s?#]*)\?[^\s#]*")


def scrub(text: str) -> str:
    """Drop a URL's user:password@ and ?query (where tokens hide) from a message; cap it."""
    text = _URL_USERINFO.sub(r"\1", text)
    text = _URL_QUERY.sub(r"\1?…", text)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _job(job: JobKey) -> dict[str, str]:
    return {"namespace": job.namespace, "cadence": job.cadence}


def to_cloudevent(event: Event, source: str) -> dict[str, Any] | None:
    """The CloudEvent (a JSON-ready dict) for a bus event, or None if it is not emitted."""
    subject: str | None = None
    if isinstance(event, AnchorSucceeded):
        short = "anchor.succeeded"
        subject = str(event.job)
        data: dict[str, Any] = {
            **_job(event.job),
            "target": event.target,
            "root": event.root,
            "receipt_status": event.status,
            "duration_seconds": round(max(0.0, event.duration), 6),
        }
    elif isinstance(event, AnchorFailed):
        short = "anchor.failed"
        subject = str(event.job)
        data = {
            **_job(event.job),
            "target": event.target,
            "kind": event.kind,
            "message": scrub(event.message),
            "duration_seconds": round(max(0.0, event.duration), 6),
        }
    elif isinstance(event, ReceiptConfirmed):
        short = "receipt.confirmed"
        subject = str(event.job)
        data = {**_job(event.job), "target": event.target, "receipt": Path(event.path).name}
    elif isinstance(event, ConfigApplied):
        short = "config.reloaded"
        data = {
            "config_hash": event.config_hash,
            "added": [str(k) for k in event.added],
            "removed": [str(k) for k in event.removed],
            "changed": [str(k) for k in event.changed],
        }
    elif isinstance(event, ControlCommand):  # the audit log's entry (core/control_server.py)
        short = "control.command"
        subject = event.command
        data = {
            "command": event.command,
            "uid": event.uid,
            "user": event.user,
            "arguments": event.arguments,
            "status": event.status,
        }
    else:
        return None
    ce: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": str(uuid.uuid4()),
        "source": source,
        "type": TYPE_PREFIX + short,
    }
    if subject is not None:
        ce["subject"] = subject
    ce["time"] = iso_utc(event.at)
    ce["datacontenttype"] = DATA_CONTENT_TYPE
    ce["data"] = data
    return ce


def short_type(ce: dict[str, Any]) -> str:
    return str(ce["type"]).removeprefix(TYPE_PREFIX)


def encode(ce: dict[str, Any]) -> bytes:
    return json.dumps(ce, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _redacted_url(url: str) -> str:
    """A URL fit for a log line: no user:password, no query."""
    import httpx  # only with CloudEvents configured: the import costs ~6 MB

    parts = httpx.URL(url)
    return str(parts.copy_with(userinfo=b"", query=None, fragment=None))


class _Sink:
    name = "sink"

    def __init__(self, emitter: CloudEventsEmitter, maxsize: int) -> None:
        self.emitter = emitter
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=maxsize)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"cloudevents-{self.name}")

    async def _run(self) -> None:
        while True:
            ce = await self.queue.get()
            try:
                ok, reason = await self.deliver(ce)
            except asyncio.CancelledError:
                self.emitter.drop(self.name, "shutdown")
                self.queue.task_done()
                raise
            except Exception as exc:  # never let a sink die on one event
                ok, reason = False, "send_failed"
                self.emitter.warn(self.name, f"unexpected error: {exc!r}")
            if ok:
                self.emitter.sent.labels(self.name).inc()
            else:
                self.emitter.drop(self.name, reason)
            self.queue.task_done()

    async def deliver(self, ce: dict[str, Any]) -> tuple[bool, str]:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class HttpSink(_Sink):
    name = "http"

    def __init__(self, emitter: CloudEventsEmitter, settings: CloudEventsHttp, rng: random.Random) -> None:
        super().__init__(emitter, settings.max_queue)
        self.url = settings.url
        self.retries = settings.retries
        self.rng = rng
        import httpx  # only with an HTTP sink configured: the import costs ~6 MB

        self.client = httpx.AsyncClient(
            timeout=settings.timeout, follow_redirects=False, headers={"Content-Type": CONTENT_TYPE}
        )
        self.failing = False

    def backoff(self, attempt: int) -> float:
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2.0**attempt)
        return delay * (0.5 + self.rng.random() / 2)

    async def deliver(self, ce: dict[str, Any]) -> tuple[bool, str]:
        import httpx  # loaded by __init__ already

        body = encode(ce)
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff(attempt - 1))
            try:
                response = await self.client.post(self.url, content=body)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
                continue
            if 200 <= response.status_code < 300:
                if self.failing:
                    self.failing = False
                    self.emitter.info(self.name, "receiver reachable again")
                return True, ""
            problem = f"HTTP {response.status_code}"
            if response.status_code not in RETRY_STATUSES:
                self.emitter.warn(self.name, f"receiver refused an event ({problem}); not retried")
                return False, "rejected"
        if not self.failing:
            self.failing = True
            self.emitter.warn(
                self.name,
                f"could not deliver an event after {self.retries + 1} attempt(s) ({problem}); "
                "dropping until the receiver answers",
            )
        return False, "send_failed"

    async def close(self) -> None:
        await self.client.aclose()


class FileSink(_Sink):
    name = "file"

    def __init__(self, emitter: CloudEventsEmitter, path: Path) -> None:
        super().__init__(emitter, FILE_QUEUE)
        self.path = Path(path)
        self.fh: IO[bytes] | None = None
        self.failing = False

    async def deliver(self, ce: dict[str, Any]) -> tuple[bool, str]:
        try:
            if self.fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.fh = open(self.path, "ab")  # noqa: SIM115 - kept open for the sink's life
            self.fh.write(encode(ce) + b"\n")
            self.fh.flush()
        except OSError as exc:
            if not self.failing:
                self.failing = True
                self.emitter.warn(self.name, f"cannot write {self.path}: {exc.strerror or exc!r}")
            if self.fh is not None:
                try:
                    self.fh.close()
                finally:
                    self.fh = None
            return False, "write_failed"
        self.failing = False
        return True, ""

    async def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class CloudEventsEmitter:
    """Bus subscriber + one bounded queue and worker per sink. See the module docstring."""

    def __init__(
        self,
        bus: EventBus,
        settings: CloudEventsSettings,
        registry: CollectorRegistry,
        *,
        log: Log | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.registry = registry
        self.log = log
        self.source = settings.source
        self.types = frozenset(settings.types)
        self.dropped = Counter(
            "vmsh_cloudevents_dropped",
            "CloudEvents not delivered, by sink (http|file) and reason.",
            ("sink", "reason"),
            registry=registry,
        )
        self.sent = Counter(
            "vmsh_cloudevents_sent", "CloudEvents delivered, by sink (http|file).", ("sink",), registry=registry
        )
        self.sinks: list[_Sink] = []
        if settings.http is not None:
            self.sinks.append(HttpSink(self, settings.http, rng or random.Random()))
        if settings.file is not None:
            self.sinks.append(FileSink(self, settings.file))
        for sink in self.sinks:
            self.sent.labels(sink.name)
            for reason in ("queue_full", "send_failed", "shutdown"):
                self.dropped.labels(sink.name, reason)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._unsubscribe: Callable[[], None] | None = None

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers and subscribe to the bus (call on the engine's running loop)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        for sink in self.sinks:
            sink.start()
        self._unsubscribe = self.bus.subscribe(self.handle)

    async def close(self, drain: float = DRAIN_SECONDS) -> None:
        """Stop listening, give the queues `drain` seconds to empty, then stop the workers."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        pending = [s.queue.join() for s in self.sinks if s.task is not None]
        if pending:
            try:
                await asyncio.wait_for(asyncio.gather(*pending), timeout=drain)
            except TimeoutError:
                pass
        lost = 0
        for sink in self.sinks:
            if sink.task is not None:
                sink.task.cancel()
                await asyncio.gather(sink.task, return_exceptions=True)
                sink.task = None
            while not sink.queue.empty():
                sink.queue.get_nowait()
                sink.queue.task_done()
                self.drop(sink.name, "shutdown")
                lost += 1
            await sink.close()
        if lost:
            self.warn("all", f"{lost} event(s) not delivered at shutdown")
        for metric in (self.dropped, self.sent):
            try:
                self.registry.unregister(metric)
            except KeyError:
                pass

    # ----- the bus side: cheap, never blocks -----------------------------------------------------

    def handle(self, event: Event) -> None:
        ce = to_cloudevent(event, self.source)
        if ce is None or short_type(ce) not in self.types:
            return
        if self._loop is not None and threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self._enqueue, ce)
        else:
            self._enqueue(ce)

    def _enqueue(self, ce: dict[str, Any]) -> None:
        for sink in self.sinks:
            try:
                sink.queue.put_nowait(ce)
            except asyncio.QueueFull:
                self.drop(sink.name, "queue_full")

    # ----- accounting ---------------------------------------------------------------------------

    def drop(self, sink: str, reason: str) -> None:
        self.dropped.labels(sink, reason).inc()

    def warn(self, sink: str, msg: str) -> None:
        if self.log is not None:
            self.log.warning(f"cloudevents: {msg}", sink=sink)

    def info(self, sink: str, msg: str) -> None:
        if self.log is not None:
            self.log.info(f"cloudevents: {msg}", sink=sink)


async def _nothing() -> None:
    return None


async def start_cloudevents(
    runtime: Runtime,
    settings: CloudEventsSettings | None = None,
    registry: CollectorRegistry | None = None,
    *,
    rng: random.Random | None = None,
) -> Closer:
    """Start emitting for `runtime` (its bus and log); returns an async closer.

    `settings` defaults to ``runtime.loaded.config.cloudevents``; `registry` is where the
    ``vmsh_cloudevents_*`` counters go (pass ``metrics.registry``). Disabled (no settings,
    no sink, or no registry given and none wanted): returns a closer that does nothing.
    """
    if settings is None:
        settings = getattr(runtime.loaded.config, "cloudevents", None)
    if settings is None or (settings.http is None and settings.file is None):
        return _nothing
    emitter = CloudEventsEmitter(
        runtime.bus,
        settings,
        registry if registry is not None else CollectorRegistry(),
        log=getattr(runtime, "log", None),
        rng=rng,
    )
    emitter.start()
    where = []
    if settings.http is not None:
        where.append(f"http {_redacted_url(settings.http.url)}")
    if settings.file is not None:
        where.append(f"file {settings.file}")
    emitter.info("all", "emitting " + ", ".join(where))

    async def closer() -> None:
        await emitter.close()

    closer.emitter = emitter  # type: ignore[attr-defined]  # for tests and the dashboard
    return closer


__all__ = ["CloudEventsEmitter", "start_cloudevents", "to_cloudevent", "scrub", "CONTENT_TYPE"]
