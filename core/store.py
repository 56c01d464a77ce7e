"""The store: where a scheduler keeps what must survive it, behind one interface.

Two implementations with the same parts, chosen by `scheduler.store` (`VMSH_STORE`):
- `file` (the default): the data dir, as it always was (core/state.py, core/receipts.py),
  guarded by the data-dir lock: one scheduler.
- a PostgreSQL URL (core/pgstore.py): several schedulers (replicas) on one database, each
  job claimed under a lease before it is anchored.

The engine, the confirmation tracker, verify and the control API see only the parts
below: `state` (job state), `journal` (intents of backend calls in flight), `receipts`,
`claims` (fenced leases and the commit; the file store's always grant: a lone scheduler
owns every job, core/file_claims.py), `shared` (records
the backends of several replicas share; None with the file store) and `audit`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.jobs import JobKey
from core.receipts import Listing, Receipt, ReceiptStore
from core.state import Intent, IntentJournal, JobState, Row, StateStore

if TYPE_CHECKING:
    from core.anchors.base import SharedRecords
    from core.pgstore import Database


class Superseded(Exception):
    """A shared store's intent is no longer this replica's: another took it over (this one
    went a lease without a heartbeat, so it counted as gone) and resolves it. Committing as
    well would write a second receipt for the same roots."""


@dataclass
class Written:
    """What a state save did in a shared store. `rows`: the store's row now for each job it
    wrote or whose lease it released. `refused`: jobs whose write was refused because the
    state was built on a row that is no longer current (a stale version, or a fence another
    claim has replaced), with the store's state for them: the engine takes it instead."""

    rows: dict[JobKey, Row] = field(default_factory=dict)
    refused: dict[JobKey, JobState] = field(default_factory=dict)
    # For each job above, the row (the very object) its saved state was built on: the engine
    # takes the answer only for a state still built on it.
    based: dict[JobKey, Row | None] = field(default_factory=dict)


@dataclass
class Committed:
    """What one fenced commit wrote: per receipt its name; None when the job's lease was no
    longer this replica's (its fence was replaced: another replica claimed it); or the error
    that kept this one receipt from being written (the engine keeps the attestation for it).
    `rows`: the store's row now for each job committed."""

    paths: list[Path | Exception | None]
    rows: dict[JobKey, Row] = field(default_factory=dict)


class StateRepo(Protocol):
    path: Path

    def load(self) -> dict[JobKey, JobState]: ...

    def save(self, states: dict[JobKey, JobState]) -> None: ...

    @staticmethod
    def snapshot(states: dict[JobKey, JobState], holding: frozenset[JobKey] = ...) -> dict[str, Any]: ...

    def write(self, doc: dict[str, Any]) -> Written | None: ...

    def remove_stale_temps(self) -> list[Path]: ...


class JournalRepo(Protocol):
    folder: Path
    warnings: list[str]

    def open(
        self, target: str, entries: list[dict[str, Any]], digest_hex: str, at: float, tree_size: int | None = None
    ) -> Intent: ...

    def close_many(self, intents: list[Intent]) -> list[tuple[Intent, OSError]]: ...

    def quarantine(self, intent: Intent, reason: str) -> Path: ...

    def remove_stale_temps(self) -> list[Path]: ...

    def scan(self) -> tuple[list[Intent], list[str]]: ...

    def orphans(self) -> tuple[list[Intent], list[str]]:
        """Intents of other schedulers that are gone, adopted here (a shared store)."""
        ...


class ReceiptRepo(Protocol):
    """Receipts: files under the data dir (core/receipts.py ReceiptStore) or rows
    (core/pgstore.py PgReceiptStore). A receipt is named by a path: its file, or
    `postgresql:/receipts/<namespace>/<name>`."""

    root: Path

    def write_many(self, receipts: list[Receipt]) -> list[Path | Exception]: ...

    def load(self, path: str | os.PathLike[str]) -> Receipt: ...

    def confirm(self, path: str | os.PathLike[str], observed: int) -> Receipt: ...

    def recent(self, limit: int = 50) -> Listing: ...

    def for_job(self, namespace: str, cadence: str, limit: int = 50) -> Listing: ...

    def all_paths(self) -> list[Path]: ...

    def pending(self) -> list[tuple[Path, Receipt]]: ...

    def remove_stale_temps(self) -> list[Path]: ...


