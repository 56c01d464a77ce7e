"""The PostgreSQL store's receipts: the file store's documents as rows of `receipts`, named
`postgresql:/receipts/<namespace>/<name>` (the name the file store would give the file)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from core.errors import StorageError
from core.jobs import safe_name
from core.receipts import Receipt, ReceiptError, ReceiptInvalid, receipt_matches
from core.store.files.receipts import ReceiptStore
from core.store.postgres.database import RECEIPTS_ROOT, Database, StoreUnavailable, json_text
from core.store.protocols import Listing

# Receipts in the order of `insert_receipts`'s arrays, sent in binary (no quoting); `doc ||
# shared`: the part all of them share (json_parts), a jsonb parameter parsed once.
# Select-list unnests run in lockstep without being materialised (a FROM unnest(...) spills
# 10,000 documents to a temp file first).
_INSERT = (
    "INSERT INTO receipts (namespace, name, cadence, pending, anchored_root, batch_root, doc, written_by) "
    "SELECT unnest(%b::text[]), unnest(%b::text[]), unnest(%b::text[]), unnest(%b::bool[]), unnest(%b::text[]), "
    "unnest(%b::text[]), unnest(%b::text[])::jsonb || %b, %b::text"
)
# Receipts per statement of a pipelined insert: the next part is encoded while the server
# inserts this one.
PIPELINE_PART = 500
# The part of a document all receipts of one anchor share: its attestation (an RFC 3161
# token is three quarters of a receipt).
SHARED_KEYS = ("attestation", "attestations")

T = TypeVar("T")


def json_parts(receipts: list[Receipt]) -> tuple[list[str], Jsonb]:
    """Each receipt's document as JSON text, without the part (SHARED_KEYS) that is the
    same JSON in all of them, and that part as a JSON object (empty: none).

    PostgreSQL 15 parses JSON strings a character at a time: an anchor's token is parsed
    once, not once per receipt, and added to each document by the server (`||`, which
    copies it). The stored documents are the same jsonb values."""
    docs = [r.to_json() for r in receipts]
    shared: dict[str, Any] = {}
    for key in SHARED_KEYS:
        if not docs or key not in docs[0]:
            continue
        if all(key in d and same_json(d[key], docs[0][key]) for d in docs):
            shared[key] = docs[0][key]
            for d in docs:
                del d[key]
    return [json_text(d) for d in docs], Jsonb(shared, dumps=json_text)


def same_json(a: Any, b: Any) -> bool:
    """`a` and `b` are the same JSON value: the same objects (an anchor's receipts share their
    attestation's), or equal values of the same types (never 1 and true, or 1 and 1.0)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(v, b[k]) for k, v in a.items())
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(same_json, a, b))
    return bool(a == b)


def _arguments(receipts: list[Receipt], names: list[str], replica: str) -> tuple[Any, ...]:
    docs, shared = json_parts(receipts)
    return (
        [r.namespace for r in receipts], names, [safe_name(r.cadence) for r in receipts],
        [r.status == "pending" for r in receipts], [r.anchored_root for r in receipts],
        [r.batch.root for r in receipts], docs, shared, replica,
    )


def insert_receipts(
    conn: psycopg.Connection[Any], receipts: list[Receipt], replica: str,
    then: Callable[[int, list[Path]], list[T]] = lambda start, names: [],
) -> tuple[list[Path], list[T]]:
    """Insert receipts under their file names (a taken name gets -2, -3, ...); their names,
    and what `then` returned: `then(start, names)` sends the statements that depend on the
    names of receipts[start:start + len(names)] (the jobs' states).

    Pipelined: PIPELINE_PART receipts per statement, each followed by `then`'s, the next
    part encoded while the server writes this one, under a savepoint. When a name was
    taken (by an earlier receipt, or one of this call) all is undone, `then`'s statements
    too: the receipts are inserted again in one statement, each whose name was taken on
    its own under the next free name, and `then` runs again with all the final names."""
    names = [ReceiptStore.file_name(r) for r in receipts]
    try:
        with conn.transaction(), conn.pipeline():  # a savepoint
            paths: list[Path] = []
            after: list[T] = []
            for start in range(0, len(receipts), PIPELINE_PART):
                part = receipts[start : start + PIPELINE_PART]
                conn.execute(_INSERT, _arguments(part, names[start : start + PIPELINE_PART], replica))
                done = [PgReceiptStore.ref(r.namespace, names[start + n]) for n, r in enumerate(part)]
                after += then(start, done)
                paths += done
        return paths, after
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.table_name != "receipts":
            raise
    paths = _insert_naming_each(conn, receipts, names, replica)
    return paths, then(0, paths)


