"""Recovery: the intents a crash (or a replica that is gone) left in the journal are
resolved before anything new is anchored.

An intent with its attestation becomes receipts (core/engine/commit.py, `recovered`); one
without asks its backend (`Backend.recover`); one that cannot be resolved is moved to the
journal's quarantine for an operator and never stops the start.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.anchors.base import Attestation
from core.engine.commit import Committer
from core.engine.context import Context
from core.engine.outcomes import Outcomes
from core.engine.persistence import Saves
from core.engine.record import Held
from core.engine.redundant import from_notes
from core.errors import StorageError, describe
from core.jobs import JobKey, redundant_parts
from core.store import Intent


class Recovery:
    def __init__(self, ctx: Context, saves: Saves, outcomes: Outcomes, committer: Committer) -> None:
        self.ctx = ctx
        self.saves = saves
        self.outcomes = outcomes
        self.committer = committer

    async def recover(self) -> None:
        """Resolve intents left by a crash before anchoring anything new.

        Temp files a kill -9 left are removed first. One intent that cannot be resolved
        never stops the start: it is moved to the journal's quarantine for an operator
        (or, when only our disk failed after its attestation, held and retried).
        """
        ctx = self.ctx
        # A journal that cannot be read at all stops the start (StorageError naming it):
        # anchoring without knowing what is in flight could pay twice.
        removed, (intents, warnings) = await ctx.write("recover", ctx.journal.folder, self._scan)
        if removed:
            ctx.log.info(
                "removed temp files left by an interrupted write", count=len(removed),
                files=[str(p) for p in removed[:10]],
            )
        await self._resolve_all(intents, warnings)

    async def adopt_orphans(self) -> int:
        """Shared store: resolve the intents of replicas that are gone (their leases
        expired), as `recover` does at start; how many were taken over."""
        ctx = self.ctx
        intents, warnings = await ctx.write("recover", ctx.journal.folder, ctx.journal.orphans)
        fresh = [i for i in intents if i.id not in ctx.open]
        if fresh:
            ctx.log.warning(
                "taking over anchors left by a replica that is gone", intents=[i.id for i in fresh],
                jobs=sorted({str(k) for i in fresh for k in i.jobs}),
            )
            await self._resolve_all(fresh, warnings)
        return len(fresh)

    async def _resolve_all(self, intents: list[Intent], warnings: list[str]) -> None:
        ctx, table = self.ctx, self.ctx.table
        for warning in warnings:
            ctx.log.warning(warning)
        intents = [i for i in intents if i.id not in ctx.open]  # under way here: not interrupted
        for intent in intents:
            ctx.open[intent.id] = intent
            for key, state in intent.leased.items():  # a shared store's, under new fences
                if key in table and key not in table.flight:
                    table.set_state(key, state)
        for intent in intents:
            # Its jobs are in flight while it is resolved: a pass meanwhile (a replica takes
            # intents over while it runs) must not anchor them a second time.
            # A job already in flight here for another anchor is not taken (Flight.board): it
            # gets nothing from this intent, which is resolved all the same (never left open
            # and adopted by nobody, for a replica that wakes to write its token into).
            keys = table.flight.board([k for k in intent.jobs if k in table], ctx.clock.now())
            for key in keys:
                table.unschedule(key)
            try:
                # Its jobs under this scheduler's lease (a shared store leased them when the
                # intent was adopted; the file store's claims grant them here).
                unleased = {k: table.state(k) for k in keys if k not in intent.leased}
                if unleased:
                    granted = await ctx.write("claim", ctx.state_store.path, ctx.claims.claim, unleased, ctx.lease)
                    for key, state in granted.items():
                        table.set_state(key, state)
                await self._resolve(intent, set(keys))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._quarantine(intent, exc)
                ctx.open.pop(intent.id, None)
            finally:
                self.outcomes.release(set(keys))
        if intents or ctx.claims.closes_intents:
            await self.saves.save()  # the states that account for them, before they are closed
        # Nothing was resolved: no state changed, and nothing waits for a save. The first
        # save is the one an outcome requests (10,000 jobs: its whole snapshot, on the writer
        # thread during the first pass's reads, took their GIL: 60-100 ms off the start's
        # way to its first anchor).

    def _scan(self) -> tuple[list[Path], tuple[list[Intent], list[str]]]:
        ctx = self.ctx
        removed = (
            ctx.state_store.remove_stale_temps()
            + ctx.journal.remove_stale_temps()
            + ctx.receipts.remove_stale_temps()
        )
        return removed, ctx.journal.scan()

    async def _quarantine(self, intent: Intent, exc: BaseException) -> None:
        ctx = self.ctx
        reason = f"{type(exc).__name__}: {describe(exc)}"
        try:
            aside = await ctx.write("journal", intent.path, ctx.journal.quarantine, intent, reason)
        except StorageError as move_exc:
            ctx.log.error(
                "an interrupted anchor could not be resolved nor moved aside; it stays in the journal",
                intent=intent.id, path=str(intent.path), error=reason, move_error=str(move_exc),
            )
            return
        ctx.log.error(
            "an interrupted anchor could not be resolved; moved to quarantine for an operator, "
            "its jobs are due again",
            intent=intent.id, path=str(aside), target=intent.target, error=reason,
        )

    async def _resolve(self, intent: Intent, aboard: set[JobKey]) -> None:
        """Resolve an interrupted intent for its jobs `aboard` (taken into flight for it); a
        job of it already in flight here for another anchor gets nothing from this one."""
        ctx = self.ctx
        pairs, proofs = await self.committer.pairs(intent, aboard)
        entries = intent.entries
        digest = intent.digest_bytes
        attestation: Attestation | None = None
        if intent.attestation is None and redundant_parts(intent.target) is not None:
            # min attestations noted before the crash: receipts from them, no target asked
            # again; fewer: never landed (what was obtained is not kept across a restart)
            attestation = from_notes(intent)
        elif intent.attestation is not None:
            # attested() sets all three; a journal edited to a null status is refused by
            # build_receipt as before ("" is no status either).
            attestation = Attestation(intent.attestation, intent.status or "", intent.confirmations or 0)
        else:
            try:
                attestation = await ctx.backend_for(intent.target).recover(digest, intent.notes)
            except Exception as exc:
                ctx.log.error(
                    "could not resolve an interrupted anchor; it stays in the journal",
                    target=intent.target, intent=intent.id, error=describe(exc),
                )
                return
        if attestation is not None and not pairs and any(k in ctx.table for k in intent.jobs):
            ctx.log.warning(
                "an interrupted anchor's jobs were anchored again meanwhile; its attestation is not used",
                target=intent.target, intent=intent.id, jobs=[e["job"] for e in entries],
            )
            self.outcomes.discarded(intent, "superseded", len(entries))
            await self.saves.close_intents([intent])
            return
        if attestation is None or not pairs:
            ctx.log.info(
                "interrupted anchor never landed; its jobs are due again",
                target=intent.target, jobs=[e["job"] for e in entries],
            )
            if attestation is None:
                # Its call may have gone out and been paid (a TSA signs, then the process
                # died before journalling the token): nothing can get it back, so it counts.
                self.outcomes.discarded(intent, "unrecovered", len(entries))
            await self.saves.close_intents([intent])
            return
        held = Held(intent, attestation, durable=intent.attestation is not None)
        owned = {item.spec.key for _, item in pairs}
        await self.committer.complete(held, pairs, proofs, owned, ctx.clock.now(), recovered=True)
        written = [str(item.spec.key) for _, item in pairs if ctx.table.held_of(item.spec.key) is None]
        ctx.log.info(
            "interrupted anchor recovered from the journal", target=intent.target, jobs=written,
        )

    async def keep_held_attestations(self) -> None:
        """A last try to journal attestations whose write failed, so a restart finds them."""
        ctx = self.ctx
        for held in ctx.table.held_all():
            if held.durable:
                continue
            a = held.attestation
            try:
                await ctx.write(
                    "journal", held.intent.path, held.intent.attested, a.data, a.status, a.confirmations, held.arrived
                )
                held.durable = True
            except StorageError as exc:
                ctx.log.error(
                    "stopping with an attestation that could not be journalled: its jobs will be "
                    "anchored again at the next start", intent=held.intent.id, error=str(exc),
                )
