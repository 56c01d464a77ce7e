"""What the backends of several replicas share through the PostgreSQL store (EVM signer
records and a lock per signer), and the control API's audit log as rows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from psycopg.types.json import Jsonb

from core.store.postgres.database import Database


class PgSignerRecord:
    """A signer's record (core/anchors/evm/backend.py `_Outstanding`) as one row of `evm_signers`."""

    def __init__(self, db: Database, signer: str) -> None:
        self.db = db
        self.signer = signer

    def load(self) -> dict[str, Any]:
        with self.db.tx() as conn:
            row = conn.execute("SELECT doc FROM evm_signers WHERE signer = %s", (self.signer,)).fetchone()
        doc: dict[str, Any] = dict(row[0]) if row else {}
        doc.setdefault("sent", {})
        doc.setdefault("outstanding", {})
        return doc

    def save(self, doc: dict[str, Any]) -> None:
        with self.db.tx() as conn:
            conn.execute(
                "INSERT INTO evm_signers (signer, doc) VALUES (%s, %s) "
                "ON CONFLICT (signer) DO UPDATE SET doc = excluded.doc",
                (self.signer, Jsonb(doc)),
            )


class PgSharedRecords:
    """core.anchors.base.SharedRecords on the store: signer records, and a lock per signer
    across replicas (a session advisory lock on a connection of its own, held while the
    backend picks a nonce, signs and sends)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def signer(self, name: str) -> PgSignerRecord:
        return PgSignerRecord(self.db, name)

    @contextlib.asynccontextmanager
    async def signer_lock(self, name: str) -> AsyncIterator[None]:
        conn = await asyncio.to_thread(self.db.connect)
        try:
            await asyncio.to_thread(conn.execute, "SELECT pg_advisory_lock(hashtext(%s))", ("evm:" + name,))
            yield
        finally:
            # Closing the session releases its advisory locks, also when unlock cannot run.
            await asyncio.to_thread(conn.close)


class PgAudit:
    """The control API's audit log as rows (the file store's is audit.jsonl)."""

    def __init__(self, db: Database, replica: str) -> None:
        self.db = db
        self.replica = replica
        self.where = f"{db.display} audit"

    def append(self, record: dict[str, Any]) -> None:
        with self.db.tx() as conn:
            conn.execute("INSERT INTO audit (replica, doc) VALUES (%s, %s)", (self.replica, Jsonb(record)))
