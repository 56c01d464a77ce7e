"""A file store's job states and receipts copied into the PostgreSQL store (`vmsh-scheduler
store import`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.types.json import Jsonb

from core.jobs import JobKey, JobState, safe_name
from core.receipts import Receipt, ReceiptError
from core.store.postgres.database import Database
from core.store.postgres.receipts import PgReceiptStore


@dataclass
class FileStoreImport:
    states: int = 0  # job states copied
    states_kept: int = 0  # jobs the store already had a state for (theirs is kept)
    receipts: int = 0
    receipts_kept: int = 0  # already in the store (an earlier import)
    unreadable: list[str] = field(default_factory=list)  # "file: why"


def import_file_store(db: Database, states: dict[JobKey, JobState], receipts: Iterator[tuple[Path, Receipt | ReceiptError]]) -> FileStoreImport:
    """Copy a file store's job states and receipts into this store, each receipt under its
    file's name; what the store already has is kept (so an import can be run again). A
    state's `last_receipt` is renamed to the receipt's name in the store."""
    result = FileStoreImport()
    with db.tx() as conn:
        for path, receipt in receipts:
            if not isinstance(receipt, Receipt):
                result.unreadable.append(str(receipt))
                continue
            row = conn.execute(
                "INSERT INTO receipts (namespace, name, cadence, pending, anchored_root, batch_root, doc, written_by) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, 'import') ON CONFLICT DO NOTHING RETURNING name",
                (receipt.namespace, path.name, safe_name(receipt.cadence), receipt.status == "pending",
                 receipt.anchored_root, receipt.batch.root, Jsonb(receipt.to_json())),
            ).fetchone()
            if row is None:
                result.receipts_kept += 1
            else:
                result.receipts += 1
        for key, state in states.items():
            doc = state.to_dict()
            if state.last_receipt:
                doc["last_receipt"] = str(PgReceiptStore.ref(key.namespace, Path(state.last_receipt).name))
            row = conn.execute(
                "INSERT INTO jobs (job, state, version) VALUES (%s, %s, 1) ON CONFLICT (job) DO UPDATE "
                "SET state = excluded.state, version = jobs.version + 1, updated_at = clock_timestamp() "
                "WHERE jobs.state = '{}'::jsonb RETURNING version",
                (str(key), Jsonb(doc)),
            ).fetchone()
            if row is None:
                result.states_kept += 1
            else:
                result.states += 1
    return result
