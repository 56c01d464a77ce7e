"""Anchoring one group: the jobs of one (target, policy) due in a pass, in one backend call.

Claim (core/engine/leases.py), intent into the journal, the backend call over the RFC 6962
tree of their roots, then the commit (core/engine/commit.py).

A backend that says `one_at_a_time` (btc: one unmined transaction per signer) gets one group
at a time per target: jobs of that target due while its group is under way wait, not in
flight and never dropped, and are due again the moment it ends, so the next pass folds
every one of them into ONE next call (one tree, one transaction) instead of a call each.

Every exception on this path is caught per group: a job never stays in the in-flight set
(`release` in a `finally`), and a failed write of our own files is a `storage` failure like
any other: logged as an ERROR naming the step, path and errno, counted, backed off and
retried. An attestation obtained but not yet turned into receipts is never asked for
again: its jobs are *held* with it and their retry writes the receipts from it (as
recovery at start does), so nothing is paid twice.
"""

from __future__ import annotations

import asyncio
from typing import Any

from core.engine.commit import WRITE_CHUNK, Committer, aggregate, journalled_note
from core.engine.context import Context
from core.engine.leases import Leases
from core.engine.outcomes import Outcomes
from core.engine.persistence import Saves
from core.engine.record import Due, Held
from core.engine.redundant import Redundancy
from core.errors import StorageError, describe
from core.events import AnchorStarted
from core.jobs import JobKey, redundant_parts
from core.receipts import RECEIPT_VERSION, REDUNDANT_VERSION, leaf_for


