"""Commit: an attestation obtained becomes receipts and the jobs' new state.

Order of durable writes: the attestation into the intent, then the receipts in chunks,
each chunk one fenced commit (`Claims.commit`: each job's receipt, new state and lease
release). A job whose lease passed to another replica gets nothing (the outcome is
theirs). A job whose receipt cannot be written is *held* with the attestation: its retry
writes the receipts from it (as recovery at start does), so nothing is paid twice.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from core import __version__, merkle
from core.anchors.base import Attestation
from core.engine.context import Context
from core.engine.outcomes import Outcomes
from core.engine.persistence import Saves
from core.engine.record import Due, Held, anchored_since, succeeded
from core.errors import StorageError, describe
from core.jobs import JobKey, safe_name
from core.receipts import (
    RECEIPT_VERSION,
    REDUNDANT_VERSION,
    AnchorReceipts,
    Receipt,
    leaf_for,
    redundant_attestations,
)
from core.sources import Batch
from core.store import Committed, Intent, Superseded

_T = TypeVar("_T")
WRITE_CHUNK = 128  # leaves above which a tree is built off the loop (receipts per call: `Claims.commit_chunk`)
APPLY_SLICE = 0.002  # seconds of outcomes applied between two turns of the loop
Pairs = list[tuple[int, Due]]  # (leaf index, job) of an intent


def aggregate(leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The digest to anchor and each leaf's audit path; a group of one anchors its root."""
    if len(leaves) == 1:
        return leaves[0], [[]]
    return merkle.tree_and_paths(leaves)


def entry_version(entry: dict[str, Any]) -> int:
    """The receipt version an intent's entry was anchored for: 1 (its leaf the batch root)
    when written before receipts bound their namespace and batch id."""
    version = entry.get("receipt_version", 1)
    return version if version in (1, RECEIPT_VERSION, REDUNDANT_VERSION) else 1


def entry_leaf(entry: dict[str, Any], target: str) -> bytes:
    """The leaf an intent's entry was anchored with (the engine's and verify's one rule:
    core.receipts.leaf_for; `target`: the intent's, bound by version 3 leaves)."""
    namespace = JobKey.parse(entry["job"]).namespace
    return leaf_for(entry_version(entry), namespace, entry["batch"]["id"], entry["batch"]["root"], target)


