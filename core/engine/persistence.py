"""State saves: coalesced, off the loop, and the journal's intents closed after them.

Order of durable writes (docs/architecture.md): the state that accounts for an anchor is
saved before its intent is removed from the journal, so a crash between the two finds the
intent and resolves it (core/engine/recovery.py). A failed save loses nothing: it is
retried after a storage backoff, and the intents wait for a save that succeeds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from core.engine.context import Context
from core.errors import ErrorKind, StorageError
from core.jobs import JobKey, JobState
from core.store import Intent, StateRepo, Written

SAVE_PACE = 2.0  # after a save, wait this many times its duration before the next one


def _encoded_write(store: StateRepo, states: dict[JobKey, JobState]) -> Written | None:
    """On the writer thread: `states` (a copy of the table's, of the state objects then:
    a change replaces a job's state, `current_at` alone is updated in place; the file
    store's `save` relies on it to write only the states that changed) saved. A lone
    scheduler keeps no leases: no `holding` to compute."""
    store.save(states)
    return None


def _whole_write(store: StateRepo, states: dict[JobKey, JobState]) -> Written | None:
    """On the writer thread: every state in one snapshot (the file store's changes file
    folded into it), for a stop: the state file alone then holds everything."""
    return store.write(store.snapshot(states))


class Saves:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.closing: list[Intent] = []  # intents to remove once state is saved
        self._task: asyncio.Task[None] | None = None
        self._wanted = False
        self._retry: asyncio.TimerHandle | None = None
        self._failures = 0
        self._save_error: StorageError | None = None
        self._close_error: StorageError | None = None

    def problem(self) -> str | None:
        """Why the last state save or journal cleanup failed, else None."""
        for error in (self._save_error, self._close_error):
            if error is not None:
                return str(error)
        return None

    def request(self) -> None:
        """Coalesce state writes: one save covers every change made before it runs."""
        self._wanted = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._save_soon())

    async def wait(self) -> None:
        """Until the save under way (if any) is done."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def cancel_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()

    async def _save_soon(self) -> None:
        await asyncio.sleep(0)
        while self._wanted:
            self._wanted = False
            started = time.monotonic()
            if not await self.save():
                return
            if self._wanted and not self.ctx.stopping:
                # Changes came during the save (a big pass): wait SAVE_PACE times as long as
                # it took before the next one. A shared store's save writes every job, so saves
                # back to back would hold the writer thread (and the receipts queued behind them)
                # O(jobs) per chunk of receipts; paced, they take a third of it at most. Nothing
                # is at risk meanwhile: an intent is removed only after a save accounts for it.
                await asyncio.sleep(SAVE_PACE * (time.monotonic() - started))

    async def save(self, *, whole: bool = False) -> bool:
        """Save state off the loop, then close the intents it accounts for; False on failure.
        `whole` (a stop): every state in one snapshot, not only what changed.

        The intents to close are taken only after the state is safely written, so a
        failed save loses none of them: they are closed after a later save.
        """
        ctx = self.ctx
        closing = list(self.closing)
        store, states = ctx.state_store, ctx.table.states()
        try:
            if ctx.claims.closes_intents:  # a shared store: each state with its row, and the leases kept, now
                doc = store.snapshot(states, ctx.holding(closing))
                written = await ctx.write("state", store.path, store.write, doc)
            else:  # a lone scheduler's: the states of now, what changed encoded on the writer thread
                written = await ctx.write("state", store.path, _whole_write if whole else _encoded_write, store, states)
        except StorageError as exc:
            self._save_error = exc
            self._retry_later()
            return False
        if written is not None:
            self._saved(written)
        self._save_error = None
        self._failures = 0
        await self.close_intents(closing)
        return True

    def _saved(self, written: Written) -> None:
        """A shared store's answer to a save: the new rows of the states it wrote (for the
        states still built on the rows saved), and the store's state for the writes it
        refused: a state built on a row that is no longer current never overwrites a newer
        one; it is replaced by it."""
        ctx, table = self.ctx, self.ctx.table
        based = written.based
        for key, row in written.rows.items():
            state = table.state_of(key)
            if state is not None and state.row is based.get(key):
                state.row = row
        busy = ctx.holding()
        for key, theirs in written.refused.items():
            state = table.state_of(key)
            if state is None or state.row is not based.get(key) or key in busy:
                continue
            was = based.get(key)
            ctx.log.warning(
                "stale state write refused by the store; taking the store's state", job=str(key),
                was_fenced=was is not None and was.fence is not None,
            )
            table.set_state(key, theirs)
            if key in table and key not in table.forced:
                table.schedule(key)

    async def close_intents(self, intents: list[Intent]) -> None:
        """Remove intents from the journal (one fsync); the ones that fail are retried."""
        if not intents:
            return
        ctx = self.ctx
        done = {id(i) for i in intents}
        self.closing = [i for i in self.closing if id(i) not in done]
        for intent in intents:
            ctx.open.pop(intent.id, None)
        failed: Sequence[tuple[Intent, Exception]]
        try:
            failed = await ctx.write("journal", ctx.journal.folder, ctx.journal.close_many, intents)
        except StorageError as exc:
            failed = [(i, exc) for i in intents]
        else:
            if failed:
                intent, cause = failed[0]
                ctx.storage_failed(StorageError("journal", str(intent.path), cause))
        if failed:
            self.closing.extend(i for i, _ in failed)
            intent, cause = failed[0]
            self._close_error = cause if isinstance(cause, StorageError) else StorageError("journal", str(intent.path), cause)
            self._retry_later()
        else:
            self._close_error = None

    def _retry_later(self) -> None:
        """After a failed save, try again after a storage backoff (or at the next outcome)."""
        if self.ctx.stopping or (self._retry is not None and not self._retry.cancelled()
                                 and self._retry.when() > asyncio.get_running_loop().time()):
            return
        self._failures += 1
        policy = self.ctx.policy
        delay = policy.delay(policy.level(self._failures), ErrorKind.STORAGE)
        self._retry = asyncio.get_running_loop().call_later(delay, self.request)

    def flush(self) -> None:
        """Save state now (blocking), then drop the intents the saved state accounts for.

        For callers without a loop (the dashboard's last resort); raises StorageError.
        """
        ctx = self.ctx
        closing = list(self.closing)
        ctx.writer.call("state", ctx.state_store.path, _whole_write, ctx.state_store, ctx.table.states())
        self._save_error = None
        done = {id(i) for i in closing}
        self.closing = [i for i in self.closing if id(i) not in done]
        failed = ctx.writer.call("journal", ctx.journal.folder, ctx.journal.close_many, closing)
        self.closing.extend(i for i, _ in failed)
