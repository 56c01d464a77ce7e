"""SchedulerControl in process: the control seam (core/control.py) over a Runtime.

The dashboard that runs its own engine (tui/host.py) and the control socket's server
(core/control_server.py) both reach the engine through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from core.control import Receipts, ReloadResult, Snapshot, VerifyOutcome, VerifyResult, store_status
from core.events import Event
from core.jobs import JobKey
from core.observe.health import health
from core.receipts import (
    Receipt,
    ReceiptError,
    ReceiptInvalid,
    ReceiptPending,
    ReceiptUncheckable,
    verify_receipt,
)
from core.runtime import Runtime
from core.status import Counts, count
from core.text import printable
from core.views import JobView


class RuntimeControl:
    """SchedulerControl in process: over a Runtime and its engine, on the same loop."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def snapshot(self) -> Snapshot:
        now = self.now()
        views = tuple(self._runtime.engine.views(now))
        return self.header(now, views, count(views))

    # The control socket builds a large snapshot in slices (core/control_feed.py): the job
    # keys, then their views a slice at a time, then the rest at once.

    def now(self) -> float:
        return self._runtime.engine.clock.now()

    def job_keys(self) -> list[JobKey]:
        return self._runtime.engine.job_keys()

    def views_of(self, keys: Iterable[JobKey], now: float) -> list[JobView]:
        """The views of those of `keys` still configured (one removed by a reload meanwhile
        is left out), in that order."""
        return self._runtime.engine.views(now, keys)

    def health(self, now: float, views: Sequence[JobView]) -> tuple[int, dict[str, Any]]:
        """/health's (status, body) over `views` (taken at `now`)."""
        return health(
            self._runtime.engine, now, self._runtime.cluster, views, wallets=getattr(self._runtime, "wallets", None)
        )

    def header(self, now: float, views: tuple[JobView, ...], counts: Counts) -> Snapshot:
        """A Snapshot at `now` with these views and counts, the rest read now."""
        engine = self._runtime.engine
        cluster = self._runtime.cluster  # None with the file store
        return Snapshot(
            now=now, views=views, counts=counts, paused=engine.paused,
            config_hash=engine.config_hash, started_at=engine.started_at,
            last_tick=engine.last_tick, tick=engine.tick, max_level=engine.policy.max_level,
            replicas=() if cluster is None else tuple(cluster.replicas()),
            store=store_status(engine, cluster), storage=getattr(engine, "storage_problem", None),
        )

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        return self._runtime.bus.subscribe(callback)

    def in_flight(self) -> frozenset[JobKey]:
        return self._runtime.engine.in_flight()

    def force(self, key: JobKey) -> bool:
        return self._runtime.engine.force(key)

    def force_namespace(self, namespace: str) -> tuple[list[JobKey], list[JobKey]]:
        engine = self._runtime.engine
        keys = [k for k in engine.jobs if k.namespace == namespace]
        if not keys:
            raise KeyError(namespace)
        forced: list[JobKey] = []
        skipped: list[JobKey] = []
        for key in keys:
            (forced if engine.force(key) else skipped).append(key)
        return forced, skipped

    def pause(self) -> None:
        self._runtime.engine.pause()

    def resume(self) -> None:
        self._runtime.engine.resume()

    async def reload(self) -> ReloadResult:
        return await self._runtime.reload_off_loop()

    async def verify(self, path: str) -> VerifyResult:
        try:
            receipt = self._runtime.receipts.load(path)
            vouched = await verify_receipt(receipt, self._runtime.backends)
        except ReceiptUncheckable as exc:  # not a verdict on the receipt
            return VerifyResult(VerifyOutcome.CANNOT_CHECK, str(exc))
        except ReceiptPending as exc:  # genuine, not final yet
            return VerifyResult(VerifyOutcome.PENDING, str(exc), f"{receipt.namespace}/{receipt.cadence}")
        except (ReceiptError, ReceiptInvalid) as exc:
            return VerifyResult(VerifyOutcome.FAIL, str(exc))
        except Exception as exc:  # a verifier bug is a failed check, not a crash
            return VerifyResult(VerifyOutcome.FAIL, repr(exc))
        job = f"{receipt.namespace}/{receipt.cadence}"
        return VerifyResult(VerifyOutcome.OK, printable(vouched.line(receipt)), job)

    def recent_receipts(self, limit: int) -> Receipts:
        return self._runtime.receipts.recent(limit)

    def receipt(self, path: str) -> Receipt | ReceiptError:
        """One receipt of the store, or why it cannot be read."""
        try:
            return self._runtime.receipts.load(path)
        except ReceiptError as exc:
            return exc

    def job_receipts(self, key: JobKey, limit: int) -> Receipts:
        return self._runtime.receipts.for_job(key.namespace, key.cadence, limit)

    def namespace_config(self, namespace: str) -> Any:
        return self._runtime.loaded.config.namespaces.get(namespace)
