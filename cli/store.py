"""`vmsh-scheduler store migrate` and `vmsh-scheduler export --out DIR`.

`store migrate` creates or migrates the PostgreSQL store's schema (a scheduler also
creates it on start when the database is empty, and refuses an older one). `export`
writes every receipt of the configured store as the files a file store would hold,
`DIR/<namespace percent-encoded>/<name>.json`, which `vmsh-scheduler verify` checks
offline with no database at all; beside them `DIR/.trust/` holds the certificates their
verifier needs (`verify --trust-bundle DIR/.trust DIR`), and `--format tsr` adds each RFC
3161 token as `<name>.tsr` for `openssl ts -verify -token_in`.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import safejson
from core.anchors.spec import TrustFile
from core.config import LoadedConfig
from core.errors import AnchorError
from core.fsutil import atomic_create_bytes, dumps_json, ensure_dir, fsync_dirs
from core.jobs import safe_name
from core.store import is_postgres

if TYPE_CHECKING:
    from core.store.postgres.database import Database

# Beside the receipts' folders (a namespace's folder never starts with a dot: safe_name),
# and skipped by verify, which reads no hidden folder.
TRUST_FOLDER = ".trust"


def fail(command: str, message: str) -> None:
    """A command's error line on stderr, naming the command."""
    print(f"vmsh-scheduler: {command}: {message}", file=sys.stderr)


# A command run by hand (or by an init container) may wait longer for the database than a
# running replica, whose heartbeat must notice an outage within one connect timeout.
COMMAND_CONNECT_SECONDS = 15.0


def _database(loaded: LoadedConfig) -> Database:
    from core.store.postgres.database import Database, store_password

    # No deadline on its statements: a migration or an import may take long, and an operator
    # (or the init container's own timeout) is watching; connecting is still bounded.
    return Database(
        loaded.config.scheduler.store, password=store_password(os.environ), connect_timeout=COMMAND_CONNECT_SECONDS,
        statement_seconds=None,
    )


def cmd_store_migrate(loaded: LoadedConfig) -> int:
    from core.store.postgres.database import SCHEMA_VERSION

    store = loaded.config.scheduler.store
    if not is_postgres(store):
        fail("store migrate", "scheduler.store is 'file' (set VMSH_STORE to a "
              "postgresql:// URL); a file store has no schema")
        return 2
    db = _database(loaded)
    try:
        db.probe()
        before, after = db.migrate()
    except AnchorError as exc:
        fail("store migrate", str(exc))
        return 1
    finally:
        db.close()
    if before == after:
        print(f"{db.display}: schema is at version {after} (current: {SCHEMA_VERSION}); nothing to do")
    else:
        print(f"{db.display}: schema migrated from version {before} to {after}")
    return 0


def cmd_export(loaded: LoadedConfig, out: Path, formats: Sequence[str] = ("json",)) -> int:
    """Every receipt of the store as a file under `out`, and beside them what a verifier
    needs: the certificates (`out/.trust/`) and, with "tsr" among `formats`, each RFC 3161
    token as `<name>.tsr`. An existing file is never replaced."""
    from core.store.postgres.causes import display_url

    cfg = loaded.config
    written = skipped = 0
    folders: list[Path] = []
    beside = Beside(loaded, out, formats=set(formats))
    try:
        for namespace, name, data in _documents(loaded):
            folder = out / safe_name(namespace)
            if folder not in folders:
                ensure_dir(folder, parents_to_sync=folders)
                folders.append(folder)
            if atomic_create_bytes(folder / name, data, sync_folder=False):
                written += 1
            else:
                skipped += 1
            beside.add(folder / name, data)
        beside.write_trust(folders)
        fsync_dirs(folders)
    except AnchorError as exc:
        fail("export", str(exc))
        return 1
    except OSError as exc:
        fail("export", f"{out}: {exc.strerror or exc}")
        return 1
    source = display_url(cfg.scheduler.store) if is_postgres(cfg.scheduler.store) else str(cfg.scheduler.data_dir)
    print(f"exported {written} receipt(s) from {source} to {out}"
          + (f" ({skipped} already there, kept)" if skipped else ""))
    beside.report()
    return 0