def _insert_naming_each(conn: psycopg.Connection[Any], receipts: list[Receipt], names: list[str], replica: str) -> list[Path]:
    """The receipts in one statement, each whose name was taken then on its own."""
    first: dict[tuple[str, str], int] = {}
    for n, (receipt, name) in enumerate(zip(receipts, names, strict=True)):
        first.setdefault((receipt.namespace, name), n)
    batch = list(first.values())
    got = {
        (ns, name) for ns, name in conn.execute(
            _INSERT + " ON CONFLICT DO NOTHING RETURNING namespace, name",
            _arguments([receipts[n] for n in batch], [names[n] for n in batch], replica),
        )
    }
    paths: list[Path] = []
    for n, (receipt, name) in enumerate(zip(receipts, names, strict=True)):
        if first.get((receipt.namespace, name)) == n and (receipt.namespace, name) in got:
            paths.append(PgReceiptStore.ref(receipt.namespace, name))
        else:
            paths.append(_insert_under_free_name(conn, receipt, name, replica))
    return paths


def _insert_under_free_name(conn: psycopg.Connection[Any], receipt: Receipt, name: str, replica: str) -> Path:
    """`name` is taken: the receipt under the first free `-<n>` name."""
    stem = name.removesuffix(".json")
    doc = Jsonb(receipt.to_json())
    for n in range(2, 1000):
        candidate = f"{stem}-{n}.json"
        row = conn.execute(
            "INSERT INTO receipts (namespace, name, cadence, pending, anchored_root, batch_root, doc, written_by) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING name",
            (receipt.namespace, candidate, safe_name(receipt.cadence), receipt.status == "pending",
             receipt.anchored_root, receipt.batch.root, doc, replica),
        ).fetchone()
        if row is not None:
            return PgReceiptStore.ref(receipt.namespace, candidate)
    # pragma: no cover - 999 receipts of one job in one millisecond
    raise StorageError("receipt", str(PgReceiptStore.ref(receipt.namespace, name)), OSError("no free name"))


class PgReceiptStore:
    """Receipts as rows (core.store.protocols.ReceiptRepo): the same documents, named
    `postgresql:/receipts/<ns>/<name>`."""

    def __init__(self, db: Database, replica: str) -> None:
        self.root = RECEIPTS_ROOT
        self.db = db
        self.replica = replica

    @staticmethod
    def ref(namespace: str, name: str) -> Path:
        return RECEIPTS_ROOT.joinpath(safe_name(namespace), name)

    @staticmethod
    def _key(path: str | os.PathLike[str]) -> tuple[str, str]:
        p = Path(path)
        if p.parent.parent != RECEIPTS_ROOT:
            raise ReceiptInvalid(f"{p}: not a receipt of the PostgreSQL store")
        return ReceiptStore.namespace_of(p), p.name

    def write_many(self, receipts: list[Receipt], encoded: Sequence[bytes] | None = None) -> list[Path | Exception]:
        with self.db.tx() as conn:  # rows of JSON documents: `encoded` (files' bytes) not used
            return list(insert_receipts(conn, receipts, self.replica)[0])

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

    def find(self, *, root: str | None = None, batch_id: str | None = None, limit: int = 50) -> Listing:
        """Newest first; by the batch_root and anchored_root columns, the batch id in the document."""
        where, args = ["TRUE"], []
        if root is not None:
            where.append("(batch_root = %s OR anchored_root = %s)")
            args += [root, root]
        if batch_id is not None:
            where.append("doc->'batch'->>'id' = %s")
            args.append(batch_id)
        with self.db.tx() as conn:
            rows = conn.execute(
                f"SELECT namespace, name, doc FROM receipts WHERE {' AND '.join(where)} "  # noqa: S608 (fixed clauses)
                "ORDER BY name DESC LIMIT %s",
                (*args, limit),
            ).fetchall()
        return [(p, r) for p, r in self._listing(rows) if not isinstance(r, Receipt) or receipt_matches(r, root=root, batch_id=batch_id)]

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

    def prepare(self, namespaces: Iterable[str]) -> int:
        return 0  # rows need no place made first

    def remove_stale_temps(self) -> list[Path]:
        return []
