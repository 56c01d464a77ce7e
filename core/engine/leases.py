"""Leases: several schedulers on one store (core/cluster.py). A job is anchored only under
this replica's lease (claimed before its anchor), with the store's state as of the claim;
the states other replicas write are taken over for the jobs not settled here."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from core.engine.context import Context
from core.engine.outcomes import Outcomes
from core.engine.record import Due
from core.errors import StorageError
from core.jobs import JobKey, JobState, Row


class Leases:
    def __init__(self, ctx: Context, outcomes: Outcomes) -> None:
        self.ctx = ctx
        self.outcomes = outcomes
        self._store_cursor: Any = None  # refresh_from_store's position in the store's changes

    async def claim(self, items: list[Due], owned: set[JobKey], started: float) -> list[Due]:
        """Lease these jobs; the ones to anchor. A job another replica holds is left to it; a
        claimed job takes the store's state (another replica may have anchored it since this
        one looked) and is anchored only if it is still due. The file store grants all."""
        ctx, table = self.ctx, self.ctx.table
        if ctx.claim_refusal is not None:  # out of the claim rotation: the others take these
            for item in items:
                self.outcomes.let_go(item.spec.key, owned, ctx.soon())
            return []
        forced = {item.spec.key: table.state(item.spec.key) for item in items if item.forced}
        due = {item.spec.key: table.state(item.spec.key) for item in items if not item.forced}
        try:
            got = {}
            if forced:  # an operator asked for these here: never left to another replica
                got.update(await ctx.write("claim", ctx.state_store.path, ctx.claims.claim, forced, ctx.lease))
            if due:  # when many are due at once, this replica's share of them (the others
                # take theirs, or this one its next pass): the work and its TSA calls spread
                claim = functools.partial(ctx.claims.claim, spread=True)
                got.update(await ctx.write("claim", ctx.state_store.path, claim, due, ctx.lease))
        except StorageError as exc:
            self.outcomes.fail_owned(items, exc, owned, started)  # no lease, no anchor: backs off
            return []
        now = ctx.clock.now()
        kept: list[Due] = []
        let_go: list[tuple[JobKey, int]] = []
        for item in items:
            key = item.spec.key
            state = got.get(key)
            if state is not None:
                # The store's state as this scheduler knew it (always, with the file store):
                # the decision to anchor stands. Changed by another replica: still due?
                known = state == table.state(key)
                table.set_state(key, state)
                if known:
                    kept.append(item)
                    continue
                # Another replica changed it since this one decided (it anchored it, maybe a
                # newer root than the batch read for this pass): decided again on the store's
                # state and the latest batch, never on the stale read.
                fresh = await self._reread(item, state, now)
                if fresh is not None:
                    kept.append(fresh)
                    continue
                if state.row is not None and state.row.fence is not None:
                    let_go.append((key, state.row.fence))
            # Held by another replica, or done by one, or left to one: look again at its (new)
            # due time, or soon.
            self.outcomes.let_go(key, owned, None if state is not None else ctx.soon())
        if let_go:
            await self._release(let_go)
        return kept

    async def _release(self, let_go: list[tuple[JobKey, int]]) -> None:
        """Give back the leases of claimed jobs not anchored here (under their fences)."""
        ctx = self.ctx
        try:
            released = await ctx.write("claim", ctx.state_store.path, ctx.claims.release, let_go)
        except StorageError:
            released = []  # the lease expires on its own
        for key in released:
            state = ctx.table.state_of(key)
            if state is not None and state.row is not None:
                state.row = Row(state.row.version)

    async def _reread(self, item: Due, state: JobState, now: float) -> Due | None:
        """A claimed job whose store state another replica changed: to anchor (with its
        latest batch, read again) if that batch is not the one anchored and the job is due
        by the store's state (or forced); else None."""
        try:
            batch = await asyncio.to_thread(self.ctx.read_batch, item.spec.source)
        except Exception:
            return None  # the next pass reads it again and reports the failure
        if not item.spec.anchor_unchanged and batch.root == state.last_root:
            return None  # anchored by another replica
        if not item.forced and self.ctx.table.natural_due(item.spec.key) > now + 1.0:
            return None  # anchored elsewhere within its period: due later
        return Due(item.spec, batch, item.forced)

    def adopt(self, states: dict[JobKey, JobState]) -> int:
        """States another replica wrote (the shared store): taken over for jobs not
        settled here, and rescheduled from them. Returns how many were taken."""
        table = self.ctx.table
        holding = self.ctx.holding()
        taken = 0
        for key, state in states.items():
            if key not in table or key in holding:
                continue
            table.set_state(key, state)
            if key not in table.forced:
                table.schedule(key)
            taken += 1
        return taken

    async def renew(self) -> int:
        """Extend the leases of every job not settled here (raises on a store failure)."""
        ctx = self.ctx
        return await ctx.writer.run("claim", ctx.state_store.path, ctx.claims.renew, sorted(ctx.holding()), ctx.lease)

    async def refresh(self) -> int:
        """Take over the states other replicas wrote since the last call."""
        ctx = self.ctx
        states, self._store_cursor = await ctx.writer.run(
            "claim", ctx.state_store.path, ctx.claims.changed_since, self._store_cursor
        )
        return self.adopt(states)