class Beside:
    """What export writes beside the receipts: `.tsr` tokens and the `.trust/` certificates
    each scheme says its receipts' verifier needs (its spec's `export_trust`)."""

    def __init__(self, loaded: LoadedConfig, out: Path, *, formats: set[str]) -> None:
        from core.verify import ReadOnlyVerifiers

        cfg = loaded.config
        self.out = out
        self.formats = formats
        self.tsr = "tsr" in formats
        self.tokens = 0
        self.proofs: dict[str, int] = {}  # export format -> proof files written
        self.unproved: dict[str, int] = {}  # export format -> receipts without one yet
        self.inputs = ReadOnlyVerifiers(settings_for=cfg.resolve_target, config_data_dir=Path(cfg.scheduler.data_dir))
        self.trust: dict[str, TrustFile] = {}
        self.problems: dict[str, str] = {}

    def add(self, path: Path, data: bytes) -> None:
        from core.anchors.base import CannotVerify
        from core.anchors.schemes import SCHEMES

        try:
            doc = safejson.loads(data)
            if "attestations" in doc:  # version 3 (redundant): each target's, <receipt>.<n>.tsr
                attested = [(str(a["target"]), dict(a["attestation"]), f".{n}") for n, a in enumerate(doc["attestations"])]
            else:
                attested = [(str(doc["target"]), dict(doc["attestation"]), "")]
        except (ValueError, KeyError, TypeError):
            return  # verify says what is wrong with such a receipt
        for target, attestation, suffix in attested:
            token = attestation.get("token")
            if self.tsr and attestation.get("scheme") == "rfc3161" and isinstance(token, str):
                try:
                    der = base64.b64decode(token, validate=True)
                except ValueError:
                    der = b""
                if der and atomic_create_bytes(path.with_suffix(f"{suffix}.tsr"), der, sync_folder=False):
                    self.tokens += 1
            spec = SCHEMES.get(target.partition(":")[0])
            if not suffix and spec is not None and spec.proof_file is not None and spec.proof_file[0] in self.formats:
                self._proof(path, doc, *spec.proof_file)
            if spec is None or spec.export_trust is None or target in self.problems:
                continue
            try:
                for found in spec.export_trust(target, attestation, self.inputs):
                    self.trust.setdefault(found.name, found)
            except CannotVerify as exc:
                self.problems[target] = str(exc)

    def _proof(self, path: Path, doc: dict[str, Any], name: str, make: Callable[[dict[str, Any]], bytes]) -> None:
        try:
            data = make(doc)
        except (ValueError, KeyError, TypeError):
            self.unproved[name] = self.unproved.get(name, 0) + 1
            return
        if atomic_create_bytes(path.with_suffix(f".{name}"), data, sync_folder=False):
            self.proofs[name] = self.proofs.get(name, 0) + 1

    def write_trust(self, folders: list[Path]) -> None:
        if not self.trust:
            return
        folder = self.out / TRUST_FOLDER
        ensure_dir(folder, parents_to_sync=folders)
        folders.append(folder)
        for found in self.trust.values():
            atomic_create_bytes(folder / found.name, found.pem, sync_folder=False)

    def report(self) -> None:
        if self.tsr:
            print(f"wrote {self.tokens} RFC 3161 token(s) as <receipt>.tsr beside their receipts")
        for name in sorted(self.formats - {"json", "tsr"}):
            print(f"wrote {self.proofs.get(name, 0)} proof(s) as <receipt>.{name} beside their receipts"
                  + (f" ({self.unproved[name]} receipt(s) of no such proof)" if self.unproved.get(name) else ""))
        for found in self.trust.values():
            print(f"wrote {self.out / TRUST_FOLDER / found.name}: from {found.origin}")
        if self.trust:
            print(f"check them with: vmsh-scheduler verify --trust-bundle {self.out / TRUST_FOLDER} {self.out}")
        for problem in self.problems.values():
            print(f"  no certificates written: {problem}", file=sys.stderr)


def cmd_store_import(loaded: LoadedConfig, source: Path) -> int:
    """Copy a file store (a data dir) into the configured PostgreSQL store: job states, so
    that nothing is anchored again at once, and receipts, so that dashboards, export and
    the confirmation tracker have the history. The data dir's scheduler must be stopped,
    with nothing left in its journal."""
    from core.store import StateError
    from core.store.files.journal import IntentJournal
    from core.store.files.lock import DataDirLock, LockHeld
    from core.store.files.receipts import ReceiptStore
    from core.store.files.state import StateStore
    from core.store.postgres.file_import import import_file_store

    if not is_postgres(loaded.config.scheduler.store):
        fail("store import", "scheduler.store is 'file' (set VMSH_STORE to the "
              "postgresql:// URL to import into)")
        return 2
    if not (source / "state").is_dir() and not (source / "receipts").is_dir():
        fail("store import", f"{source} is not a scheduler's data dir "
              "(no state/ and no receipts/ in it)")
        return 2
    lock = DataDirLock(source)
    try:
        lock.acquire()
    except LockHeld as exc:
        fail("store import", f"{exc}\n  stop that scheduler first")
        return 2
    db = _database(loaded)
    try:
        db.probe()
        intents, _warnings = IntentJournal(source / "journal").scan()
        if intents:
            fail("store import", f"{source / 'journal'} holds {len(intents)} anchor(s) "
                  "in flight: start that scheduler on its data dir once (it resolves them at start), "
                  "stop it, then import")
            return 2
        states = StateStore(source / "state" / "scheduler.json").load()
        db.migrate()
        result = import_file_store(db, states, ReceiptStore(source / "receipts").every())
    except StateError as exc:
        fail("store import", str(exc))
        return 2
    except AnchorError as exc:
        fail("store import", str(exc))
        return 1
    finally:
        db.close()
        lock.release()
    print(f"imported into {db.display}: {result.states} job state(s) ({result.states_kept} kept: "
          f"the store had them), {result.receipts} receipt(s) ({result.receipts_kept} already there)")
    for problem in result.unreadable:
        print(f"  not imported: {problem}", file=sys.stderr)
    return 1 if result.unreadable else 0


def _documents(loaded: LoadedConfig) -> Iterator[tuple[str, str, bytes]]:
    """(namespace, file name, bytes) of every receipt in the configured store."""
    cfg = loaded.config
    if is_postgres(cfg.scheduler.store):
        from core.store.postgres.receipts import PgReceiptStore

        db = _database(loaded)
        try:
            db.probe()
            for namespace, name, doc in PgReceiptStore(db, "export").iter_documents():
                yield namespace, name, dumps_json(doc)
        finally:
            db.close()
        return
    from core.store.files.receipts import ReceiptStore

    store = ReceiptStore(Path(cfg.scheduler.data_dir) / "receipts")
    for path in store.all_paths():
        yield ReceiptStore.namespace_of(path), path.name, path.read_bytes()
