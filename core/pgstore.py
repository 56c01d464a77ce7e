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

The same classes as the file store (core/state.py, core/receipts.py) with the same methods:
the engine cannot tell them apart. Every method here blocks; the engine calls them on its
writer thread (core/writer.py), like file writes. A database that cannot be reached raises
`StoreUnavailable`, a network error: the jobs back off with kind `network` and anchor again
once it is back, with no operator action.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from core.errors import NetworkError, StorageError, ValidationError
from core.jobs import JobKey, safe_name
from core.pgdeadline import Unanswered, WatchedConnection, shorter_deadline
from core.pgdeadline import check as check_connection
from core.receipts import Listing, Receipt, ReceiptError, ReceiptInvalid, ReceiptStore
from core.state import Intent, JobState, Row, StateError, new_intent
from core.store import Committed, Superseded, Written

# The pool's own reconnection messages would go to stderr on every attempt while the
# database is down; the scheduler says it once (core/cluster.py), and again when it is back.
logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)

# A replica whose heartbeat (every lease / 3 s) is older than this many leases is gone: the
# intents it left are resolved by another (PgJournal.scan). One lease is three missed beats.
LIVENESS_LEASES = 1.0

SCHEMA_VERSION = 3
STORE_ROOT = Path("postgresql:")  # receipts and intents are named under it, never files
RECEIPTS_ROOT = STORE_ROOT / "receipts"
INTENTS_ROOT = STORE_ROOT / "intents"

# Each step takes the schema from the version before to its own; `store migrate` runs the
# ones a database lacks, in one transaction each.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "jobs, intents, receipts, nonces, audit, replicas", (
        """CREATE TABLE vmsh_schema (version integer NOT NULL)""",
        """INSERT INTO vmsh_schema VALUES (0)""",
        """CREATE TABLE jobs (
            job text PRIMARY KEY,
            state jsonb NOT NULL DEFAULT '{}',
            version bigint NOT NULL DEFAULT 0,
            lease_owner text,
            lease_until timestamptz,
            updated_at timestamptz NOT NULL DEFAULT clock_timestamp())""",
        """CREATE INDEX jobs_updated ON jobs (updated_at)""",
        """CREATE TABLE intents (
            id text PRIMARY KEY,
            owner text NOT NULL,
            doc jsonb NOT NULL,
            opened_at timestamptz NOT NULL DEFAULT clock_timestamp())""",
        """CREATE TABLE receipts (
            namespace text NOT NULL,
            name text NOT NULL,
            cadence text NOT NULL,
            pending boolean NOT NULL,
            anchored_root text NOT NULL,
            batch_root text NOT NULL,
            doc jsonb NOT NULL,
            written_by text NOT NULL,
            PRIMARY KEY (namespace, name))""",
        """CREATE INDEX receipts_job ON receipts (namespace, cadence, name DESC)""",
        """CREATE INDEX receipts_name ON receipts (name DESC)""",
        """CREATE INDEX receipts_pending ON receipts (name) WHERE pending""",
        """CREATE TABLE evm_signers (signer text PRIMARY KEY, doc jsonb NOT NULL)""",
        """CREATE TABLE audit (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT
            clock_timestamp(), replica text NOT NULL, doc jsonb NOT NULL)""",
        """CREATE TABLE replicas (
            id text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            version text NOT NULL,
            config_hash text NOT NULL,
            started_at timestamptz NOT NULL,
            heartbeat_at timestamptz NOT NULL)""",
    )),
    (2, "cluster-wide flags; replicas report their jobs in flight", (
        """CREATE TABLE cluster (key text PRIMARY KEY, value jsonb NOT NULL)""",
        """ALTER TABLE replicas ADD COLUMN in_flight integer NOT NULL DEFAULT 0""",
    )),
    (3, "fenced leases (a fencing token per job that grows at every claim); replicas' clocks", (
        """ALTER TABLE jobs ADD COLUMN fence bigint NOT NULL DEFAULT 0""",
        """ALTER TABLE replicas ADD COLUMN clock_offset double precision, ADD COLUMN claim_refusal text""",
    )),
)

