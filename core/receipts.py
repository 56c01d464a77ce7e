"""Receipts: one JSON file per job anchored, its store, and its verification.

Format (DESIGN.md, with the audit path made self-describing; docs/architecture.md):

    {"version": 1, "namespace", "cadence", "target",
     "batch": {"id", "root": "sha256:<hex>"},
     "anchored_root": "sha256:<hex>", "proof": ["sha256:<hex>", ...],
     "leaf_index", "tree_size", "attestation": {...scheme-specific...},
     "status": "pending" | "confirmed", "confirmations": {"required", "observed"},
     "anchored_at": "2026-01-01T00:00:00.000Z", "scheduler": {"version", "config_hash"},
     "policy": "<dotted OID>"}

`policy` is present only when a policy was requested (the cadence's or the target's
policyOID): the attestation must be under it, and `verify` checks that it is.

In memory a receipt is a `Receipt`: immutable and typed, parsed once where a file is read
(`Receipt.from_json`, which raises ReceiptInvalid naming the field) and turned back into
exactly this document by `to_json()` (same keys, same order, so a file rewritten by
`confirm()` differs only in the fields it changes).

Location: `<data_dir>/receipts/<safe_name(namespace)>/<YYYYmmddTHHMMSSfffZ>-<cadence>-<12 hex>.json`
(the 12 hex digits start the batch root). A receipt is written once, atomically, never
over an existing one (a `-<n>` suffix is added on a name clash); the only rewrite allowed
is `confirm()`, moving `pending` to `confirmed`.

Pending index: `<data_dir>/receipts/.pending/<safe namespace>/<receipt file name minus
.json>`, an empty marker per pending receipt (no `.json`, so globs for receipts skip it),
so that finding the pending ones at start reads only them, not every receipt ever
written. The marker is created (and its folder fsynced) before the receipt, and removed
after `confirm()`: every pending receipt has a marker, and a marker whose receipt is
missing or confirmed is dropped when read. The index is trusted only once
`.pending/.complete` exists; a data dir from before the index (or a crash while building
it) is scanned in full once and indexed.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from core import safejson
from core.anchors.base import CannotVerify, VerificationFailed
from core.fsutil import (
    atomic_create_bytes,
    atomic_write_bytes,
    create_empty,
    dumps_json,
    ensure_dir,
    fsync_dir,
    fsync_dirs,
    is_temp_name,
    remove_stale_temps,
)
from core.jobs import safe_name, unsafe_name
from core.merkle import root_from_path

RECEIPT_VERSION = 1
STATUSES = ("pending", "confirmed")
_ROOT_RE = re.compile(r"sha256:[0-9a-f]{64}")
_NAME_RE = re.compile(r"^(\d{8}T\d{9}Z)-(.+)-([0-9a-f]{12})(?:-(\d+))?\.json$")


class ReceiptError(Exception):
    """A receipt file that cannot be read or stored; the message names the file."""


class ReceiptInvalid(ReceiptError):
    """A receipt that does not prove what it claims; `reason` says why (and `path`, when
    known, which file: it then starts the message)."""

    def __init__(self, reason: str, path: Path | None = None) -> None:
        super().__init__(reason if path is None else f"{path}: {reason}")
        self.reason = reason
        self.path = path


class ReceiptUncheckable(ReceiptError):
    """A receipt that cannot be checked here: something it needs (a trust bundle, a node) is
    missing; `reason` says what to pass. Not a verdict on the receipt."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- building


def root_text(value: bytes | str) -> str:
    """32 digest bytes or "sha256:<hex>" (any case) -> "sha256:<64 lowercase hex>"."""
    if isinstance(value, bytes | bytearray):
        if len(value) != 32:
            raise ValueError(f"a SHA-256 digest has 32 bytes, got {len(value)}")
        return "sha256:" + bytes(value).hex()
    text = value.strip()
    if text[:7].lower() == "sha256:":
        text = "sha256:" + text[7:].lower()
    if not _ROOT_RE.fullmatch(text):
        raise ValueError(f"{value!r} is not sha256:<64 hex>")
    return text


def root_bytes(value: object, what: str = "root") -> bytes:
    """Parse "sha256:<64 lowercase hex>" to 32 bytes; ReceiptInvalid on anything else."""
    return bytes.fromhex(_root(value, what)[7:])