class Claims(Protocol):
    """Fenced leases on jobs and the commit of an anchor's outcome: the one anchoring path
    of the engine (claim, journal intent, backend call, commit) on every store. The file
    store's (core/file_claims.py) always grant: one scheduler under the data-dir lock. The
    PostgreSQL store's (core/pgstore.py PgStateStore) lease each job to one replica."""

    # True: commit removes the intent in the same transaction; False: the engine removes it
    # once the jobs' state is saved.
    closes_intents: bool
    # Receipts per commit call (the engine's loop runs between calls); None: all in one.
    commit_chunk: int | None

    def claim(self, jobs: dict[JobKey, JobState], lease_seconds: float, *, spread: bool = False) -> dict[JobKey, JobState]:
        """Lease these jobs (given as this scheduler knows them) where no other holder has
        them (`spread`: at most this replica's share); the ones granted, each with the
        store's current state, whose `row.fence` is the new lease's fencing token. Blocking."""
        ...

    def release(self, leases: list[tuple[JobKey, int]]) -> list[JobKey]:
        """Release these (job, fence) leases where the fence is still current; which were."""
        ...

    def renew(self, keys: list[JobKey], lease_seconds: float) -> int: ...

    def commit(
        self, receipts: list[Receipt], states: Sequence[dict[str, Any] | None], rows: Sequence[Row | None], intent_id: str,
        *, recovered: bool = False,
    ) -> Committed:
        """For each job whose lease fence in `rows` is still current: its receipt, its state
        (`last_receipt` set to the receipt's name; a state None leaves the job's as it is)
        and its lease released; with
        `closes_intents`, the intent removed, all in one transaction. `recovered`: receipts
        may exist from this very attestation already (a crash, a failed write): reused.
        Raises Superseded when the intent is no longer this replica's."""
        ...

    def changed_since(self, cursor: Any) -> tuple[dict[JobKey, JobState], Any]: ...


class Audit(Protocol):
    where: str  # for messages: the file, or the store's table

    def append(self, record: dict[str, Any]) -> None:
        """Durable when it returns (fsync, or a committed row)."""
        ...


class FileAudit:
    """The control API's audit log: `<data_dir>/audit.jsonl`, one JSON object per line.

    Rotated by size: a record that would take the file past `max_bytes` first renames it
    to `audit.jsonl.1` (`.1` to `.2`, ..., up to `keep`; the oldest is removed), so the log
    never holds more than about `max_bytes * (keep + 1)` on disk. What goes in (refused
    commands compact and rate-limited per uid) is decided by core/control_server.py."""

    MAX_BYTES = 10 * 1024 * 1024
    KEEP = 3

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        self.path = path
        self.where = str(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()  # appends come from worker threads

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.max_bytes:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    def _rotate(self) -> None:
        def numbered(n: int) -> Path:
            return self.path.with_name(f"{self.path.name}.{n}")

        if self.keep <= 0:
            self.path.unlink(missing_ok=True)
            return
        numbered(self.keep).unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            if numbered(n).exists():
                os.replace(numbered(n), numbered(n + 1))
        os.replace(self.path, numbered(1))


@dataclass
class Store:
    kind: str  # "file" or "postgresql"
    display: str  # what may be shown: the data dir, or postgresql://host:port/db
    state: StateRepo
    journal: JournalRepo
    receipts: ReceiptRepo
    audit: Audit
    claims: Claims
    shared: SharedRecords | None = None
    db: Database | None = field(default=None, repr=False)
    replica: str | None = None

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def file_store(data_dir: Path, state_file: Path) -> Store:
    from core.file_claims import FileClaims

    receipts = ReceiptStore(data_dir / "receipts")
    return Store(
        kind="file",
        display=str(data_dir),
        state=StateStore(state_file),
        journal=IntentJournal(data_dir / "journal"),
        receipts=receipts,
        audit=FileAudit(data_dir / "audit.jsonl"),
        claims=FileClaims(receipts),
    )


def postgres_store(url: str, *, env: Any, lease: float, replica: str | None = None) -> Store:
    """The PostgreSQL store on `url` (password from the environment, core/pgstore.py), for
    the replica `replica` (default: a new id, "<host>-<pid>-<random>")."""
    from core.pgstore import (
        LIVENESS_LEASES,
        STATEMENT_SECONDS,
        Database,
        PgAudit,
        PgJournal,
        PgReceiptStore,
        PgSharedRecords,
        PgStateStore,
        new_replica_id,
        store_password,
    )

    replica = replica or new_replica_id()

    # Every call's deadline at most a third of the lease: the heartbeat (every lease / 3)
    # sees a hung database within a lease, and a renewal that hangs fails before the lease ends.
    db = Database(url, password=store_password(env), statement_seconds=min(STATEMENT_SECONDS, lease / 3))
    state = PgStateStore(db, replica, liveness=lease * LIVENESS_LEASES)
    return Store(
        kind="postgresql",
        display=db.display,
        state=state,
        journal=PgJournal(db, replica, liveness=lease * LIVENESS_LEASES),
        receipts=PgReceiptStore(db, replica),
        audit=PgAudit(db, replica),
        claims=state,
        shared=PgSharedRecords(db),
        db=db,
        replica=replica,
    )


def is_postgres(store: str) -> bool:
    return store.startswith(("postgresql://", "postgres://"))


__all__ = ["Claims", "Committed", "JournalRepo", "StateRepo", "Store", "Written", "file_store", "is_postgres", "postgres_store"]