NOTIFY_CHANNEL = "vmsh_cluster"
QUICK_SECONDS = 0.5  # the longest a read on the event loop waits for a connection
QUICK_STATEMENT_SECONDS = 1.0  # ... and for each answer (when shorter than the store's deadline)
# Every database call has a deadline (core/pgdeadline.py): a hung server (a stalled VM, a
# frozen disk) fails nothing by itself and cannot enforce its own timeouts. The server's
# statement_timeout and lock_timeout are the deadline; the client's watchdog cuts the
# connection WATCHDOG_GRACE later. A replica's deadline is at most a third of its lease
# (core/store.py), so its heartbeat notices a hung store within a lease.
STATEMENT_SECONDS = 5.0
WATCHDOG_GRACE = 0.5
# A connection of its own (`Database.connect`) serves a session lock (PgSharedRecords'
# signer lock), whose wait is on another replica holding it while it signs and sends (a few
# RPCs of up to 10 s each), not on the database alone: its calls' deadline is this long.
SESSION_LOCK_SECONDS = 60.0
# A session idle inside a transaction for this many deadlines is ended by the server: a
# replica stopped mid-transaction (SIGSTOP, a paused VM) must not keep its row locks.
IDLE_IN_TRANSACTION_DEADLINES = 4


class StoreUnavailable(NetworkError):
    """The database cannot be reached (or answered with a server error): retried with the
    network backoff; never a reason to give up on a job."""


def store_password(env: dict[str, str] | os._Environ[str]) -> str | None:
    """VMSH_STORE_PASSWORD, else the first line of VMSH_STORE_PASSWORD_FILE (else libpq's
    PGPASSWORD / PGPASSFILE apply)."""
    if env.get("VMSH_STORE_PASSWORD"):
        return env["VMSH_STORE_PASSWORD"]
    path = env.get("VMSH_STORE_PASSWORD_FILE")
    if path:
        try:
            return Path(path).read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ValidationError(f"VMSH_STORE_PASSWORD_FILE {path}: cannot read a password: {exc}") from None
    return None