def iso_utc(at: float) -> str:
    """Epoch seconds -> "2026-01-01T00:00:00.123Z" (UTC, milliseconds)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso_utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class BatchRef:
    """The batch a receipt is for: its id and "sha256:<hex>" root."""

    id: str
    root: str


@dataclass(frozen=True, slots=True)
class Confirmations:
    """Blocks the target requires for `confirmed`, and how many were seen."""

    required: int
    observed: int


@dataclass(frozen=True, slots=True)
class SchedulerStamp:
    """Which scheduler wrote the receipt, under which config."""

    version: str
    config_hash: str


def _field(doc: Mapping[str, Any], name: str, prefix: str = "") -> Any:
    if name not in doc:
        raise ReceiptInvalid(f"{prefix}{name} is missing")
    return doc[name]


def _text(doc: Mapping[str, Any], name: str, prefix: str = "", *, empty: bool = False) -> str:
    value = _field(doc, name, prefix)
    if not isinstance(value, str) or (not empty and not value):
        raise ReceiptInvalid(f"{prefix}{name} must be a non-empty string, got {value!r}")
    return value


def _int(doc: Mapping[str, Any], name: str, prefix: str = "") -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReceiptInvalid(f"{prefix}{name} must be an integer, got {value!r}")
    return value


def _root(value: object, what: str) -> str:
    if not isinstance(value, str) or not _ROOT_RE.fullmatch(value):
        raise ReceiptInvalid(f"{what} is not sha256:<64 lowercase hex>: {value!r}")
    return value


def _object(doc: Mapping[str, Any], name: str, what: str) -> Mapping[str, Any]:
    value = doc.get(name)
    if not isinstance(value, dict):
        raise ReceiptInvalid(f"{name} must be an object{what}")
    return value


@dataclass(frozen=True, slots=True)
class Receipt:
    """One receipt, as the JSON document of the module docstring describes it.

    Roots are kept as their "sha256:<64 lowercase hex>" text; `check_proof` turns them
    into digests. `attestation` is the backend's scheme-specific object, read-only.
    """

    namespace: str
    cadence: str
    target: str
    batch: BatchRef
    anchored_root: str
    proof: tuple[str, ...]
    leaf_index: int
    tree_size: int
    attestation: Mapping[str, Any]
    status: str  # one of STATUSES
    confirmations: Confirmations
    anchored_at: str
    scheduler: SchedulerStamp
    policy: str | None = None
    version: int = RECEIPT_VERSION

    @classmethod
    def from_json(cls, doc: object) -> Receipt:
        """Validate a parsed JSON document; ReceiptInvalid naming the first bad field.

        The fields the proof rests on are checked first, in the order `check_proof`
        has always named them."""
        if not isinstance(doc, dict):
            raise ReceiptInvalid("a receipt is a JSON object")
        if doc.get("version") != RECEIPT_VERSION:
            raise ReceiptInvalid(f"unsupported receipt version {doc.get('version')!r}")
        batch = _object(doc, "batch", " with id and root")
        batch_root = _root(batch.get("root"), "batch.root")
        anchored_root = _root(doc.get("anchored_root"), "anchored_root")
        proof = doc.get("proof")
        if not isinstance(proof, list):
            raise ReceiptInvalid(f"proof must be a list, got {proof!r}")
        proof = [_root(p, f"proof[{i}]") for i, p in enumerate(proof)]
        leaf_index = _int(doc, "leaf_index")
        tree_size = _int(doc, "tree_size")
        target = doc.get("target")
        if not isinstance(target, str) or not target:
            raise ReceiptInvalid(f"target must be a non-empty string, got {target!r}")
        attestation = _object(doc, "attestation", "")
        policy = doc.get("policy")
        if policy is not None and not isinstance(policy, str):
            raise ReceiptInvalid(f"policy must be a dotted object identifier, got {policy!r}")
        status = doc.get("status")
        if status not in STATUSES:
            raise ReceiptInvalid(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        confirmations = _object(doc, "confirmations", " with required and observed")
        scheduler = _object(doc, "scheduler", " with version and config_hash")
        anchored_at = _text(doc, "anchored_at")
        try:
            parse_iso_utc(anchored_at)
        except ValueError:
            raise ReceiptInvalid(f"anchored_at is not an ISO 8601 time: {anchored_at!r}") from None
        return cls(
            namespace=_text(doc, "namespace"),
            cadence=_text(doc, "cadence"),
            target=target,
            batch=BatchRef(_text(batch, "id", "batch.", empty=True), batch_root),
            anchored_root=anchored_root,
            proof=tuple(proof),
            leaf_index=leaf_index,
            tree_size=tree_size,
            attestation=MappingProxyType(dict(attestation)),
            status=status,
            confirmations=Confirmations(
                _int(confirmations, "required", "confirmations."),
                _int(confirmations, "observed", "confirmations."),
            ),
            anchored_at=anchored_at,
            scheduler=SchedulerStamp(
                _text(scheduler, "version", "scheduler.", empty=True),
                _text(scheduler, "config_hash", "scheduler.", empty=True),
            ),
            policy=policy,
            version=RECEIPT_VERSION,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON document, keys in the order receipts have always been written."""
        doc: dict[str, Any] = {
            "version": self.version,
            "namespace": self.namespace,
            "cadence": self.cadence,
            "target": self.target,
            "batch": {"id": self.batch.id, "root": self.batch.root},
            "anchored_root": self.anchored_root,
            "proof": list(self.proof),
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "attestation": dict(self.attestation),
            "status": self.status,
            "confirmations": {
                "required": self.confirmations.required,
                "observed": self.confirmations.observed,
            },
            "anchored_at": self.anchored_at,
            "scheduler": {
                "version": self.scheduler.version,
                "config_hash": self.scheduler.config_hash,
            },
        }
        if self.policy is not None:
            doc["policy"] = self.policy
        return doc

    def confirmed(self, observed: int) -> Receipt:
        """This receipt moved to `confirmed` with `observed` confirmations."""
        return dataclasses.replace(
            self,
            status="confirmed",
            confirmations=Confirmations(self.confirmations.required, observed),
        )


