"""What the engine's parts share: its clock, events, log, stores, writer and job table,
the intents open here, the tasks under way, and the few rules all of them use (a write on
the writer thread, a storage failure reported, the jobs whose outcome is not settled)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from core.anchors.base import Backend
from core.backoff import BackoffPolicy
from core.clock import SteadyClock
from core.engine.table import JobTable
from core.errors import StorageError
from core.events import EventBus, StorageFailed
from core.jobs import JobKey
from core.observe.logs import Log
from core.sources import Batch
from core.store import Claims, Intent, JournalRepo, ReceiptRepo, StateRepo
from core.writer import DiskWriter

_T = TypeVar("_T")
BackendFor = Callable[[str], Backend]


class Context:
    def __init__(
        self,
        *,
        clock: SteadyClock,
        bus: EventBus,
        log: Log,
        policy: BackoffPolicy,
        writer: DiskWriter,
        table: JobTable,
        backend_for: BackendFor,
        state_store: StateRepo,
        journal: JournalRepo,
        receipts: ReceiptRepo,
        claims: Claims,
        read_batch: Callable[[Path], Batch],
        lease: float,
        tick: float,
        config_hash: str,
    ) -> None:
        self.clock = clock
        self.bus = bus
        self.log = log
        self.policy = policy
        self.writer = writer
        self.table = table
        self.backend_for = backend_for
        self.state_store = state_store
        self.journal = journal
        self.receipts = receipts
        # Several schedulers on one store: a job is anchored only under this replica's lease
        # (claimed in core/engine/leases.py), and its state comes from the store at claim time.
        self.claims = claims
        self.read_batch = read_batch
        self.lease = lease
        self.tick = tick
        self.config_hash = config_hash
        self.open: dict[str, Intent] = {}  # intents opened or adopted here, not yet closed
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.claim_refusal: str | None = None  # why not to claim jobs now (core/cluster.py)
        self._named: dict[str, frozenset[JobKey]] = {}  # the jobs of the open intents, by id
        # The start's receipt folders being made (core/engine/scheduler.py prepare_receipts):
        # receipts are written once it ended, not into folders it is making.
        self.receipt_folders: asyncio.Task[None] | None = None

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` as one of the engine's tasks (awaited by settle and stop)."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def folders_made(self) -> None:
        """Wait for the start's receipt folders, if they are being made."""
        making = self.receipt_folders
        if making is not None and not making.done():
            await asyncio.wait([making])

    async def write(self, op: str, path: Any, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking write on the writer thread; a failure is reported once, then raised."""
        try:
            return await self.writer.run(op, path, fn, *args)
        except StorageError as exc:
            self.storage_failed(exc)
            raise

    def storage_failed(self, exc: StorageError) -> None:
        self.bus.publish(
            StorageFailed(at=self.clock.now(), op=exc.op, path=exc.path, errno=exc.errno, message=str(exc))
        )
        self.log.error("storage write failed", op=exc.op, path=exc.path, errno=exc.errno, error=str(exc))

    def holding(self, closing: Sequence[Intent] = ()) -> frozenset[JobKey]:
        """Jobs whose outcome is not settled here yet: in flight, holding an attestation,
        or named by an intent still open (other than `closing`, which the state being saved
        accounts for). Their leases are renewed and never released."""
        jobs = set(self.table.flight) | set(self.table.held_keys())
        settled = {intent.id for intent in closing}
        named: dict[str, frozenset[JobKey]] = {}
        for intent in self.open.values():
            keys = self._named.get(intent.id)
            if keys is None:  # parsed once per intent (10,000 entries: 40 ms each time)
                keys = frozenset(intent.jobs)
            named[intent.id] = keys
            if intent.id not in settled:
                jobs.update(keys)
        self._named = named
        return frozenset(jobs)

    def soon(self) -> float:
        """When to look again at a job left to another replica: a third of a lease (a
        heartbeat) from now, or the tick if shorter."""
        return self.clock.now() + min(self.tick, self.lease / 3)