def display_url(url: str) -> str:
    """The store as it may be shown: postgresql://host:port/db, never a user or password."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    return f"postgresql://{host}:{port}/{info.get('dbname') or ''}"


def _unavailable(exc: BaseException) -> StoreUnavailable:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # libpq's messages name host and port, never the password; still keep only the first line.
    return StoreUnavailable(f"PostgreSQL store unreachable: {text}")


class Database:
    """A connection pool on the store's database, and the schema.

    `statement_seconds`: the deadline of every call (STATEMENT_SECONDS; None: none, for
    commands an operator runs by hand, whose migrations may take long). Each connection
    has the server enforce it (`statement_timeout`, `lock_timeout`) and the client too
    (core/pgdeadline.py: the socket is shut down WATCHDOG_GRACE later, the call raises
    StoreUnavailable, the pool drops the connection). Connecting takes at most
    `connect_timeout`, and so does waiting for a pooled connection."""

    def __init__(
        self, url: str, *, password: str | None = None, max_size: int = 4, connect_timeout: float = 3.0,
        statement_seconds: float | None = STATEMENT_SECONDS,
    ) -> None:
        if statement_seconds is not None and statement_seconds <= 0:
            raise ValueError(f"statement_seconds must be positive, got {statement_seconds}")
        kwargs: dict[str, Any] = {"connect_timeout": max(1, int(connect_timeout)), "application_name": "vmsh-scheduler"}
        if password:
            kwargs["password"] = password
        self._url = url
        self._kwargs = kwargs
        self.statement_seconds = statement_seconds
        self.conninfo = self._conninfo(statement_seconds)
        self.display = display_url(url)
        self._pool: ConnectionPool[WatchedConnection] = ConnectionPool(
            self.conninfo, min_size=1, max_size=max_size, open=False, timeout=connect_timeout,
            kwargs={"autocommit": False}, check=check_connection,
            connection_class=WatchedConnection, configure=self._watched,
            reconnect_timeout=0,  # never gives up: every call tries again
        )
        self._opened = False
        self._lock = threading.Lock()
        # Why the database cannot be reached, as the cluster's heartbeat last found (None:
        # it answered). Reads made on the event loop (listings) fail at once meanwhile.
        self.unreachable: str | None = None

    def _conninfo(self, seconds: float | None) -> str:
        """The URL with our settings; with a deadline, the server's timeouts in `options`
        (before any the URL has, which win)."""
        kwargs = dict(self._kwargs)
        if seconds is not None:
            ms = max(1, round(seconds * 1000))
            ours = (  # a lock wait ends a little earlier, with its own message
                f"-c statement_timeout={ms} -c lock_timeout={max(1, ms * 9 // 10)} "
                f"-c idle_in_transaction_session_timeout={ms * IDLE_IN_TRANSACTION_DEADLINES}"
            )
            theirs = psycopg.conninfo.conninfo_to_dict(self._url).get("options") or ""
            kwargs["options"] = f"{ours} {theirs}".strip()
        return psycopg.conninfo.make_conninfo(self._url, **kwargs)

    def _watched(self, conn: WatchedConnection) -> None:
        """The pool's `configure`: its connections' waits have the client's deadline."""
        conn.deadline = None if self.statement_seconds is None else self.statement_seconds + WATCHDOG_GRACE

    def _open(self) -> None:
        with self._lock:
            if not self._opened:
                self._pool.open(wait=False)
                self._opened = True

    @contextmanager
    def tx(self, *, quick: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """One transaction; any database failure is StoreUnavailable (a network error).
        `quick`: for reads on the event loop: fail at once while the store is known to be
        unreachable, wait at most QUICK_SECONDS for a connection and QUICK_STATEMENT_SECONDS
        for each answer."""
        self._open()
        if quick and self.unreachable is not None:
            raise StoreUnavailable(f"PostgreSQL store unreachable: {self.unreachable}")
        try:
            with (
                shorter_deadline(QUICK_STATEMENT_SECONDS) if quick else contextlib.nullcontext(),
                self._pool.connection(timeout=QUICK_SECONDS if quick else None) as conn,
                conn.transaction(),
            ):
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, Unanswered) as exc:
            raise _unavailable(exc) from exc
        except Exception as exc:
            if type(exc).__name__ == "PoolTimeout":
                raise _unavailable(exc) from exc
            raise

    def connect(self, *, deadline: float | None = None) -> psycopg.Connection[Any]:
        """A connection of its own (a session lock): not from the pool, autocommit. Each of
        its calls waits at most `deadline` s (default SESSION_LOCK_SECONDS; none for a
        Database without deadlines), the server's timeouts alike."""
        seconds = deadline if deadline is not None else (
            None if self.statement_seconds is None else max(self.statement_seconds, SESSION_LOCK_SECONDS)
        )
        try:
            conn = WatchedConnection.connect(self._conninfo(seconds), autocommit=True)
        except psycopg.OperationalError as exc:
            raise _unavailable(exc) from exc
        conn.deadline = None if seconds is None else seconds + WATCHDOG_GRACE
        return conn

    async def connect_async(self) -> psycopg.AsyncConnection[Any]:
        """A connection of its own on the event loop (LISTEN): the server's timeouts only;
        waiting for notifications is no call and has no deadline."""
        try:
            return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        if self._opened:
            self._pool.close(timeout=2)
            self._opened = False

    # ----- schema ---------------------------------------------------------------------

    def schema_version(self) -> int:
        with self.tx() as conn:
            row = conn.execute("SELECT to_regclass('vmsh_schema') IS NOT NULL").fetchone()
            if not row or not row[0]:
                return 0
            got = conn.execute("SELECT version FROM vmsh_schema").fetchone()
            return int(got[0]) if got else 0

    def migrate(self, target: int = SCHEMA_VERSION) -> tuple[int, int]:
        """Bring the schema to `target`; returns (version before, version after). Safe to
        run from several replicas at once (one advisory lock)."""
        if target > SCHEMA_VERSION:
            raise ValidationError(f"schema version {target} is newer than this scheduler knows ({SCHEMA_VERSION})")
        with self.tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(7473625)")  # 'vmsh'
            exists = conn.execute("SELECT to_regclass('vmsh_schema') IS NOT NULL").fetchone()
            before = 0
            if exists and exists[0]:
                row = conn.execute("SELECT version FROM vmsh_schema").fetchone()
                before = int(row[0]) if row else 0
            if before > SCHEMA_VERSION:
                raise ValidationError(
                    f"the store's schema is version {before}, newer than this scheduler's "
                    f"({SCHEMA_VERSION}): upgrade the scheduler"
                )
            for version, _what, statements in MIGRATIONS:
                if before < version <= target:
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("UPDATE vmsh_schema SET version = %s", (version,))
            return before, max(before, target)