def build_receipt(
    *,
    namespace: str,
    cadence: str,
    target: str,
    batch_id: str,
    batch_root: str | bytes,
    anchored_root: str | bytes,
    proof: list[bytes],
    leaf_index: int,
    tree_size: int,
    attestation: dict[str, Any],
    status: str,
    confirmations_required: int,
    confirmations_observed: int,
    anchored_at: float,
    version: str,
    config_hash: str,
    policy: str | None = None,
) -> Receipt:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return Receipt(
        namespace=namespace,
        cadence=cadence,
        target=target,
        batch=BatchRef(batch_id, root_text(batch_root)),
        anchored_root=root_text(anchored_root),
        proof=tuple(root_text(p) for p in proof),
        leaf_index=leaf_index,
        tree_size=tree_size,
        attestation=MappingProxyType(dict(attestation)),
        status=status,
        confirmations=Confirmations(confirmations_required, confirmations_observed),
        anchored_at=iso_utc(anchored_at),
        scheduler=SchedulerStamp(version, config_hash),
        policy=policy,
    )


# --------------------------------------------------------------------------- verification


def check_proof(receipt: Receipt) -> bytes:
    """The digest the attestation must cover, recomputed from batch.root and the audit path.

    Raises ReceiptInvalid when the path does not lead to anchored_root (the fields'
    forms were checked by `Receipt.from_json`). A group of one (tree_size 1) anchors the
    batch root itself.
    """
    leaf = root_bytes(receipt.batch.root, "batch.root")
    anchored = root_bytes(receipt.anchored_root, "anchored_root")
    proof = [root_bytes(p, f"proof[{i}]") for i, p in enumerate(receipt.proof)]
    index = receipt.leaf_index
    size = receipt.tree_size
    if size < 1:
        raise ReceiptInvalid(f"tree_size must be at least 1, got {size}")
    if not 0 <= index < size:
        raise ReceiptInvalid(f"leaf_index {index} out of range for tree_size {size}")
    if size == 1:
        if proof:
            raise ReceiptInvalid("a group of one has an empty proof")
        if anchored != leaf:
            raise ReceiptInvalid("anchored_root differs from batch.root in a group of one")
        return anchored
    try:
        computed = root_from_path(index, size, leaf, proof)
    except ValueError as exc:
        raise ReceiptInvalid(f"audit path: {exc}") from None
    if computed != anchored:
        raise ReceiptInvalid(
            f"audit path leads to sha256:{computed.hex()}, not anchored_root {receipt.anchored_root}"
        )
    return anchored