class Anchoring:
    def __init__(
        self, ctx: Context, saves: Saves, outcomes: Outcomes, committer: Committer, leases: Leases,
        concurrency: int, redundancy: Redundancy,
    ) -> None:
        self.ctx = ctx
        self.saves = saves
        self.outcomes = outcomes
        self.committer = committer
        self.leases = leases
        self.redundancy = redundancy
        self._concurrency = asyncio.Semaphore(max(1, concurrency))
        self._under_way: dict[str, int] = {}  # one-at-a-time targets: their groups under way
        self._waiting: dict[str, dict[JobKey, bool]] = {}  # their jobs due meanwhile (forced?)

    def launch(self, target: str, items: list[Due], now: float) -> None:
        """Start one group of a pass: its jobs board and a task anchors them. A
        one-at-a-time target with a group under way keeps them waiting instead: they join
        the next group, started as soon as this one ends (`_next_group`)."""
        table = self.ctx.table
        if self._under_way.get(target) and self._one_at_a_time(target):
            waiting = self._waiting.setdefault(target, {})
            for item in items:
                waiting[item.spec.key] = waiting.get(item.spec.key, False) or item.forced
            self.ctx.log.debug(
                "waiting for the target's anchor under way; folded into its next one",
                target=target, jobs=[str(item.spec.key) for item in items],
            )
            return
        aboard = set(table.flight.board([item.spec.key for item in items], now))
        items = [item for item in items if item.spec.key in aboard]
        for item in items:
            table.unschedule(item.spec.key)
        if self._one_at_a_time(target):
            self._under_way[target] = self._under_way.get(target, 0) + 1
        self.ctx.spawn(self.group(target, items))

    def _one_at_a_time(self, target: str) -> bool:
        try:
            backend = self.ctx.backend_for(target)
        except Exception:
            return False  # the group fails with the reason
        return getattr(backend, "one_at_a_time", False) is True

    def _next_group(self, target: str) -> None:
        """A group of a one-at-a-time target ended: the jobs that waited are due now (at
        their own due time: a requeued or overdue job keeps it), one pass takes them all."""
        left = self._under_way.get(target, 0) - 1
        if left > 0:
            self._under_way[target] = left
            return
        self._under_way.pop(target, None)
        table = self.ctx.table
        for key, forced in self._waiting.pop(target, {}).items():
            record = table.get(key)
            if record is None or record.disabled is not None or key in table.flight:
                continue
            if forced:
                table.forced.add(key)
            else:
                table.schedule(key, record.due)
        table.wake.set()

    async def group(self, target: str, items: list[Due]) -> None:
        """Anchor these jobs (all boarded for it) to `target`, whatever happens."""
        owned = {item.spec.key for item in items}
        started = self.ctx.clock.now()
        try:
            items = await self.leases.claim(items, owned, started)
            if not items:
                return
            async with self._concurrency:
                await self._anchor(target, items, owned, started)
        except asyncio.CancelledError:
            raise  # shutdown mid-call: the intent stays in the journal for the next start
        except Exception as exc:
            self.ctx.log.error(
                "anchoring failed unexpectedly", target=target, error=describe(exc),
                error_type=type(exc).__name__,
            )
            self.outcomes.fail_owned(items, exc, owned, started)
        finally:
            self.outcomes.release(owned)
            if target in self._under_way:
                self._next_group(target)

    async def _anchor(self, target: str, items: list[Due], owned: set[JobKey], started: float) -> None:
        # A redundant group (several targets) anchors version 3 leaves: bound to the targets and min too.
        version = REDUNDANT_VERSION if redundant_parts(target) is not None else RECEIPT_VERSION

        policy = items[0].spec.policy_oid  # one per group (run_due)

        def tree() -> tuple[bytes, list[list[bytes]], list[dict[str, Any]]]:
            leaves = [leaf_for(version, i.spec.namespace, i.batch.id, i.batch.root, target) for i in items]
            digest, proofs = aggregate(leaves)
            return digest, proofs, journal_entries(items, version, policy)

        if len(items) > WRITE_CHUNK:  # 10,000 leaves and entries: ~70 ms, not on the loop
            digest, proofs, entries = await asyncio.to_thread(tree)
        else:
            digest, proofs, entries = tree()
        keys = tuple(i.spec.key for i in items)
        ctx = self.ctx
        try:
            intent = await ctx.write(
                "journal", ctx.journal.folder, ctx.journal.open, target, entries, digest.hex(), started
            )
        except StorageError as exc:
            self.outcomes.fail_owned(items, exc, owned, started)  # nothing was sent: a plain retry
            return
        # The intent holds its own copy: ours would live as long as this anchor (10,000 jobs: ~3 MB)
        del entries
        ctx.open[intent.id] = intent
        ctx.bus.publish(AnchorStarted(at=started, target=target, jobs=keys, digest=digest.hex()))
        ctx.log.info("anchor started", target=target, jobs=[e["job"] for e in intent.entries], digest=digest.hex())
        try:
            if version == REDUNDANT_VERSION:
                obtained, why = await self.redundancy.gather(intent, digest, policy, items[0].spec.confirmations)
                if obtained is None:
                    raise self.redundancy.failure(intent, why)
                if why:
                    ctx.log.info("redundant anchor: min attestations in", target=target, missing=why)
                attestation = obtained
            else:
                backend = ctx.backend_for(target)
                attestation = await backend.anchor(digest, journalled_note(intent), policy=policy)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.saves.close_intents([intent])
            self.outcomes.fail_owned(items, exc, owned, started)
            return
        held = Held(intent, attestation, durable=False, arrived=ctx.clock.now())
        await self.committer.complete(held, list(enumerate(items)), proofs, owned, started)


def journal_entries(items: list[Due], version: int, policy: str | None) -> list[dict[str, Any]]:
    """The intent's entry of each job: its batch, its leaf's index and form (entry_leaf)."""
    entries = []
    for n, i in enumerate(items):
        entry = {  # receipt_version: the leaf's form (entry_leaf)
            "job": str(i.spec.key), "batch": {"id": i.batch.id, "root": i.batch.root}, "leaf_index": n,
            "receipt_version": version,
        }
        if policy:
            entry["policy"] = policy
        entries.append(entry)
    return entries