# --------------------------------------------------------------------------- job state


def _state_of(doc: Any, row: Row) -> JobState:
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
                    out[key] = _state_of(state, Row(version))
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
                    result.refused[key], result.based[key] = _state_of(state, Row(int(version))), rows.get(job)
                    seen.append((job, state, int(version)))
        for job, state, version in seen:
            self._seen(job, state, version)
        return result

    closes_intents = True  # commit removes the intent in its transaction
    commit_chunk: int | None = None  # one transaction for a whole anchor's jobs

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
            # resolved (core/pgstore.py PgJournal.scan): its lease may have expired while the
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
            out[JobKey.parse(job)] = _state_of(state, Row(int(version), int(fence)))
        return out

    def commit(
        self, receipts: list[Receipt], states: Sequence[dict[str, Any] | None], rows: Sequence[Row | None], intent_id: str,
        *, recovered: bool = False,
    ) -> Committed:
        """Receipts, the jobs' states and the release of their leases, and the intent's
        removal, in one transaction (core/engine.py `_commit_in_store`), for the jobs whose
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
            current = {r[0] for r in conn.execute(
                "SELECT j.job FROM jobs j JOIN unnest(%s::text[], %s::bigint[]) AS r(job, fence) "
                "ON j.job = r.job AND j.fence = r.fence WHERE j.lease_owner = %s FOR UPDATE OF j",
                ([j for j, _ in fenced], [f for _, f in fenced], self.replica),
            )} if fenced else set()
            kept = [n for n, job in enumerate(jobs) if job in current]
            names = _insert_receipts(conn, [receipts[n] for n in kept], self.replica)
            paths: list[Path | Exception | None] = [None] * len(receipts)
            done = Committed(paths)
            seen: list[tuple[str, dict[str, Any], int]] = []
            for n, path in zip(kept, names, strict=True):
                paths[n] = path
                given = states[n]
                if given is None:  # the job's state stays: only its lease is released
                    got = conn.execute(
                        "UPDATE jobs SET version = version + 1, updated_at = clock_timestamp(), "
                        "lease_owner = NULL, lease_until = NULL WHERE job = %s RETURNING version, state",
                        (jobs[n],),
                    ).fetchone()
                    assert got is not None  # locked above
                    state = got[1] or {}
                else:
                    state = {**given, "last_receipt": str(path)}
                    got = conn.execute(
                        "UPDATE jobs SET state = %s, version = version + 1, updated_at = clock_timestamp(), "
                        "lease_owner = NULL, lease_until = NULL WHERE job = %s RETURNING version",
                        (Jsonb(state), jobs[n]),
                    ).fetchone()
                    assert got is not None  # locked above
                done.rows[JobKey.parse(jobs[n])] = Row(int(got[0]))
                seen.append((jobs[n], state, int(got[0])))
            conn.execute("DELETE FROM intents WHERE id = %s", (intent_id,))
        for job, state, version in seen:
            self._seen(job, state, version)
        return done

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
                out[JobKey.parse(job)] = _state_of(state, Row(int(version)))
            except ValueError:
                continue
        return out, newest

    def remove_stale_temps(self) -> list[Path]:
        return []


# --------------------------------------------------------------------------- intents


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

    def _write(self) -> None:
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


def _pg_intent(db: Database, owner: str, intent: Intent) -> PgIntent:
    made = PgIntent(**{f: getattr(intent, f) for f in (
        "id", "target", "digest", "entries", "tree_size", "opened_at", "notes", "attestation",
        "status", "confirmations", "path", "closed",
    )})
    made.db = db
    made.owner = owner
    return made


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
        base = new_intent(target, entries, digest_hex, at, tree_size)
        base.path = INTENTS_ROOT / base.id
        intent = _pg_intent(self.db, self.replica, base)
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
                    base = Intent.from_dict(doc, INTENTS_ROOT / intent_id)
                except ValueError as exc:
                    conn.execute("UPDATE intents SET owner = 'quarantine' WHERE id = %s", (intent_id,))
                    warnings.append(f"corrupt intent {intent_id} in the store ({exc}); moved to quarantine")
                    continue
                intents.append(_pg_intent(self.db, self.replica, base))
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
                leased[job] = _state_of(state, Row(int(version), int(fence)))
            for intent in intents:
                intent.leased = {JobKey.parse(e["job"]): leased[e["job"]] for e in intent.entries if e["job"] in leased}
        self.warnings = warnings
        return intents, warnings


# --------------------------------------------------------------------------- receipts


def _insert_receipts(conn: psycopg.Connection[Any], receipts: list[Receipt], replica: str) -> list[Path]:
    """Insert receipts under their file names (a taken name gets -2, -3, ...); their names."""
    paths: list[Path] = []
    for receipt in receipts:
        name = ReceiptStore.file_name(receipt)
        stem = name.removesuffix(".json")
        doc = Jsonb(receipt.to_json())
        for n in range(1, 1000):
            candidate = name if n == 1 else f"{stem}-{n}.json"
            row = conn.execute(
                "INSERT INTO receipts (namespace, name, cadence, pending, anchored_root, batch_root, doc, written_by) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING name",
                (receipt.namespace, candidate, safe_name(receipt.cadence), receipt.status == "pending",
                 receipt.anchored_root, receipt.batch.root, doc, replica),
            ).fetchone()
            if row is not None:
                paths.append(PgReceiptStore.ref(receipt.namespace, candidate))
                break
        else:  # pragma: no cover - 999 receipts of one job in one millisecond
            raise StorageError("receipt", str(PgReceiptStore.ref(receipt.namespace, name)), OSError("no free name"))
    return paths


class PgReceiptStore:
    """Receipts as rows (core.store.ReceiptRepo): the same documents, named
    `postgresql:/receipts/<ns>/<name>`."""

    def __init__(self, db: Database, replica: str) -> None:
        self.root = RECEIPTS_ROOT
        self.db = db
        self.replica = replica

    @staticmethod
    def ref(namespace: str, name: str) -> Path:
        return RECEIPTS_ROOT / safe_name(namespace) / name

    @staticmethod
    def _key(path: str | os.PathLike[str]) -> tuple[str, str]:
        p = Path(path)
        if p.parent.parent != RECEIPTS_ROOT:
            raise ReceiptInvalid(f"{p}: not a receipt of the PostgreSQL store")
        return ReceiptStore.namespace_of(p), p.name

    def write_many(self, receipts: list[Receipt]) -> list[Path | Exception]:
        with self.db.tx() as conn:
            return list(_insert_receipts(conn, receipts, self.replica))

    def load(self, path: str | os.PathLike[str]) -> Receipt:
        namespace, name = self._key(path)
        with self.db.tx() as conn:
            row = conn.execute(
                "SELECT doc FROM receipts WHERE namespace = %s AND name = %s", (namespace, name)
            ).fetchone()
        if row is None:
            raise ReceiptInvalid(f"{path}: no such receipt in the store")
        return Receipt.from_json(row[0])

    def confirm(self, path: str | os.PathLike[str], observed: int) -> Receipt:
        namespace, name = self._key(path)
        with self.db.tx() as conn:
            row = conn.execute(
                "SELECT doc FROM receipts WHERE namespace = %s AND name = %s FOR UPDATE", (namespace, name)
            ).fetchone()
            if row is None:
                raise ReceiptInvalid(f"{path}: no such receipt in the store")
            receipt = Receipt.from_json(row[0])
            if receipt.status != "confirmed":
                receipt = receipt.confirmed(observed)
                conn.execute(
                    "UPDATE receipts SET doc = %s, pending = false WHERE namespace = %s AND name = %s",
                    (Jsonb(receipt.to_json()), namespace, name),
                )
            return receipt

    def _listing(self, rows: list[tuple[str, str, Any]]) -> Listing:
        out: Listing = []
        for namespace, name, doc in rows:
            path = self.ref(namespace, name)
            try:
                out.append((path, Receipt.from_json(doc)))
            except ReceiptError as exc:
                out.append((path, exc))
            except Exception as exc:
                out.append((path, ReceiptInvalid(f"{path}: {exc}")))
        return out

    def recent(self, limit: int = 50) -> Listing:
        """Newest first. Listings are read on the event loop (dashboards, the control API):
        while the store is unreachable they are empty at once (/health says why)."""
        if limit <= 0:
            return []
        try:
            with self.db.tx(quick=True) as conn:
                rows = conn.execute(
                    "SELECT namespace, name, doc FROM receipts ORDER BY name DESC LIMIT %s", (limit,)
                ).fetchall()
        except StoreUnavailable:
            return []
        return self._listing(rows)

    def for_job(self, namespace: str, cadence: str, limit: int = 50) -> Listing:
        if limit <= 0:
            return []
        try:
            with self.db.tx(quick=True) as conn:
                rows = conn.execute(
                    "SELECT namespace, name, doc FROM receipts WHERE namespace = %s AND cadence = %s "
                    "ORDER BY name DESC LIMIT %s",
                    (namespace, safe_name(cadence), limit),
                ).fetchall()
        except StoreUnavailable:
            return []
        return self._listing(rows)

    def all_paths(self) -> list[Path]:
        with self.db.tx() as conn:
            rows = conn.execute("SELECT namespace, name FROM receipts ORDER BY name").fetchall()
        return [self.ref(ns, name) for ns, name in rows]

    def iter_documents(self, batch: int = 1000) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(namespace, name, document) of every receipt, in pages (export)."""
        after = ("", "")
        while True:
            with self.db.tx() as conn:
                rows = conn.execute(
                    "SELECT namespace, name, doc FROM receipts WHERE (namespace, name) > (%s, %s) "
                    "ORDER BY namespace, name LIMIT %s",
                    (after[0], after[1], batch),
                ).fetchall()
            if not rows:
                return
            yield from rows
            after = (rows[-1][0], rows[-1][1])

    def pending(self) -> list[tuple[Path, Receipt]]:
        with self.db.tx() as conn:
            rows = conn.execute(
                "SELECT namespace, name, doc FROM receipts WHERE pending ORDER BY name"
            ).fetchall()
        return [(p, r) for p, r in self._listing(rows) if isinstance(r, Receipt) and r.status == "pending"]

    def remove_stale_temps(self) -> list[Path]:
        return []


# --------------------------------------------------------------------------- from a file store


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


# --------------------------------------------------------------------------- the rest


class PgSignerRecord:
    """A signer's record (core/anchors/evm.py `_Outstanding`) as one row of `evm_signers`."""

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
    """The control API's audit log as rows (core/control_server.py writes audit.jsonl otherwise)."""

    def __init__(self, db: Database, replica: str) -> None:
        self.db = db
        self.replica = replica
        self.where = f"{db.display} audit"

    def append(self, record: dict[str, Any]) -> None:
        with self.db.tx() as conn:
            conn.execute("INSERT INTO audit (replica, doc) VALUES (%s, %s)", (self.replica, Jsonb(record)))


def new_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"

