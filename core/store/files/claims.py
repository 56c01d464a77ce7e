"""The file store's claims: a lone scheduler's, under the data-dir lock.

The engine takes one anchoring path whatever the store: claim, journal
intent, backend call, commit. With the data dir there is one scheduler, so a claim always
grants; each grant still carries a fencing token (in memory: the lock guarantees no other
process writes here, and a restart starts from nothing in flight), and a commit or release
under a token that is no longer current is refused, as the shared store's are
(core/store/postgres/state.py PgStateStore).

`commit` writes receipts as files (`ReceiptStore.write_many`: a group commit of a few
flushes of the file system per call); a receipt that cannot be written comes back as its error, and the engine keeps the
attestation for that job. The state and the intent's removal follow through the engine's
coalesced state save (`closes_intents` is False), as they always did.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.jobs import JobKey, JobState, Row
from core.receipts import Receipt
from core.store.protocols import Committed, ReceiptRepo

LOOK_BACK = 10  # receipts of a job searched for one already written from a token


UNLEASED = Row(0)  # a committed job's row: nothing leased, nothing versioned (the file store)


class FileClaims:
    closes_intents = False  # the engine removes the intent once the state is saved
    # Receipts per commit: a few flushes of the file system each (ReceiptStore.write_many);
    # the loop runs between chunks.
    commit_chunk: int | None = 1024
    takes_bytes = True  # receipt files: their bytes made by the engine before the commit

    def __init__(self, receipts: ReceiptRepo) -> None:
        self.receipts = receipts
        self._fences: dict[JobKey, int] = {}
        self._next = itertools.count(1)
        # Held while fences are added, and while an emptied `_fences` is made a new dict (it
        # kept its table: 290 KiB after a pass of 10,000 jobs): commits end on a writer
        # thread, and a fence added meanwhile must not go with the old dict.
        self._fences_lock = threading.Lock()

    def claim(self, jobs: dict[JobKey, JobState], lease_seconds: float, *, spread: bool = False) -> dict[JobKey, JobState]:
        """Every job, as the engine knows it, under a new fence."""
        out: dict[JobKey, JobState] = {}
        with self._fences_lock:
            fences = self._fences
            for key, state in jobs.items():
                fence = fences[key] = next(self._next)
                out[key] = state.with_row(Row(0, fence))
        return out

    def _current(self, key: JobKey, row: Row | None) -> bool:
        return row is not None and row.fence is not None and self._fences.get(key) == row.fence

    def release(self, leases: list[tuple[JobKey, int]]) -> list[JobKey]:
        released = [key for key, fence in leases if self._fences.get(key) == fence]
        for key in released:
            del self._fences[key]
        self._let_go_of_table()
        return released

    def _let_go_of_table(self) -> None:
        """A new `_fences` when it is empty (no fence is added meanwhile)."""
        if not self._fences:
            with self._fences_lock:
                if not self._fences:
                    self._fences = {}

    def renew(self, keys: list[JobKey], lease_seconds: float) -> int:
        return sum(1 for key in keys if key in self._fences)

    def changed_since(self, cursor: Any) -> tuple[dict[JobKey, JobState], Any]:
        return {}, cursor  # nobody else writes here

    def commit(
        self, receipts: list[Receipt], states: Sequence[dict[str, Any] | None], rows: Sequence[Row | None], intent_id: str,
        *, recovered: bool = False, encoded: Sequence[bytes] | None = None,
    ) -> Committed:
        """The receipts of the jobs whose fence is current, as files. `recovered`: a receipt
        already written from this very token (before a crash or a failed write) is reused,
        matched by the token itself, never by the root alone."""
        keys = [JobKey(r.namespace, r.cadence) for r in receipts]
        paths: list[Path | Exception | None] = [None] * len(receipts)
        current = [n for n, (key, row) in enumerate(zip(keys, rows, strict=True)) if self._current(key, row)]
        fresh: list[int] = []
        for n in current:
            found = self._written_from(receipts[n]) if recovered else None
            if found is None:
                fresh.append(n)
            else:
                paths[n] = found
        written = self.receipts.write_many(
            [receipts[n] for n in fresh], None if encoded is None else [encoded[n] for n in fresh]
        )
        for n, result in zip(fresh, written, strict=True):
            paths[n] = result
        done = Committed(paths)
        for n in current:
            if isinstance(paths[n], Path):
                self._fences.pop(keys[n], None)
                done.rows[keys[n]] = UNLEASED  # one object for every job (a Row is frozen)
        self._let_go_of_table()
        return done

    def _written_from(self, receipt: Receipt) -> Path | None:
        token = dict(receipt.attestation)
        for path, found in self.receipts.for_job(receipt.namespace, receipt.cadence, LOOK_BACK):
            if (
                isinstance(found, Receipt)
                and found.anchored_root == receipt.anchored_root
                and found.batch.root == receipt.batch.root
                and dict(found.attestation) == token
                and [a.to_json() for a in found.attestations] == [a.to_json() for a in receipt.attestations]
            ):
                return path
        return None


__all__ = ["FileClaims"]