class Verifier(Protocol):
    """The part of a core.anchors.base.Backend that verifying a receipt needs."""

    async def verify(
        self,
        attestation: dict[str, Any],
        digest: bytes,
        *,
        required: int | None = None,
        policy: str | None = None,
    ) -> None: ...


async def verify_receipt(receipt: Receipt, backend_for: Callable[[str], Verifier]) -> None:
    """Check the audit path, then ask the target's backend to verify the attestation.

    ReceiptInvalid when the receipt is wrong; ReceiptUncheckable when `backend_for` or the
    backend raise CannotVerify (what is needed is missing here)."""
    digest = check_proof(receipt)
    target = receipt.target
    try:
        backend = backend_for(target)
    except CannotVerify as exc:
        raise ReceiptUncheckable(str(exc)) from None
    except Exception as exc:  # unknown scheme, missing settings
        raise ReceiptInvalid(f"no verifier for target {target}: {exc}") from exc
    try:
        await backend.verify(
            dict(receipt.attestation),
            digest,
            required=receipt.confirmations.required,
            policy=receipt.policy,
        )
    except VerificationFailed as exc:
        raise ReceiptInvalid(f"attestation: {exc}") from exc
    except CannotVerify as exc:
        raise ReceiptUncheckable(str(exc)) from None


def load_receipt(path: str | os.PathLike[str]) -> Receipt:
    """Read and parse a receipt file. ReceiptError naming the file when it is unreadable or
    not a JSON object; ReceiptInvalid (its `reason` names the field) when a field is wrong."""
    doc = _load_document(path)
    try:
        return Receipt.from_json(doc)
    except ReceiptInvalid as exc:
        raise ReceiptInvalid(exc.reason, Path(path)) from None