def journalled_note(intent: Intent) -> Callable[[dict[str, Any]], None]:
    """`intent.note` whose write failures are storage errors (the backend sent nothing yet)."""

    def note(facts: dict[str, Any]) -> None:
        try:
            intent.note(facts)
        except OSError as exc:
            raise StorageError("journal", str(intent.path), exc) from exc

    return note


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A chunk's write whose outcome nobody awaits any more (shutdown): its error is not
    reported as never retrieved."""
    if not future.cancelled():
        future.exception()


RAMP = 8  # a pass's first and last chunks are 1/RAMP of a chunk (`commit_chunks`)


def commit_chunks(items: list[_T], size: int) -> list[list[_T]]:
    """`items` cut in chunks of `size`; when a chunk is RAMP * 32 or more, the first ones
    are size / RAMP, then twice that, up to `size`, and the last one is size / RAMP: the
    writer's first chunk is written (and the pipeline of writes and applies full) after a
    small chunk's write, not a whole one's, and what the loop applies once the last write
    ended is a small chunk, not a whole one."""
    if size < RAMP * 32 or len(items) <= size:
        return [items[i : i + size] for i in range(0, len(items), size)]
    cuts = [0]
    step = size // RAMP
    while cuts[-1] < len(items):
        cuts.append(min(len(items), cuts[-1] + step))
        step = min(size, step * 2)
    if len(items) - cuts[-2] > size // RAMP:  # the last chunk cut in two: its end a small one
        cuts.insert(-1, len(items) - size // RAMP)
    return [items[a:b] for a, b in itertools.pairwise(cuts)]


class Committer:
    def __init__(self, ctx: Context, saves: Saves, outcomes: Outcomes) -> None:
        self.ctx = ctx
        self.saves = saves
        self.outcomes = outcomes
        self._building: ThreadPoolExecutor | None = None

    async def complete(
        self,
        held: Held,
        pairs: Pairs,
        proofs: list[list[bytes]],
        owned: set[JobKey],
        started: float,
        *,
        recovered: bool = False,
    ) -> None:
        """Attestation into the intent, then receipts, then the jobs' success.

        `pairs` are (leaf index, job). A job whose receipt cannot be written is held with
        the attestation (its retry resumes here) and fails with kind `storage`.
        `recovered`: receipts written before a crash or a failed write are reused.
        """
        ctx = self.ctx
        intent, attestation = held.intent, held.attestation
        if not held.durable:
            try:
                await ctx.write(
                    "journal", intent.path, intent.attested,
                    attestation.data, attestation.status, attestation.confirmations, held.arrived,
                )
            except StorageError as exc:
                if isinstance(exc.__cause__, Superseded):  # another replica resolves it
                    self._superseded(held, pairs, owned, str(exc.__cause__))
                    return
                # Receipts only once the attestation is durable: a crash then still finds it.
                self._hold(held, pairs, exc, owned, started)
                return
            held.durable = True
        now = ctx.clock.now()
        unwritten, error = await self._commit_chunks(held, pairs, proofs, owned, started, now, recovered=recovered)
        if error is not None:
            if isinstance(error.__cause__, Superseded):
                self._superseded(held, unwritten, owned, str(error.__cause__))
                return
            ctx.storage_failed(error)
            self._hold(held, unwritten, error, owned, started)
        if not ctx.table.holds(held):
            if ctx.claims.closes_intents:  # removed by the commit's own transaction
                intent.closed = True
                ctx.open.pop(intent.id, None)
            else:  # removed once the state that accounts for it is saved
                self.saves.closing.append(intent)
        self.saves.request()
        ctx.table.wake.set()

    async def _commit_chunks(
        self,
        held: Held,
        pairs: Pairs,
        proofs: list[list[bytes]],
        owned: set[JobKey],
        started: float,
        now: float,
        *,
        recovered: bool,
    ) -> tuple[Pairs, StorageError | None]:
        """Every chunk's fenced commit, pipelined: the writer thread writes chunk k+1 while
        the loop applies chunk k's outcomes (in order: chunk k+1 was written after chunk
        k). After a chunk whose commit failed as a whole, no other chunk is started; the one
        already started is applied as it ended. Returns the pairs left unwritten and the
        first failure (None: every chunk committed)."""
        size = self.ctx.claims.commit_chunk or max(1, len(pairs))
        await self.ctx.folders_made()
        queued: list[tuple[Pairs, asyncio.Future[tuple[Committed | Exception, list[bool]]]]] = []
        unwritten: Pairs = []
        error: StorageError | None = None

        async def settle() -> None:
            nonlocal error
            chunk, writing = queued.pop(0)
            try:
                done, advance = await writing
            except StorageError as exc:
                error = error or exc
                unwritten.extend(chunk)
                return
            await self._apply(held, chunk, done, advance, owned, started, now, recovered=recovered)

        for chunk in commit_chunks(pairs, size):
            if error is not None:
                unwritten.extend(chunk)
                continue
            writing = asyncio.ensure_future(self._write(held, chunk, proofs, now, recovered=recovered))
            writing.add_done_callback(_retrieved)
            queued.append((chunk, writing))
            if len(queued) > 1:
                await settle()
        while queued:
            await settle()
        return unwritten, error

    async def _write(
        self, held: Held, pairs: Pairs, proofs: list[list[bytes]], now: float, *, recovered: bool
    ) -> tuple[Committed | Exception, list[bool]]:
        """One fenced commit (`Claims.commit`) on the writer thread: each job's receipt, new
        state and lease release; with, per job, whether its state moves (`advance`). A
        failure of the whole call raises StorageError."""
        ctx, table = self.ctx, self.ctx.table
        intent, attestation = held.intent, held.attestation
        previous = [table.state_or_new(item.spec.key) for _, item in pairs]
        # A recovered token for a root older than one anchored since (another replica went
        # on while this intent waited): its receipt is written, the job's state stays.
        advance = [not (recovered and anchored_since(state, intent)) for state in previous]
        rows = [state.row for state in previous]

        # A store that closes intents writes each job's new state in the commit's own
        # transaction; the others (the file store) take states from the engine's coalesced
        # save and are given none here (building them cost 5 us a receipt on the writer).
        with_states = ctx.claims.closes_intents

        # Built on a thread of their own, not the loop's (1,000 receipts) nor the writer's:
        # while the writer thread commits chunk k (waiting on the receipt writer process or
        # the database), chunk k+1 is built, with its files' bytes for a store that writes
        # files. One thread, so the chunks reach the writer in their order.
        encodes = ctx.claims.takes_bytes

        def build() -> tuple[list[Receipt], list[dict[str, Any] | None], list[bytes] | None] | Exception:
            try:
                states = [
                    succeeded(state, item.batch.root, None, now).to_dict() if moves and with_states else None
                    for state, (_, item), moves in zip(previous, pairs, advance, strict=True)
                ]
                # anchored_at: when the attestation came (a receipt written a day later from a
                # held attestation still states the time it was anchored, not the write's)
                at = intent.attested_at if intent.attested_at is not None else now
                makers: dict[int, AnchorReceipts] = {}  # by receipt version: one, but for an old journal's
                receipts = []
                for index, item in pairs:
                    version = entry_version(intent.entries[index])
                    make = makers.get(version) or makers.setdefault(
                        version, self._receipts(intent, attestation, version, at, len(proofs))
                    )
                    spec = item.spec
                    receipts.append(make.receipt(
                        namespace=spec.namespace, cadence=spec.cadence, batch_id=item.batch.id,
                        batch_root=item.batch.root, proof=proofs[index], leaf_index=index,
                        confirmations_required=spec.confirmations,
                    ))
                encoded = [receipt.to_bytes() for receipt in receipts] if encodes else None
            except Exception as exc:  # a bug, not a disk error: raised on the loop as it is
                return exc
            return receipts, states, encoded

        built = await asyncio.get_running_loop().run_in_executor(self._builder(), build)
        if isinstance(built, Exception):
            return built, advance
        receipts, states, encoded = built

        def write() -> Committed:
            return ctx.claims.commit(receipts, states, rows, intent.id, recovered=recovered, encoded=encoded)

        return await ctx.writer.run("receipt", ctx.receipts.root, write), advance

    def _builder(self) -> ThreadPoolExecutor:
        """The thread that builds the chunks' receipts (`_write`), made at the first chunk."""
        if self._building is None:
            self._building = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmsh-receipt-build")
        return self._building

    async def _apply(
        self, held: Held, pairs: Pairs, done: Committed | Exception, advance: list[bool], owned: set[JobKey],
        started: float, now: float, *, recovered: bool,
    ) -> None:
        """A chunk's commit, applied: a job whose lease passed to another replica gets
        nothing (the outcome is theirs); a job whose receipt alone could not be written is
        held with the attestation and fails with kind `storage`. The chunk's receipts, all
        durable now, are announced first (ReceiptWritten: a client hears of each as soon as
        it is safe); then the outcomes are applied; both with the loop running between
        slices of APPLY_SLICE seconds (each success is an event, a log line, a new state: a
        chunk of 1,024 in one go held /livez for 100 ms and more); a job not applied yet
        stays in flight, its receipt committed."""
        if isinstance(done, Exception):
            raise done  # a bug building the receipts, not a disk error
        ctx, table = self.ctx, self.ctx.table
        intent, attestation = held.intent, held.attestation
        duration = 0.0 if recovered else now - started
        tx_hash = str(attestation.data.get("tx_hash") or "")
        written_at = ctx.clock.now()
        slice_end = time.perf_counter() + APPLY_SLICE
        for (_, item), result in zip(pairs, done.paths, strict=True):
            if time.perf_counter() > slice_end:
                await asyncio.sleep(0)
                slice_end = time.perf_counter() + APPLY_SLICE
            if isinstance(result, Path):
                self.outcomes.written(item.spec, result, item.batch.root, attestation.status, now, written_at,
                                      tx_hash=tx_hash, observed=attestation.confirmations)
        lost: list[JobKey] = []
        failed: Pairs = []
        error: StorageError | None = None
        for (index, item), result, moves in zip(pairs, done.paths, advance, strict=True):
            if time.perf_counter() > slice_end:
                await asyncio.sleep(0)
                slice_end = time.perf_counter() + APPLY_SLICE
            key = item.spec.key
            if isinstance(result, Path):
                table.set_held(key, None)
                owned.discard(key)
                self.outcomes.succeed(item.spec, item.batch, result, now, duration, attestation.status, advance=moves)
                table.state(key).row = done.rows.get(key)
            elif result is None:  # another replica claimed it since: the outcome is theirs
                table.set_held(key, None)
                lost.append(key)
                self.outcomes.let_go(key, owned, ctx.soon())
            else:
                failed.append((index, item))
                error = StorageError("receipt", str(ctx.receipts.root / safe_name(item.spec.namespace)), result)
        if error is not None:
            ctx.storage_failed(error)
            self._hold(held, failed, error, owned, started)
        if lost:
            ctx.log.warning(
                "lease lost before the commit (another replica claimed these jobs): their receipts "
                "are not written from this attestation", intent=intent.id, target=intent.target,
                jobs=[str(k) for k in lost],
            )
            if len(lost) == len(held.intent.entries):
                self.outcomes.discarded(intent, "lease_lost", len(lost))

    def _superseded(self, held: Held, pairs: Pairs, owned: set[JobKey], why: str) -> None:
        """Another replica took this anchor over while this one was unresponsive: its outcome
        is theirs to write. This attestation is dropped (never a second receipt) and the
        jobs go back to the schedule, with the store's state at the next claim."""
        ctx = self.ctx
        ctx.log.warning(
            "anchor taken over by another replica (this one went a lease without a heartbeat); "
            "its attestation is not used", intent=held.intent.id, target=held.intent.target,
            jobs=len(pairs), reason=why,
        )
        held.intent.closed = True
        ctx.open.pop(held.intent.id, None)
        self.outcomes.discarded(held.intent, "taken_over", len(pairs))
        for _, item in pairs:
            key = item.spec.key
            ctx.table.set_held(key, None)
            if key in owned:
                self.outcomes.let_go(key, owned, ctx.soon())
        ctx.table.wake.set()

    def _hold(self, held: Held, pairs: Pairs, exc: StorageError, owned: set[JobKey], started: float) -> None:
        """Keep the attestation for these jobs and fail them (kind storage): the retry
        writes their receipts from it instead of anchoring again."""
        if not pairs:
            return
        ctx = self.ctx
        ctx.log.error(
            "attestation kept; receipts will be written from it once storage works again",
            intent=held.intent.id, target=held.intent.target, jobs=len(pairs),
            attestation_in_journal=held.durable, error=str(exc),
        )
        for _, item in pairs:
            key = item.spec.key
            ctx.table.set_held(key, held)
            if key in owned:
                owned.discard(key)
                ctx.table.flight.land(key)
                self.outcomes.fail(item.spec, exc, duration=ctx.clock.now() - started)

    def retry_held(self, held: Held) -> None:
        """Start writing the receipts of a held attestation (its jobs are due again)."""
        table = self.ctx.table
        keys = table.flight.board(
            [k for k in table.held_keys() if k in table and table[k].held is held], self.ctx.clock.now()
        )
        if not keys:
            return
        for key in keys:
            table.unschedule(key)
        self.ctx.spawn(self._finish_held(held, keys))

    async def _finish_held(self, held: Held, keys: list[JobKey]) -> None:
        ctx = self.ctx
        owned = set(keys)
        started = ctx.clock.now()
        try:
            wanted = set(keys)
            pairs, proofs = await self.pairs(held.intent, wanted)
            await self.complete(held, pairs, proofs, owned, started, recovered=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ctx.log.error(
                "writing the receipts of a kept attestation failed", intent=held.intent.id,
                error=describe(exc), error_type=type(exc).__name__,
            )
            for key in list(owned):
                record = ctx.table.get(key)
                if record is not None:
                    owned.discard(key)
                    ctx.table.flight.land(key)
                    self.outcomes.fail(record.spec, exc, duration=0.0)
        finally:
            self.outcomes.release(owned)

    async def pairs(self, intent: Intent, only: set[JobKey] | None = None) -> tuple[Pairs, list[list[bytes]]]:
        """(leaf index, job) of an intent's configured jobs (or of `only`), and all proofs."""
        entries = intent.entries
        def tree() -> tuple[bytes, list[list[bytes]]]:
            return aggregate([entry_leaf(e, intent.target) for e in entries])

        _, proofs = await asyncio.to_thread(tree) if len(entries) > WRITE_CHUNK else tree()
        pairs: Pairs = []
        for entry in entries:
            key = JobKey.parse(entry["job"])
            record = self.ctx.table.get(key)
            # Jobs removed from the config since get no receipt: nobody asks for them.
            if record is not None and (only is None or key in only):
                spec = record.spec
                batch = Batch(id=entry["batch"]["id"], root=entry["batch"]["root"], path=spec.source)
                pairs.append((entry["leaf_index"], Due(spec, batch, forced=False)))
        return pairs, proofs

    def _receipts(
        self, intent: Intent, attestation: Attestation, version: int, at: float, tree_size: int
    ) -> AnchorReceipts:
        """What the receipts of version `version` of this anchor share (core.receipts.AnchorReceipts)."""
        least, attested = (
            redundant_attestations(attestation.data, intent.target) if version == REDUNDANT_VERSION else (0, ())
        )
        return AnchorReceipts(
            target=intent.target,
            anchored_root="sha256:" + intent.digest,
            tree_size=tree_size,
            attestation={} if attested else attestation.data,
            status=attestation.status,
            confirmations_observed=attestation.confirmations,
            anchored_at=at,
            version=__version__,
            config_hash=self.ctx.config_hash,
            # The policy the call requested (one per intent), from the journal: a reload since
            # may have changed the job's.
            policy=intent.entries[0].get("policy"),
            receipt_version=version,
            least=least,
            attestations=attested,
        )
