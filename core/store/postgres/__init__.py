"""The PostgreSQL store: several schedulers (replicas) on one database.

Everything durable lives in PostgreSQL (the data dir keeps only the control socket and the
embedded TSA's key): job state (`jobs`, one row per job with a version and a lease), the
intent journal (`intents`), receipts (`receipts`, the same JSON documents the file store
writes), EVM nonce records (`evm_signers`), the control audit log (`audit`), the replica
registry (`replicas`) and cluster-wide flags (`cluster`: paused).

Exactly once, by leases: a replica claims the jobs it is about to anchor in one
transaction (`SELECT ... FOR UPDATE SKIP LOCKED` on rows whose lease is free or expired,
then `lease_owner`/`lease_until` set), so two replicas never anchor one job at once; the
lease is renewed while the backend call is in flight (core/cluster.py) and released only
by the state write that records the outcome. A state write is refused for a row another
replica holds, and is conditional on the row's version (optimistic concurrency), so a
replica with a stale view never overwrites another's newer state; every write that depends
on a lease is fenced (PgStateStore). Lease times are the database's clock at the moment of
the statement (`clock_timestamp()`), never a replica's.

The same parts as the file store (core/store/files/) with the same methods:
the engine cannot tell them apart. Every method here blocks; the engine calls them on its
writer thread (core/writer.py), like file writes. A database that cannot be reached raises
`StoreUnavailable`, a network error: the jobs back off with kind `network` and anchor again
once it is back, with no operator action.

- `database.py`: `Database` (pool, schema, migrations), `StoreUnavailable`
- `deadline.py`: a deadline on every wait for the server, kept by the client
- `state.py`: job state rows, fenced leases and the commit (`PgStateStore`: StateRepo and Claims)
- `journal.py`: intents as rows (`PgJournal`)
- `receipts.py`: receipts as rows (`PgReceiptStore`)
- `records.py`: what replicas' backends share (`PgSharedRecords`), the audit log (`PgAudit`)
- `file_import.py`: a file store's states and receipts copied in (`store import`)
"""

from __future__ import annotations

import os
import socket

from core.store.postgres.database import (
    LIVENESS_LEASES,
    SCHEMA_VERSION,
    STATEMENT_SECONDS,
    Database,
    store_password,
)
from core.store.postgres.journal import PgJournal
from core.store.postgres.receipts import PgReceiptStore
from core.store.postgres.records import PgAudit, PgSharedRecords
from core.store.postgres.state import PgStateStore
from core.store.protocols import Store, StoreNotReady, StoreOptions


def new_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


def make_ready(db: Database) -> None:
    """The schema created on a new database; an older or newer one refused (StoreNotReady)."""
    version = db.schema_version()
    if version == 0:
        db.migrate()
    elif version < SCHEMA_VERSION:
        raise StoreNotReady(
            f"the store {db.display} has schema version {version}, this scheduler needs "
            f"{SCHEMA_VERSION}: run `vmsh-scheduler store migrate` first"
        )
    elif version > SCHEMA_VERSION:
        raise StoreNotReady(
            f"the store {db.display} has schema version {version}, newer than this "
            f"scheduler's ({SCHEMA_VERSION}): upgrade the scheduler"
        )


def open_postgres_store(url: str, options: StoreOptions) -> Store:
    """The PostgreSQL store on `url` (password from the environment: `store_password`), for
    the replica `options.replica` (default: a new id, "<host>-<pid>-<random>")."""
    replica = options.replica or new_replica_id()
    lease = options.lease
    # Every call's deadline at most a third of the lease: the heartbeat (every lease / 3)
    # sees a hung database within a lease, and a renewal that hangs fails before the lease ends.
    db = Database(url, password=store_password(options.env), statement_seconds=min(STATEMENT_SECONDS, lease / 3))
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
        make_ready=lambda: make_ready(db),
    )


__all__ = ["make_ready", "new_replica_id", "open_postgres_store"]
