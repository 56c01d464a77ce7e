"""The confirmation tracker: moves `pending` receipts to `confirmed` once their transaction is deep
enough, and queues the job again when a reorg drops the transaction.

Every `interval` seconds (on the injected clock, so a FakeClock drives it in tests) it
reads `ReceiptStore.pending()`, and as soon as the engine announces a pending receipt
(`ReceiptWritten`) it reads that one; per distinct attestation (a group of jobs shares one
transaction: the node is asked once) it asks the target's backend
`confirmations(attestation) -> int | None`:

- depth >= `confirmations.required` of the receipt: `receipts.confirm(path, depth)` and a
  `ReceiptConfirmed` event;
- depth below it: a `ReceiptDepth` event when it changed (the dashboard shows
  observed/required), looked at again next round;
- None: the transaction is gone from the canonical chain (or was reorged into another
  block than the receipt names). The receipt stays `pending` (receipts are never
  rewritten except to `confirmed`), the log says which transaction was dropped, and
  `requeue(job)` makes the engine anchor that job again as soon as it can. Each dropped
  receipt is requeued once per tracker life;
- an error asking the node (down, refused): logged as a warning, retried next round.

Backends without a `confirmations` method (timestamp authorities: their receipts are
never pending) are left alone.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from core.anchors.base import Backend
from core.clock import Clock
from core.errors import describe
from core.events import Event, EventBus, ReceiptConfirmed, ReceiptDepth, ReceiptWritten
from core.jobs import JobKey
from core.observe.logs import Log
from core.receipts import REDUNDANT_VERSION, Receipt, ReceiptError
from core.store import ReceiptRepo

Requeue = Callable[[JobKey], None]


class ConfirmationTracker:
    def __init__(
        self,
        receipts: ReceiptRepo,
        backend_for: Callable[[str], Backend],
        bus: EventBus,
        clock: Clock,
        log: Log,
        requeue: Requeue,
        interval: float = 5.0,
    ) -> None:
        self.receipts = receipts
        self.backend_for = backend_for
        self.bus = bus
        self.clock = clock
        self.log = log
        self.requeue = requeue
        self.interval = interval
        self._dropped: set[Path] = set()
        self._written: set[Path] = set()  # pending receipts announced since the last round
        self._depth_seen: dict[Path, int] = {}  # the depth last announced of a pending receipt
        self._wake = asyncio.Event()
        self._stopping = False

    async def run(self) -> None:
        """Check every pending receipt each `interval`, until stop(). A pending receipt the
        engine has just written is checked at once, alone: an EVM receipt is written
        `pending` even when its transaction is already deep enough (one confirmation
        required), and need not wait for the next round to be confirmed."""
        unsubscribe = self.bus.subscribe(self._on_event)
        next_round = self.clock.now()
        failing: str | None = None  # the error of the last round, said once until it changes
        try:
            while not self._stopping:
                self._wake.clear()  # before the check: a receipt written during it wakes the next
                written, self._written = self._written, set()
                try:
                    if self.clock.now() >= next_round:
                        next_round = self.clock.now() + self.interval  # also after a failed round
                        await self.check_once()
                    elif written:
                        await self.check_once(written)
                    failing = None
                except Exception as exc:  # a broken round must not end tracking
                    if describe(exc) != failing:
                        failing = describe(exc)
                        self.log.error("confirmation check failed", error=failing)
                if self._stopping:
                    break
                await self.clock.sleep_until(next_round, self._wake)
        finally:
            unsubscribe()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, ReceiptWritten) and event.status == "pending":
            self._written.add(Path(event.path))
            self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def check_once(self, paths: Iterable[Path] | None = None) -> dict[str, int]:
        """One round over the pending receipts (or only those of `paths`); returns counts:
        confirmed, waiting, dropped, errors."""
        counts = {"confirmed": 0, "waiting": 0, "dropped": 0, "errors": 0}
        depths: dict[tuple[str, str], int | None | BaseException] = {}
        # Off the loop: a database store's reads wait on the network.
        pending = await asyncio.to_thread(
            self.receipts.pending if paths is None else functools.partial(_pending_of, self.receipts, list(paths))
        )
        for path, receipt in pending:
            if path in self._dropped:
                continue
            if receipt.version == REDUNDANT_VERSION:
                await self._redundant(path, receipt, depths, counts)
                continue
            target = receipt.target
            attestation = dict(receipt.attestation)
            key = (target, json.dumps(attestation, sort_keys=True))
            if key not in depths:
                depths[key] = await self._depth(target, attestation)
            depth = depths[key]
            if isinstance(depth, _Unsupported):
                continue
            if isinstance(depth, BaseException):
                counts["errors"] += 1
                continue
            job = JobKey(receipt.namespace, receipt.cadence)
            if depth is None:
                self._dropped.add(path)
                counts["dropped"] += 1
                self.log.warning(
                    "transaction dropped by a reorg; the job is queued again",
                    job=str(job),
                    target=target,
                    tx_hash=attestation.get("tx_hash"),
                    block_number=attestation.get("block_number"),
                    receipt=str(path),
                )
                self.requeue(job)
                continue
            required = receipt.confirmations.required
            if depth < required:
                counts["waiting"] += 1
                if self._depth_seen.get(path, receipt.confirmations.observed) != depth:
                    self.bus.publish(ReceiptDepth(
                        at=self.clock.now(), job=job, target=target, path=str(path), observed=depth, required=required,
                    ))
                self._depth_seen[path] = depth
                continue
            self._depth_seen.pop(path, None)
            await asyncio.to_thread(self.receipts.confirm, path, depth)
            counts["confirmed"] += 1
            self.bus.publish(
                ReceiptConfirmed(at=self.clock.now(), job=job, target=target, path=str(path))
            )
            self.log.info(
                "receipt confirmed",
                job=str(job),
                target=target,
                receipt=str(path),
                confirmations=depth,
                required=required,
            )
        return counts

    async def _redundant(
        self, path: Path, receipt: Receipt, depths: dict[tuple[str, str], int | None | BaseException],
        counts: dict[str, int],
    ) -> None:
        """A pending version 3 receipt is confirmed once `min` of its attestations are final
        (each at its own required depth); `status` is the receipt's, each attestation's own
        stays as written (verify asks each node itself). A transaction a reorg dropped only
        counts as not final here."""
        final = 0
        for item in receipt.attestations:
            if item.status == "confirmed":
                final += 1
                continue
            attestation = dict(item.attestation)
            key = (item.target, json.dumps(attestation, sort_keys=True))
            if key not in depths:
                depths[key] = await self._depth(item.target, attestation)
            depth = depths[key]
            if isinstance(depth, int) and not isinstance(depth, bool) and depth >= item.confirmations.required:
                final += 1
        if final < receipt.least:
            counts["waiting"] += 1
            return
        await asyncio.to_thread(self.receipts.confirm, path, final)
        counts["confirmed"] += 1
        job = JobKey(receipt.namespace, receipt.cadence)
        self.bus.publish(ReceiptConfirmed(at=self.clock.now(), job=job, target=receipt.target, path=str(path)))
        self.log.info("receipt confirmed", job=str(job), target=receipt.target, receipt=str(path), attestations_final=final)

    async def _depth(self, target: str, attestation: dict[str, Any]) -> int | None | BaseException:
        try:
            backend = self.backend_for(target)
            ask = getattr(backend, "confirmations", None)
            if ask is None:
                return _Unsupported()
            depth: int | None = await ask(attestation)
            return depth
        except Exception as exc:
            self.log.warning(
                "could not check confirmations; will retry",
                target=target,
                tx_hash=attestation.get("tx_hash"),
                error=describe(exc),
            )
            return exc


class _Unsupported(Exception):
    """The target's backend has no notion of depth."""


def _pending_of(receipts: ReceiptRepo, paths: Iterable[Path]) -> list[tuple[Path, Receipt]]:
    """The receipts at `paths` that are still pending (one confirmed meanwhile, or
    unreadable, is left to the full rounds)."""
    out = []
    for path in sorted(paths):
        try:
            receipt = receipts.load(path)
        except (OSError, ReceiptError):
            continue
        if receipt.status == "pending":
            out.append((path, receipt))
    return out
