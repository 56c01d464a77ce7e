"""The PostgreSQL store's database: a connection pool with a deadline on every call, the
schema and its migrations, and the names rows are known by (`postgresql:/...`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pydantic_core
from psycopg_pool import ConnectionPool, PoolTimeout

from core.errors import NetworkError, ValidationError
from core.store.postgres.causes import cause_of, display_url, first_line
from core.store.postgres.deadline import Unanswered, WatchedConnection, shorter_deadline
from core.store.postgres.deadline import check as check_connection

# The pool's own reconnection messages would go to stderr on every attempt while the
# database is down; the scheduler says it once (core/cluster.py), and again when it is back.
logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)

# A replica whose heartbeat (every lease / 3 s) is older than this many leases is gone: the
# intents it left are resolved by another (PgJournal.scan). One lease is three missed beats.
LIVENESS_LEASES = 1.0

SCHEMA_VERSION = 4
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
    # A receipt is mostly its attestation's base64 (an RFC 3161 token), which does not
    # compress: PostgreSQL tried (pglz) on every insert, failed, and stored it out of line
    # anyway; half of a 10,000-receipt commit's time went to that. Catalog only: no rewrite.
    (4, "receipts' documents stored out of line without trying to compress them", (
        """ALTER TABLE receipts ALTER COLUMN doc SET STORAGE EXTERNAL""",
    )),
)

NOTIFY_CHANNEL = "vmsh_cluster"
QUICK_SECONDS = 0.5  # the longest a read on the event loop waits for a connection
QUICK_STATEMENT_SECONDS = 1.0  # ... and for each answer (when shorter than the store's deadline)
# Every database call has a deadline (deadline.py): a hung server (a stalled VM, a
# frozen disk) fails nothing by itself and cannot enforce its own timeouts. The server's
# statement_timeout and lock_timeout are the deadline; the client's watchdog cuts the
# connection WATCHDOG_GRACE later. A replica's deadline is at most a third of its lease
# (open_postgres_store), so its heartbeat notices a hung store within a lease.
STATEMENT_SECONDS = 5.0
WATCHDOG_GRACE = 0.5
# A connection of its own (`Database.connect`) serves a session lock (PgSharedRecords'
# signer lock), whose wait is on another replica holding it while it signs and sends (a few
# RPCs of up to 10 s each), not on the database alone: its calls' deadline is this long.
SESSION_LOCK_SECONDS = 60.0
# A session idle inside a transaction for this many deadlines is ended by the server: a
# replica stopped mid-transaction (SIGSTOP, a paused VM) must not keep its row locks.
IDLE_IN_TRANSACTION_DEADLINES = 4


def json_text(obj: Any) -> str:
    """`obj` as JSON text for a jsonb parameter: what json.dumps writes as jsonb (NaN and
    Infinity as json.dumps writes them, which the server refuses), several times faster."""
    return pydantic_core.to_json(obj, inf_nan_mode="constants").decode()


class StoreUnavailable(NetworkError):
    """The database cannot be reached (or answered with a server error): retried with the
    network backoff; never a reason to give up on a job."""


def store_password(env: Mapping[str, str]) -> str | None:
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


def _unavailable(exc: BaseException, url: str, failure: BaseException | None = None) -> StoreUnavailable:
    """StoreUnavailable naming the cause and the fix (causes.py) when it is a known one:
    `failure` is the last failed connection attempt, when the pool gave up waiting for one
    ("couldn't get a connection after N sec" alone names no cause)."""
    for candidate in (failure, exc):
        if candidate is not None and (cause := cause_of(candidate, url)) is not None:
            return StoreUnavailable(f"PostgreSQL store: {cause}")
    # libpq's messages name host and port, never the password; still keep only the first line.
    return StoreUnavailable(f"PostgreSQL store unreachable: {first_line(failure or exc)}")


class _Failures:
    """The last failure of a Database's connection attempts (None once one succeeded)."""

    last: BaseException | None = None


def _recording(failures: _Failures) -> type[WatchedConnection]:
    """A connection class that keeps its failed attempts' errors in `failures`: the pool
    logs them only (and we silence its log), then says "couldn't get a connection"."""

    class Recording(WatchedConnection):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            try:
                conn = super().connect(conninfo, **kwargs)
            except psycopg.OperationalError as exc:
                failures.last = exc
                raise
            failures.last = None
            return conn

    return Recording


class Database:
    """A connection pool on the store's database, and the schema.

    `statement_seconds`: the deadline of every call (STATEMENT_SECONDS; None: none, for
    commands an operator runs by hand, whose migrations may take long). Each connection
    has the server enforce it (`statement_timeout`, `lock_timeout`) and the client too
    (core/store/postgres/deadline.py: the socket is shut down WATCHDOG_GRACE later, the call raises
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
        self._failures = _Failures()
        self._pool: ConnectionPool[WatchedConnection] = ConnectionPool(
            self.conninfo, min_size=1, max_size=max_size, open=False, timeout=connect_timeout,
            kwargs={"autocommit": False}, check=check_connection,
            connection_class=_recording(self._failures), configure=self._watched,
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
        except PoolTimeout as exc:  # an OperationalError naming no cause: the last attempt's
            raise _unavailable(exc, self._url, self._failures.last) from exc
        except (psycopg.OperationalError, psycopg.InterfaceError, Unanswered) as exc:
            raise _unavailable(exc, self._url) from exc

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
            raise _unavailable(exc, self._url) from exc
        conn.deadline = None if seconds is None else seconds + WATCHDOG_GRACE
        return conn

    def probe(self) -> None:
        """Connect once, outside the pool, and hang up: a wrong password, role, database or
        port raises StoreUnavailable naming it at once, where the pool would retry for its
        whole timeout before saying "couldn't get a connection" (commands run by hand)."""
        self.connect(deadline=self.statement_seconds).close()

    async def connect_async(self) -> psycopg.AsyncConnection[Any]:
        """A connection of its own on the event loop (LISTEN): the server's timeouts only;
        waiting for notifications is no call and has no deadline."""
        try:
            return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise _unavailable(exc, self._url) from exc

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
