"""The store's parts, as the engine, the confirmation tracker, verify and the control API
see them: `StateRepo` (job state), `JournalRepo` (intents of backend calls in flight, each an
`Intent`), `ReceiptRepo`, `Claims` (fenced leases and the commit of an anchor's outcome),
`Audit`, and `Store`, which holds one of each.

The stores themselves (core/store/files/, core/store/postgres/) implement these and import
this module, never the other way; the engine types against these. core/store/__init__.py
opens one by its URL.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

from core.jobs import JobKey, JobState, Row
from core.receipts import Receipt, ReceiptError

if TYPE_CHECKING:
    from core.anchors.base import SharedRecords
    from core.store.postgres.database import Database

JOURNAL_VERSION = 1

# A listing of receipts: each receipt's name (its file, or a store's path for it), with the
# Receipt or the ReceiptError that reading it raised (a listing never stops at a bad one).
Listing = list[tuple[Path, "Receipt | ReceiptError"]]


class StateError(Exception):
    """A state or journal record that cannot be used as it is; the message names where."""


class StoreNotReady(Exception):
    """The store cannot be run on as it is (a database schema older or newer than this
    scheduler's); the message says what to do."""


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


# --------------------------------------------------------------------------- intents


def new_intent_id(at: float) -> str:
    """Time-sortable and unique: milliseconds since the epoch, then 8 random hex digits."""
    return f"{int(at * 1000):013d}-{secrets.token_hex(4)}"


@dataclass(eq=False)
class Intent:
    """One backend call in progress, as its journal keeps it (a file, a row: the journal's
    subclass says how, in `persist` and `close`). Every mutator writes it durably before
    returning.

    Its document: {"version": 1, "id", "target", "digest": "<64 hex>",
    "tree_size", "entries": [{"job", "batch": {"id", "root"}, "leaf_index"}], "opened_at",
    "notes": {...}, "attestation": {...} | null, "status": null | "pending" | "confirmed",
    "confirmations": int | null, "attested_at": epoch seconds | null}.
    """

    id: str
    target: str
    digest: str  # 64 lowercase hex digits (the engine does bytes.fromhex(intent.digest))
    entries: list[dict[str, Any]]
    tree_size: int
    opened_at: float
    notes: dict[str, Any] = field(default_factory=dict)
    attestation: dict[str, Any] | None = None
    status: str | None = None
    confirmations: int | None = None
    # When the attestation reached the scheduler (its clock): a receipt written later from it
    # (a held attestation, recovery after an outage) states this as its anchored_at.
    attested_at: float | None = None
    path: Path = field(default=Path())
    closed: bool = False
    # A shared store: the state of its jobs as leased to this replica when it adopted the
    # intent (at start, or taking over a gone replica's), each row with its new fence.
    leased: dict[JobKey, JobState] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def new(
        cls, target: str, entries: list[dict[str, Any]], digest_hex: str, at: float, tree_size: int | None = None
    ) -> Self:
        """A new intent (not written yet: its journal names and writes it); ValueError if the
        digest is not 64 hex digits or there are no entries."""
        digest_hex = digest_hex.lower().removeprefix("sha256:")
        if len(digest_hex) != 64 or any(c not in "0123456789abcdef" for c in digest_hex):
            raise ValueError(f"digest must be 64 hex digits, got {digest_hex!r}")
        if not entries:
            raise ValueError("an intent needs at least one entry")
        return cls(
            id=new_intent_id(at),
            target=target,
            digest=digest_hex,
            entries=[dict(e) for e in entries],
            tree_size=len(entries) if tree_size is None else tree_size,
            opened_at=at,
        )

    @property
    def digest_bytes(self) -> bytes:
        return bytes.fromhex(self.digest)

    @property
    def jobs(self) -> list[JobKey]:
        return [JobKey.parse(e["job"]) for e in self.entries]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": JOURNAL_VERSION,
            "id": self.id,
            "target": self.target,
            "digest": self.digest,
            "tree_size": self.tree_size,
            "entries": self.entries,
            "opened_at": self.opened_at,
            "notes": self.notes,
            "attestation": self.attestation,
            "status": self.status,
            "confirmations": self.confirmations,
            "attested_at": self.attested_at,
        }

    @classmethod
    def from_dict(cls, d: Any, path: Path) -> Self:
        if not isinstance(d, dict):
            raise ValueError(f"expected an object, got {type(d).__name__}")
        if d.get("version") != JOURNAL_VERSION:
            raise ValueError(f"unsupported version {d.get('version')!r}")
        for name, types in (
            ("id", str), ("target", str), ("digest", str), ("entries", list),
            ("tree_size", int), ("opened_at", (int, float)), ("notes", dict),
        ):
            if not isinstance(d.get(name), types) or isinstance(d.get(name), bool):
                raise ValueError(f"{name!r} is missing or has the wrong type")
        digest = d["digest"]
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError("'digest' must be 64 lowercase hex digits")
        for e in d["entries"]:
            if not (isinstance(e, dict) and isinstance(e.get("job"), str)):
                raise ValueError("each entry needs a 'job'")
            JobKey.parse(e["job"])
        att = d.get("attestation")
        if att is not None and not isinstance(att, dict):
            raise ValueError("'attestation' must be an object or null")
        attested_at = d.get("attested_at")  # absent in journals written before it was kept
        if attested_at is not None and (isinstance(attested_at, bool) or not isinstance(attested_at, (int, float))):
            raise ValueError("'attested_at' must be a number or null")
        return cls(
            id=d["id"],
            target=d["target"],
            digest=digest,
            entries=d["entries"],
            tree_size=d["tree_size"],
            opened_at=float(d["opened_at"]),
            notes=d["notes"],
            attestation=att,
            status=d.get("status"),
            confirmations=d.get("confirmations"),
            attested_at=None if attested_at is None else float(attested_at),
            path=path,
        )

    def persist(self) -> None:
        """Write the intent as it is now, durably (its journal's subclass)."""
        raise NotImplementedError(f"{type(self).__name__} has no journal to write to")

    def note(self, facts: dict[str, Any]) -> None:
        """Merge backend facts (e.g. {"tx_hash": ...}); durable when this returns (a JournalNote)."""
        self.notes.update(facts)
        self.persist()

    def attested(
        self, attestation: dict[str, Any], status: str, confirmations: int, at: float | None = None
    ) -> None:
        """Record the backend's attestation durably, before any receipt is written; `at`:
        when it reached the scheduler (the receipts' anchored_at, however late they are
        written)."""
        self.attestation = attestation
        self.status = status
        self.confirmations = confirmations
        self.attested_at = at
        self.persist()

    def close(self, *, sync_folder: bool = True) -> bool:
        """Remove the intent once its receipts and the state are written. Idempotent; True
        when there was one to remove. `sync_folder=False`: the journal makes it durable
        (a file journal's folder fsync, once for many: `JournalRepo.close_many`)."""
        raise NotImplementedError(f"{type(self).__name__} has no journal to remove it from")