def _load_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A receipt file's JSON document, unchecked; ReceiptError naming the file when it is
    unreadable or not a JSON object."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReceiptError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        doc = safejson.loads(data)
    except UnicodeDecodeError as exc:
        raise ReceiptError(f"{path}: not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ReceiptError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from exc
    if not isinstance(doc, dict):
        raise ReceiptError(f"{path}: a receipt is a JSON object, got {type(doc).__name__}")
    return doc


# --------------------------------------------------------------------------- store


Listing = list[tuple[Path, "Receipt | ReceiptError"]]


class ReceiptStore:
    """Receipts under `<data_dir>/receipts/<safe namespace>/`.

    Listings return `(Path, Receipt)` pairs. A file that cannot be read or parsed yields
    `(path, ReceiptError)` (its message names the file) instead of stopping the listing.
    """

    INDEX = ".pending"
    INDEX_COMPLETE = ".complete"

    def __init__(self, root_dir: str | os.PathLike[str]) -> None:
        self.root = Path(root_dir)
        self.index = self.root / self.INDEX
        self._pending: set[Path] | None = None  # known pending receipts, after a first scan
        self._cleaned: set[Path] = set()  # namespace folders rid of stale temps by this store

    # ---- writing

    @staticmethod
    def file_name(receipt: Receipt) -> str:
        at = parse_iso_utc(receipt.anchored_at)
        stamp = at.strftime("%Y%m%dT%H%M%S") + f"{at.microsecond // 1000:03d}Z"
        root_hex = receipt.batch.root.removeprefix("sha256:")[:12]
        return f"{stamp}-{safe_name(receipt.cadence)}-{root_hex}.json"

    def write(self, receipt: Receipt) -> Path:
        """Write a new receipt durably; never replaces an existing file."""
        result = self.write_many([receipt])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def write_many(self, receipts: list[Receipt]) -> list[Path | Exception]:
        """Write new receipts as one group commit; each gets its path or its own error.

        Markers of the pending ones first (one fsync per marker folder), then each receipt
        (its data fsynced, linked under a free name), then one fsync per receipt folder:
        a pass of 10,000 namespaces costs one folder fsync per folder, not four per file.
        A receipt is written only once its marker is durable; a receipt that failed loses
        its marker again. Nothing is returned as written before its folder is fsynced.
        """
        results: list[Path | Exception] = []
        planned: list[tuple[int, Path, bytes, bool]] = []  # index, path, data, marked
        marker_dirs: list[Path] = []
        receipt_dirs: list[Path] = []  # with the parents of folders created here
        for index, receipt in enumerate(receipts):
            try:
                folder = self.root / safe_name(receipt.namespace)
                ensure_dir(folder, parents_to_sync=receipt_dirs)
                self._clean_once(folder)
                name = self.file_name(receipt)
                data = dumps_json(receipt.to_json())
                pending = receipt.status == "pending"
                path = folder / name
                if pending:
                    ensure_dir(self._marker(path).parent, parents_to_sync=marker_dirs)
                    path = self._free_marked_name(folder, name)
                    marker_dirs.append(self._marker(path).parent)
                planned.append((index, path, data, pending))
                results.append(path)
            except Exception as exc:
                results.append(exc)
        fsync_dirs(marker_dirs)
        for index, path, data, marked in planned:
            try:
                if not atomic_create_bytes(path, data, sync_folder=False):
                    path = self._create_under_free_name(path, data, marked)
                    results[index] = path
            except Exception as exc:
                if marked:
                    self._unmark(path)
                results[index] = exc
                continue
            receipt_dirs.append(path.parent)
            if marked and self._pending is not None:
                self._pending.add(path)
        fsync_dirs(receipt_dirs)
        return results

    def _free_marked_name(self, folder: Path, name: str) -> Path:
        """The first receipt name in `folder` whose pending marker this call created."""
        stem = name.removesuffix(".json")
        n = 0
        while True:
            path = folder / (name if n == 0 else f"{stem}-{n}.json")
            if create_empty(self._marker(path)):
                return path
            n += 1  # a pending receipt of that name exists already

    def _create_under_free_name(self, taken: Path, data: bytes, marked: bool) -> Path:
        """`taken` exists (a clash): create the receipt under the next free `-<n>` name."""
        if marked:
            self._unmark(taken)
        m = re.match(r"(.*?)(?:-(\d+))?\.json\Z", taken.name)
        stem, n = (m.group(1), int(m.group(2) or 0)) if m else (taken.stem, 0)
        while True:
            n += 1
            path = taken.with_name(f"{stem}-{n}.json")
            if marked:
                if not create_empty(self._marker(path)):
                    continue
                fsync_dir(self._marker(path).parent)
            if atomic_create_bytes(path, data, sync_folder=False):
                return path
            if marked:
                self._unmark(path)

    def _clean_once(self, folder: Path) -> None:
        """Remove a kill -9's temp files from a namespace folder before its first write here."""
        if folder not in self._cleaned:
            remove_stale_temps(folder)
            self._cleaned.add(folder)

    def remove_stale_temps(self) -> list[Path]:
        """Temp files left by a kill -9 in the receipts root and the pending index (at start).

        Namespace folders are cleaned the first time this store writes into them, so a
        start never lists every receipt ever written.
        """
        removed = remove_stale_temps(self.root) + remove_stale_temps(self.index)
        return removed

    # ---- the pending index

    def _marker(self, path: Path) -> Path:
        return self.index / path.parent.name / path.name.removesuffix(".json")

    def _mark(self, path: Path) -> bool:
        """Create the receipt's marker durably; False if it existed."""
        marker = self._marker(path)
        if not create_empty(marker):
            return False
        fsync_dir(marker.parent)
        return True

    def _unmark(self, path: Path) -> None:
        try:
            os.unlink(self._marker(path))
        except FileNotFoundError:
            pass

    def _indexed(self) -> list[Path] | None:
        """The receipts the index marks pending, or None when there is no complete index."""
        if not (self.index / self.INDEX_COMPLETE).exists():
            return None
        out = []
        for folder in self._namespace_dirs(self.index):
            out += [
                self.root / folder.name / f"{e.name}.json"
                for e in os.scandir(folder)
                if not is_temp_name(e.name)
            ]
        return out

    def _build_index(self, pending: set[Path]) -> None:
        for path in pending:
            self._mark(path)
        fsync_dir(self.index)
        atomic_write_bytes(self.index / self.INDEX_COMPLETE, b"")

    def load(self, path: str | os.PathLike[str]) -> Receipt:
        """One receipt of this store by its path (the PostgreSQL store: by its name)."""
        return load_receipt(path)

    def confirm(self, path: str | os.PathLike[str], observed: int) -> Receipt:
        """Move a pending receipt to confirmed (the only rewrite allowed); idempotent."""
        path = Path(path)
        receipt = load_receipt(path)
        if receipt.status == "confirmed":
            self._unmark(path)
            if self._pending is not None:
                self._pending.discard(path)
            return receipt
        receipt = receipt.confirmed(observed)
        atomic_write_bytes(path, dumps_json(receipt.to_json()))
        self._unmark(path)
        if self._pending is not None:
            self._pending.discard(path)
        return receipt

    # ---- reading

    def _namespace_dirs(self, root: Path | None = None) -> Iterator[Path]:
        """The namespace folders under `root` (the receipts root, or the pending index)."""
        try:
            entries = list(os.scandir(root or self.root))
        except FileNotFoundError:
            return
        for e in entries:
            if not e.name.startswith(".") and e.is_dir():
                yield Path(e.path)

    @staticmethod
    def _names(folder: Path) -> list[str]:
        try:
            return [
                e.name
                for e in os.scandir(folder)
                if e.name.endswith(".json") and not is_temp_name(e.name)
            ]
        except FileNotFoundError:
            return []

    @staticmethod
    def _read(path: Path) -> tuple[Path, Receipt | ReceiptError]:
        try:
            return path, load_receipt(path)
        except ReceiptError as exc:
            return path, exc

    def recent(self, limit: int = 50) -> Listing:
        """The newest `limit` receipts of all namespaces, newest first (by file name)."""
        if limit <= 0:
            return []
        candidates = (
            (name, folder) for folder in self._namespace_dirs() for name in self._names(folder)
        )
        newest = heapq.nlargest(limit, candidates, key=lambda c: c[0])
        return [self._read(folder / name) for name, folder in newest]

    def for_job(self, namespace: str, cadence: str, limit: int = 50) -> Listing:
        """The newest `limit` receipts of one job, newest first."""
        if limit <= 0:
            return []
        folder = self.root / safe_name(namespace)
        want = safe_name(cadence)
        names = []
        for name in self._names(folder):
            m = _NAME_RE.match(name)
            if m and m.group(2) == want:
                names.append(name)
        return [self._read(folder / n) for n in heapq.nlargest(limit, names)]

    def all_paths(self) -> list[Path]:
        return sorted(
            (folder / name for folder in self._namespace_dirs() for name in self._names(folder)),
            key=lambda p: p.name,
        )

    def every(self) -> Iterator[tuple[Path, Receipt | ReceiptError]]:
        """Every receipt, oldest first (by file name), read one at a time."""
        return map(self._read, self.all_paths())

    def pending(self) -> list[tuple[Path, Receipt]]:
        """Receipts still `pending` (oldest first). The first call reads the ones the index
        marks (every receipt, once, in a data dir without an index); later calls read only
        the ones this store knows are pending (it tracks write/confirm). Unreadable files
        are not listed here (their status is unknown); `recent` shows them."""
        if self._pending is None:
            indexed = self._indexed()
            if indexed is None:
                found = set()
                out: list[tuple[Path, Receipt]] = []
                for path in self.all_paths():
                    path, receipt = self._read(path)
                    if isinstance(receipt, Receipt) and receipt.status == "pending":
                        found.add(path)
                        out.append((path, receipt))
                self._build_index(found)
                self._pending = found
                return out
            self._pending = set(indexed)
        out = []
        for path in sorted(self._pending, key=lambda p: p.name):
            path, receipt = self._read(path)
            if isinstance(receipt, Receipt) and receipt.status == "pending":
                out.append((path, receipt))
            elif isinstance(receipt, Receipt) or not path.exists():
                self._pending.discard(path)  # confirmed, or gone: the marker goes too
                self._unmark(path)
        return out

    @staticmethod
    def namespace_of(path: Path) -> str:
        return unsafe_name(path.parent.name)
