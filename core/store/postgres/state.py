"""The PostgreSQL store's job state: one row per job with a version and a fenced lease;
the claims and the commit of an anchor's outcome."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from core.jobs import JobKey, JobState, Row
from core.receipts import Receipt
from core.store.postgres.database import STORE_ROOT, Database, json_text
from core.store.postgres.receipts import insert_receipts
from core.store.protocols import Committed, StateError, Superseded, Written


def state_of(doc: Any, row: Row) -> JobState:
    state = JobState.from_dict(doc) if doc else JobState()
    state.row = row
    return state


class PgStateStore:
    """Job state rows with fenced leases (the file store's StateStore, per row).

    Every lease carries a fencing token, `jobs.fence`, that grows by one at each claim (and
    each take-over of an intent's jobs). A write that depends on the lease (a state save, a
    commit, a release) is conditional on the fence the writer was granted, in the same
    statement: once another replica has claimed the job, the old holder's writes are
    refused, whatever its view of time. A state written without a lease is conditional on
    the row version that state was read at, carried by the state itself (`JobState.row`).
    Lease times are the database's clock at the moment of the statement
    (`clock_timestamp()`), so a claim that waited on a lock never gets a lease that has
    already run out."""

    def __init__(self, db: Database, replica: str, *, liveness: float = 30.0) -> None:
        self.db = db
        self.replica = replica
        self.liveness = liveness  # a registry row older than this is a replica gone
        self.path = STORE_ROOT / "jobs"
        self._versions: dict[str, int] = {}  # the newest version seen of each row
        self._written: dict[str, dict[str, Any]] = {}  # its state then (a save skips equal ones)

    def _seen(self, job: str, state: dict[str, Any] | None, version: int) -> None:
        if self._versions.get(job, -1) <= version:
            self._versions[job] = version
            self._written[job] = state or {}

    def load(self) -> dict[JobKey, JobState]:
        out: dict[JobKey, JobState] = {}
        with self.db.tx() as conn:
            for job, state, version in conn.execute("SELECT job, state, version FROM jobs"):
                try:
                    key = JobKey.parse(job)
                    out[key] = state_of(state, Row(version))
                except ValueError as exc:
                    raise StateError(f"{self.db.display} jobs: job {job!r}: {exc}") from exc
                self._seen(job, state, version)
        return out

    def save(self, states: dict[JobKey, JobState]) -> None:
        self.write(self.snapshot(states))

    @staticmethod
    def snapshot(states: dict[JobKey, JobState], holding: frozenset[JobKey] = frozenset()) -> dict[str, Any]:
        """The states to write, each with the row it was built on (taken now, on the
        engine's loop, with the state itself: never a version a later claim refreshed)."""
        return {
            "jobs": {f"{k[0]}/{k[1]}": s.to_dict() for k, s in states.items()},
            "rows": {f"{k[0]}/{k[1]}": s.row for k, s in states.items()},
            "holding": sorted(str(k) for k in holding),
        }

    def write(self, doc: dict[str, Any]) -> Written:
        """Write the rows that changed, and release the leases of jobs no longer held, in one
        transaction. A leased row is written only under its fence; an unleased one only at
        the version it was read at and while no other replica holds it. What was refused is
        returned with the store's state (`Written.refused`)."""
        rows: dict[str, Row | None] = doc.get("rows", {})
        holding = set(doc.get("holding", []))
        changed = [(job, state) for job, state in doc["jobs"].items() if self._written.get(job) != state]
        result = Written()
        refused: list[str] = []
        seen: list[tuple[str, dict[str, Any], int]] = []
        released: set[str] = set()
        with self.db.tx() as conn:
            for job, state in changed:
                row = rows.get(job)
                keep = job in holding
                if row is None:  # never read from the store: a job it does not have yet
                    got = conn.execute(
                        "INSERT INTO jobs (job, state, version) VALUES (%s, %s, 1) "
                        "ON CONFLICT (job) DO NOTHING RETURNING version",
                        (job, Jsonb(state)),
                    ).fetchone()
                    fence = None
                elif row.fence is not None:  # leased here: only under that lease's fence
                    got = conn.execute(
                        "UPDATE jobs SET state = %(state)s, version = version + 1, updated_at = clock_timestamp(), "
                        "lease_owner = CASE WHEN %(keep)s THEN lease_owner END, "
                        "lease_until = CASE WHEN %(keep)s THEN lease_until END "
                        "WHERE job = %(job)s AND lease_owner = %(me)s AND fence = %(fence)s RETURNING version",
                        {"state": Jsonb(state), "keep": keep, "job": job, "me": self.replica, "fence": row.fence},
                    ).fetchone()
                    fence = row.fence if keep else None
                    if got is not None and not keep:
                        released.add(job)
                else:  # not leased: only over the version it was read at, and nobody holds it
                    got = conn.execute(
                        "UPDATE jobs SET state = %s, version = version + 1, updated_at = clock_timestamp() "
                        "WHERE job = %s AND version = %s AND (lease_owner IS NULL OR lease_until < clock_timestamp()) "
                        "RETURNING version",
                        (Jsonb(state), job, row.version),
                    ).fetchone()
                    fence = None
                if got is None:
                    refused.append(job)
                    continue
                key = JobKey.parse(job)
                result.rows[key], result.based[key] = Row(int(got[0]), fence), row
                seen.append((job, state, int(got[0])))
            leases = [
                (job, row.fence) for job, row in rows.items()
                if row is not None and row.fence is not None and job not in holding
                and job not in released and job not in refused
            ]
            for job, version in self._release(conn, leases):
                key = JobKey.parse(job)
                result.rows[key], result.based[key] = Row(version), rows[job]
            if refused:
                for job, state, version in conn.execute(
                    "SELECT job, state, version FROM jobs WHERE job = ANY(%s)", (refused,)
                ):
                    key = JobKey.parse(job)
                    result.refused[key], result.based[key] = state_of(state, Row(int(version))), rows.get(job)
                    seen.append((job, state, int(version)))
        for job, state, version in seen:
            self._seen(job, state, version)
        return result

    closes_intents = True  # commit removes the intent in its transaction
    commit_chunk: int | None = None  # one transaction for a whole anchor's jobs
    takes_bytes = False  # receipts are rows of JSON documents, not files

    def claim(self, jobs: dict[JobKey, JobState], lease_seconds: float, *, spread: bool = False) -> dict[JobKey, JobState]:
        """Lease the jobs among `jobs` no other replica holds; their current state (from the
        database: another replica may have anchored them since this one last looked), each
        with its new fence (`row.fence`). `spread`: at most this replica's share, len(keys) /
        the live replicas (the registry, read in the same transaction), so that jobs due at
        once are spread over them."""
        names = [str(k) for k in jobs]
        out: dict[JobKey, JobState] = {}
        limit: int | None = None
        with self.db.tx() as conn:
            if spread:
                row = conn.execute(
                    "SELECT count(*) FROM replicas WHERE heartbeat_at > clock_timestamp() - make_interval(secs => %s) "
                    "AND claim_refusal IS NULL",
                    (self.liveness,),
                ).fetchone()
                alive = max(1, int(row[0]) if row else 1)
                limit = -(-len(names) // alive) if alive > 1 else None
            conn.execute(
                "INSERT INTO jobs (job) SELECT unnest(%s::text[]) ON CONFLICT (job) DO NOTHING", (names,)
            )
            # A job named by another replica's open intent is that intent's until it is
            # resolved (journal.py PgJournal.scan): its lease may have expired while the
            # anchor it was part of landed.
            mine = [r[0] for r in conn.execute(
                "SELECT job FROM jobs WHERE job = ANY(%(jobs)s) AND (lease_owner IS NULL "
                "OR lease_owner = %(me)s OR lease_until < clock_timestamp()) AND NOT EXISTS (SELECT 1 FROM intents i "
                "WHERE i.owner <> %(me)s AND i.doc->'entries' @> jsonb_build_array(jsonb_build_object('job', jobs.job))) "
                "FOR UPDATE OF jobs SKIP LOCKED LIMIT %(limit)s",
                {"jobs": names, "me": self.replica, "limit": limit},
            )]
            rows = conn.execute(
                "UPDATE jobs SET lease_owner = %s, lease_until = clock_timestamp() + make_interval(secs => %s), "
                "fence = fence + 1 WHERE job = ANY(%s) RETURNING job, state, version, fence",
                (self.replica, lease_seconds, mine),
            ).fetchall()
        for job, state, version, fence in rows:
            self._seen(job, state, version)
            out[JobKey.parse(job)] = state_of(state, Row(int(version), int(fence)))
        return out

    def commit(
        self, receipts: list[Receipt], states: Sequence[dict[str, Any] | None], rows: Sequence[Row | None], intent_id: str,
        *, recovered: bool = False, encoded: Sequence[bytes] | None = None,
    ) -> Committed:
        """Receipts, the jobs' states and the release of their leases, and the intent's
        removal, in one transaction (the engine's commit), for the jobs whose
        lease is still this replica's under the fence in `rows`; a job another replica has
        claimed since gets nothing (its path is None): the outcome is that replica's."""
        with self.db.tx() as conn:
            owner = conn.execute("SELECT owner FROM intents WHERE id = %s FOR UPDATE", (intent_id,)).fetchone()
            if owner is None or owner[0] != self.replica:
                raise Superseded(
                    f"intent {intent_id} was taken over by {owner[0] if owner else 'another replica, and resolved'}"
                )
            jobs = [f"{r.namespace}/{r.cadence}" for r in receipts]
            fenced = [(job, row.fence) for job, row in zip(jobs, rows, strict=True) if row is not None and row.fence is not None]
            # The rows still leased here under their fence, locked until the commit: the
            # version each has now is the one the states below are written over.
            current: dict[str, int] = dict(conn.execute(
                "SELECT j.job, j.version FROM jobs j JOIN (SELECT unnest(%b::text[]) AS job, unnest(%b::bigint[]) AS fence) r "
                "ON j.job = r.job AND j.fence = r.fence WHERE j.lease_owner = %b::text FOR UPDATE OF j",
                ([j for j, _ in fenced], [f for _, f in fenced], self.replica),
            ).fetchall()) if fenced else {}
            kept = [n for n, job in enumerate(jobs) if job in current]

            def settle(start: int, names: list[Path]) -> list[tuple[str, dict[str, Any], int]]:
                return self._settle(conn, [(jobs[n], states[n]) for n in kept[start : start + len(names)]], names, current)

            names, seen = insert_receipts(conn, [receipts[n] for n in kept], self.replica, settle)
            conn.execute("DELETE FROM intents WHERE id = %s", (intent_id,))
        paths: list[Path | Exception | None] = [None] * len(receipts)
        for n, path in zip(kept, names, strict=True):
            paths[n] = path
        done = Committed(paths)
        for job, state, version in seen:
            done.rows[JobKey.parse(job)] = Row(version)
            self._seen(job, state, version)
        return done

    @staticmethod
    def _settle(
        conn: psycopg.Connection[Any], jobs: list[tuple[str, dict[str, Any] | None]], names: list[Path],
        versions: dict[str, int],
    ) -> list[tuple[str, dict[str, Any], int]]:
        """The committed jobs' new states, their receipt's name as `last_receipt` (a job
        whose state is None keeps its own), their leases released: two statements whatever
        their number. The rows were locked by the commit at `versions`: each is written once,
        at the next; (job, state, version) of each."""
        given = {job: {**state, "last_receipt": str(name)} for (job, state), name in zip(jobs, names, strict=True) if state is not None}
        stays = [job for job, state in jobs if state is None]
        seen = [(job, state, versions[job] + 1) for job, state in given.items()]
        if given:
            conn.execute(
                "UPDATE jobs j SET state = u.state, version = j.version + 1, updated_at = clock_timestamp(), "
                "lease_owner = NULL, lease_until = NULL "
                "FROM (SELECT unnest(%b::text[]) AS job, unnest(%b::text[])::jsonb AS state) u WHERE j.job = u.job",
                (list(given), [json_text(state) for state in given.values()]),
            )
        if stays:
            rows = conn.execute(
                "UPDATE jobs SET version = version + 1, updated_at = clock_timestamp(), "
                "lease_owner = NULL, lease_until = NULL WHERE job = ANY(%b::text[]) RETURNING job, version, state",
                (stays,),
            ).fetchall()
            assert len(rows) == len(stays)  # every row locked by the commit
            seen += [(job, state or {}, int(version)) for job, version, state in rows]
        return seen

    def release(self, leases: list[tuple[JobKey, int]]) -> list[JobKey]:
        if not leases:
            return []
        with self.db.tx() as conn:
            released = self._release(conn, [(str(k), f) for k, f in leases])
        return [JobKey.parse(job) for job, _ in released]

    def _release(self, conn: psycopg.Connection[Any], leases: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Release these (job, fence) leases of this replica where the fence is still
        current; (job, version) of those released."""
        if not leases:
            return []
        rows = conn.execute(
            "UPDATE jobs j SET lease_owner = NULL, lease_until = NULL "
            "FROM unnest(%s::text[], %s::bigint[]) AS r(job, fence) "
            "WHERE j.job = r.job AND j.fence = r.fence AND j.lease_owner = %s RETURNING j.job, j.version",
            ([j for j, _ in leases], [f for _, f in leases], self.replica),
        ).fetchall()
        return [(job, int(version)) for job, version in rows]

    def renew(self, keys: list[JobKey], lease_seconds: float) -> int:
        if not keys:
            return 0
        with self.db.tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET lease_until = clock_timestamp() + make_interval(secs => %s) "
                "WHERE lease_owner = %s AND job = ANY(%s)",
                (lease_seconds, self.replica, [str(k) for k in keys]),
            )
            return cur.rowcount

    def changed_since(self, cursor: Any) -> tuple[dict[JobKey, JobState], Any]:
        """Rows other writers changed since `cursor` (None: none yet); the next cursor."""
        out: dict[JobKey, JobState] = {}
        with self.db.tx() as conn:
            if cursor is None:  # the first call reads every row once
                now = conn.execute("SELECT clock_timestamp()").fetchone()
                rows = conn.execute("SELECT job, state, version, updated_at FROM jobs").fetchall()
                cursor = now[0] if now else None
            else:  # a little overlap: a transaction that committed late is not missed
                rows = conn.execute(
                    "SELECT job, state, version, updated_at FROM jobs WHERE updated_at > %s - interval '5 seconds'",
                    (cursor,),
                ).fetchall()
        newest = cursor
        for job, state, version, updated_at in rows:
            newest = max(newest, updated_at)
            if self._versions.get(job, -1) >= version:
                continue  # ours, or already seen
            self._seen(job, state, version)
            try:
                out[JobKey.parse(job)] = state_of(state, Row(int(version)))
            except ValueError:
                continue
        return out, newest

    def remove_stale_temps(self) -> list[Path]:
        return []
