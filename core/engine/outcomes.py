"""How an anchor ends for a job: it succeeded (receipt written), it failed (backed off),
or it was let go (left to another replica, or to its next due time). Every path out of
flight lands the job (core/flight.py) and gives it a due time again. Also a job whose
target the guard refuses: disabled (no due time, no backoff), or enabled again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from core.engine.context import Context
from core.engine.persistence import Saves
from core.engine.record import Due, succeeded
from core.errors import ErrorKind, StorageError, classify, describe
from core.events import (
    AnchorFailed,
    AnchorSucceeded,
    BackoffChanged,
    ReceiptWritten,
    TokenDiscarded,
)
from core.jobs import JobKey, JobSpec
from core.sources import Batch
from core.store import Intent


class Outcomes:
    def __init__(self, ctx: Context, saves: Saves) -> None:
        self.ctx = ctx
        self.saves = saves

    def set_disabled(self, key: JobKey, reason: str | None) -> bool:
        """Disable `key` for `reason` (its target is refused), or enable it when None.
        A disabled job has no due time and no backoff: it cannot run, so it is not failing.
        Returns True when the job was disabled and is enabled now (it needs scheduling)."""
        ctx = self.ctx
        record = ctx.table[key]
        before = record.disabled
        if not reason:
            if before is None:
                return False
            record.disabled = None
            record.enabled_at = ctx.clock.now()  # its first chance to be current
            ctx.log.info("job enabled: its target is accepted now", job=str(key), target=record.spec.target)
            return True
        record.disabled = reason
        record.due = None
        ctx.table.forced.discard(key)
        state = record.state
        if state.failures or state.next_attempt is not None:
            record.state = replace(state, failures=0, backoff_level=0, next_attempt=None)
            if state.backoff_level:
                ctx.bus.publish(
                    BackoffChanged(
                        at=ctx.clock.now(), job=key, level=0, max_level=ctx.policy.max_level, next_attempt=None
                    )
                )
        if before != reason:
            ctx.log.warning("job disabled", job=str(key), target=record.spec.target, reason=reason)
        return False

    def written(
        self, spec: JobSpec, path: Path, root: str, status: str, now: float, at: float,
        *, tx_hash: str = "", observed: int = 0,
    ) -> None:
        """Announce a receipt that is durable (ReceiptWritten at `at`, when its commit
        ended; `now`: when it was anchored). Called for a whole commit chunk before its
        outcomes are applied in slices, so a client hears of a receipt as soon as it is safe,
        not when the slices reach its job."""
        self.ctx.bus.publish(
            ReceiptWritten(
                at=at, job=spec.key, target=spec.target, path=str(path), root=root, status=status,
                anchored_at=now, tx_hash=tx_hash, observed=observed, required=spec.confirmations,
            )
        )

    def succeed(
        self, spec: JobSpec, batch: Batch, path: Path, now: float, duration: float, status: str,
        *, advance: bool = True,
    ) -> None:
        """A receipt is written (and announced: `written`). `advance` False: it is of a root
        older than the job's last anchor (a recovered token), so the job's state stays as it is."""
        ctx, table = self.ctx, self.ctx.table
        key = spec.key
        previous = table.state_or_new(key)
        if advance:
            table.set_state(key, succeeded(previous, batch.root, path, now))
        table.flight.land(key)
        table.set_storage_failing(key, None)
        ctx.bus.publish(
            AnchorSucceeded(
                at=now, job=key, target=spec.target, root=batch.root, duration=duration, status=status
            )
        )
        ctx.log.info(
            "anchored", job=str(key), target=spec.target, root=batch.root, batch=batch.id,
            receipt=str(path), status=status,
        )
        if advance and previous.backoff_level:
            ctx.bus.publish(
                BackoffChanged(at=now, job=key, level=0, max_level=ctx.policy.max_level, next_attempt=None)
            )
        if key in table:
            table.schedule(key)

    def fail(self, spec: JobSpec, exc: BaseException, *, duration: float) -> None:
        ctx, table, policy = self.ctx, self.ctx.table, self.ctx.policy
        key = spec.key
        now = ctx.clock.now()
        kind = classify(exc)
        message = describe(exc)
        previous = table.state_or_new(key)
        failures = previous.failures + 1
        level = policy.level(failures)
        retry_at = now + policy.delay(level, kind)
        table.set_state(key, replace(
            previous,
            failures=failures,
            backoff_level=level,
            next_attempt=retry_at,
            last_error_kind=str(kind),
            last_error=message,
            last_attempt_at=now,
        ))
        ctx.bus.publish(
            AnchorFailed(at=now, job=key, target=spec.target, kind=str(kind), message=message, duration=duration)
        )
        ctx.bus.publish(
            BackoffChanged(
                at=now, job=key, level=level, max_level=policy.max_level, next_attempt=retry_at,
                kind=str(kind), message=message,
            )
        )
        fields: dict[str, Any] = {
            "job": str(key), "target": spec.target, "kind": str(kind), "error": message,
            "backoff_level": level, "retry_in": round(retry_at - now, 3),
        }
        if isinstance(exc, StorageError) and exc.kind is ErrorKind.STORAGE:
            table.set_storage_failing(key, message)
            ctx.log.error("anchor failed", **fields, op=exc.op, path=exc.path, errno=exc.errno)
        else:
            table.set_storage_failing(key, None)
            ctx.log.warning("anchor failed", **fields)
        if key in table:
            table.schedule(key)
        self.saves.request()

    def fail_owned(self, items: list[Due], exc: BaseException, owned: set[JobKey], started: float) -> None:
        duration = self.ctx.clock.now() - started
        for item in items:
            key = item.spec.key
            if key in owned:
                owned.discard(key)
                self.ctx.table.flight.land(key)
                self.fail(item.spec, exc, duration=duration)
        self.ctx.table.wake.set()

    def release(self, owned: set[JobKey]) -> None:
        """Whatever happened, these jobs leave the in-flight set and have a due time."""
        table = self.ctx.table
        for key in owned:
            table.flight.land(key)
            if key in table and table.due_at(key) is None:
                table.schedule(key)
        owned.clear()
        table.wake.set()

    def let_go(self, key: JobKey, owned: set[JobKey], when: float | None) -> None:
        """A job taken for this pass that is not anchored here after all: out of flight,
        scheduled at `when` (None: its natural due time) unless a reload removed it."""
        table = self.ctx.table
        owned.discard(key)
        table.flight.land(key)
        if key in table:
            table.schedule(key, when)

    def discarded(self, intent: Intent, reason: str, jobs: int) -> None:
        """A paid attestation that ends in no receipt: logged and counted, never silent."""
        ctx = self.ctx
        ctx.bus.publish(TokenDiscarded(at=ctx.clock.now(), target=intent.target, intent=intent.id, reason=reason, jobs=jobs))
        ctx.log.warning("attestation discarded", intent=intent.id, target=intent.target, reason=reason, jobs=jobs)
