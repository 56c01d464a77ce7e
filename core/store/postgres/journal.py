"""The PostgreSQL store's intent journal: one row per intent in `intents`, owned by the
replica that opened or adopted it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from core.jobs import JobKey, JobState, Row
from core.store.postgres.database import INTENTS_ROOT, STORE_ROOT, Database
from core.store.postgres.state import state_of
from core.store.protocols import Intent, StateError, Superseded


class PgIntent(Intent):
    """An intent row (owner: the replica that opened or adopted it)."""

    db: Database
    owner: str

    def insert(self) -> None:
        """The row, new (PgJournal.open)."""
        with self.db.tx() as conn:
            conn.execute(
                "INSERT INTO intents (id, owner, doc) VALUES (%s, %s, %s)",
                (self.id, self.owner, Jsonb(self.to_dict())),
            )

    def persist(self) -> None:
        """A note or the attestation, only while the intent is still this replica's: one
        that another replica took over (or resolved) is theirs, and a token obtained here
        late never lands in it (Superseded: the engine counts it discarded)."""
        if self.closed:
            raise StateError(f"{self.path}: intent {self.id} is already closed")
        with self.db.tx() as conn:
            updated = conn.execute(
                "UPDATE intents SET doc = %s WHERE id = %s AND owner = %s",
                (Jsonb(self.to_dict()), self.id, self.owner),
            ).rowcount
        if not updated:
            raise Superseded(f"intent {self.id} is no longer this replica's: another took it over")

    def close(self, *, sync_folder: bool = True) -> bool:
        self.closed = True
        with self.db.tx() as conn:
            return conn.execute(
                "DELETE FROM intents WHERE id = %s AND owner = %s", (self.id, self.owner)
            ).rowcount > 0


def _owned(intent: PgIntent, db: Database, owner: str) -> PgIntent:
    intent.db = db
    intent.owner = owner
    return intent


class PgJournal:
    """The intent journal in `intents` (the file store's IntentJournal)."""

    def __init__(self, db: Database, replica: str, *, liveness: float) -> None:
        self.db = db
        self.replica = replica
        self.liveness = liveness  # a replica whose heartbeat is older is gone
        self.folder = INTENTS_ROOT
        self.warnings: list[str] = []

    def open(
        self, target: str, entries: list[dict[str, Any]], digest_hex: str, at: float, tree_size: int | None = None
    ) -> Intent:
        intent = _owned(PgIntent.new(target, entries, digest_hex, at, tree_size), self.db, self.replica)
        intent.path = INTENTS_ROOT / intent.id
        intent.insert()
        return intent

    def close_many(self, intents: list[Intent]) -> list[tuple[Intent, OSError]]:
        if not intents:
            return []
        with self.db.tx() as conn:
            conn.execute("DELETE FROM intents WHERE id = ANY(%s)", ([i.id for i in intents],))
        for intent in intents:
            intent.closed = True
        return []

    def quarantine(self, intent: Intent, reason: str) -> Path:
        with self.db.tx() as conn:
            conn.execute(
                "UPDATE intents SET owner = %s, doc = doc || %s WHERE id = %s",
                ("quarantine", Jsonb({"quarantine_reason": reason}), intent.id),
            )
        intent.closed = True
        intent.path = STORE_ROOT / "quarantine" / intent.id
        return intent.path

    def remove_stale_temps(self) -> list[Path]:
        return []

    def orphans(self) -> tuple[list[Intent], list[str]]:
        """`scan` without this replica's own intents (those are in flight here)."""
        return self.scan(own=False)

    def scan(self, *, own: bool = True) -> tuple[list[Intent], list[str]]:
        """Intents to resolve: this replica's own (`own`: at start) and those of replicas gone
        (no heartbeat within the liveness window) whose jobs' leases have expired; adopted
        here."""
        intents: list[Intent] = []
        warnings: list[str] = []
        with self.db.tx() as conn:
            rows = conn.execute(
                """
                SELECT i.id, i.doc FROM intents i
                WHERE i.owner <> 'quarantine' AND ((%(own)s AND i.owner = %(me)s) OR (i.owner <> %(me)s AND
                    NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = i.owner
                                AND r.heartbeat_at > clock_timestamp() - make_interval(secs => %(live)s))
                    AND NOT EXISTS (SELECT 1 FROM jobs j, jsonb_array_elements(i.doc->'entries') e
                                    WHERE j.job = e->>'job' AND j.lease_owner IS NOT NULL
                                    AND j.lease_owner <> %(me)s AND j.lease_until > clock_timestamp())))
                ORDER BY i.id FOR UPDATE OF i SKIP LOCKED
                """,
                {"me": self.replica, "live": self.liveness, "own": own},
            ).fetchall()
            for intent_id, doc in rows:
                try:
                    found = PgIntent.from_dict(doc, INTENTS_ROOT / intent_id)
                except ValueError as exc:
                    conn.execute("UPDATE intents SET owner = 'quarantine' WHERE id = %s", (intent_id,))
                    warnings.append(f"corrupt intent {intent_id} in the store ({exc}); moved to quarantine")
                    continue
                intents.append(_owned(found, self.db, self.replica))
            adopted = [i.id for i in intents]
            conn.execute("UPDATE intents SET owner = %s WHERE id = ANY(%s)", (self.replica, adopted))
            jobs = sorted({e["job"] for i in intents for e in i.entries})
            # Hold their jobs while resolving, under new fences: nobody anchors them meanwhile,
            # and a replica that held them before can no longer write their outcome.
            leased: dict[str, JobState] = {}
            for job, state, version, fence in conn.execute(
                "UPDATE jobs SET lease_owner = %s, lease_until = clock_timestamp() + make_interval(secs => %s), "
                "fence = fence + 1 WHERE job = ANY(%s) RETURNING job, state, version, fence",
                (self.replica, self.liveness, jobs),
            ):
                leased[job] = state_of(state, Row(int(version), int(fence)))
            for intent in intents:
                intent.leased = {JobKey.parse(e["job"]): leased[e["job"]] for e in intent.entries if e["job"] in leased}
        self.warnings = warnings
        return intents, warnings