# --------------------------------------------------------------------------- the parts


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
    """Receipts: files under the data dir (core/store/files/receipts.py ReceiptStore) or rows
    (core/store/postgres/receipts.py PgReceiptStore). A receipt is named by a path: its file, or
    `postgresql:/receipts/<namespace>/<name>`."""

    root: Path

    def write_many(self, receipts: list[Receipt], encoded: Sequence[bytes] | None = None) -> list[Path | Exception]:
        """New receipts (`encoded`: their `to_bytes()`, made beforehand), each one's path or
        its own error."""
        ...

    def load(self, path: str | os.PathLike[str]) -> Receipt: ...

    def confirm(self, path: str | os.PathLike[str], observed: int) -> Receipt: ...

    def recent(self, limit: int = 50) -> Listing: ...

    def for_job(self, namespace: str, cadence: str, limit: int = 50) -> Listing: ...

    def all_paths(self) -> list[Path]: ...

    def find(self, *, root: str | None = None, batch_id: str | None = None, limit: int = 50) -> Listing:
        """The newest `limit` receipts `core.receipts.receipt_matches` picks, newest first.
        Reads the whole store (the file store: each file holding the text; PostgreSQL:
        one query): blocking, for a thread or a command."""
        ...

    def pending(self) -> list[tuple[Path, Receipt]]: ...

    def prepare(self, namespaces: Iterable[str]) -> int:
        """Ready to write these namespaces' receipts (the file store: their folders made);
        how many places were made."""
        ...

    def remove_stale_temps(self) -> list[Path]: ...


class Claims(Protocol):
    """Fenced leases on jobs and the commit of an anchor's outcome: the one anchoring path
    of the engine (claim, journal intent, backend call, commit) on every store. The file
    store's (core/store/files/claims.py) always grant: one scheduler under the data-dir lock. The
    PostgreSQL store's (core/store/postgres/state.py PgStateStore) lease each job to one replica."""

    # True: commit removes the intent in the same transaction; False: the engine removes it
    # once the jobs' state is saved.
    closes_intents: bool
    # Receipts per commit call (the engine's loop runs between calls); None: all in one.
    commit_chunk: int | None
    # True: commit writes each receipt's file bytes, and takes them made beforehand
    # (`encoded`, made by the engine off the writer thread); False: it never uses them.
    takes_bytes: bool

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
        *, recovered: bool = False, encoded: Sequence[bytes] | None = None,
    ) -> Committed:
        """For each job whose lease fence in `rows` is still current: its receipt, its state
        (`last_receipt` set to the receipt's name; a state None leaves the job's as it is)
        and its lease released; with
        `closes_intents`, the intent removed, all in one transaction. `recovered`: receipts
        may exist from this very attestation already (a crash, a failed write): reused.
        `encoded`: each receipt's `to_bytes()`, when `takes_bytes`. Raises Superseded when
        the intent is no longer this replica's."""
        ...

    def changed_since(self, cursor: Any) -> tuple[dict[JobKey, JobState], Any]: ...


class Audit(Protocol):
    where: str  # for messages: the file, or the store's table

    def append(self, record: dict[str, Any]) -> None:
        """Durable when it returns (fsync, or a committed row)."""
        ...


@dataclass(frozen=True)
class StoreOptions:
    """What opening a store may need beside its URL; each store takes what it uses. The data
    dir (`state_file`: the file store's state, default `<data_dir>/state/scheduler.json`),
    the environment (a password), the lease of a shared store's claims, this replica's id
    (default: a new one)."""

    data_dir: Path
    state_file: Path | None = None
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    lease: float = 15.0
    replica: str | None = None


@dataclass
class Store:
    """One store's parts, opened by `core.store.open_store(url)`. `shared`: the records the
    backends of several replicas share (None: a store with one scheduler); `db`: the
    PostgreSQL store's database (the cluster's heartbeat, `store` commands), else None.
    `make_ready()`: before a scheduler runs on it (a new database's schema created; raises
    StoreNotReady when it cannot be used as it is)."""

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
    make_ready: Callable[[], None] = field(default=lambda: None, repr=False)
    # `keep_lock(fd)`: the data dir's lock, for a store that writes from a child process
    # (the file store's receipts) to hold in it; `release()`: that child ended, at close.
    keep_lock: Callable[[int], None] = field(default=lambda fd: None, repr=False)
    release: Callable[[], None] = field(default=lambda: None, repr=False)

    def close(self) -> None:
        self.release()
        if self.db is not None:
            self.db.close()


