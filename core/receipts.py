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

import heapq
import json
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.anchors.base import Backend, CannotVerify, VerificationFailed
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
    """A receipt that does not prove what it claims; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


def root_bytes(value: Any, what: str = "root") -> bytes:
    """Parse "sha256:<64 lowercase hex>" to 32 bytes; ReceiptInvalid on anything else."""
    if not isinstance(value, str) or not _ROOT_RE.fullmatch(value):
        raise ReceiptInvalid(f"{what} is not sha256:<64 lowercase hex>: {value!r}")
    return bytes.fromhex(value[7:])


def iso_utc(at: float) -> str:
    """Epoch seconds -> "2026-01-01T00:00:00.123Z" (UTC, milliseconds)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso_utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


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
) -> dict[str, Any]:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    receipt = {
        "version": RECEIPT_VERSION,
        "namespace": namespace,
        "cadence": cadence,
        "target": target,
        "batch": {"id": batch_id, "root": root_text(batch_root)},
        "anchored_root": root_text(anchored_root),
        "proof": [root_text(p) for p in proof],
        "leaf_index": leaf_index,
        "tree_size": tree_size,
        "attestation": attestation,
        "status": status,
        "confirmations": {"required": confirmations_required, "observed": confirmations_observed},
        "anchored_at": iso_utc(anchored_at),
        "scheduler": {"version": version, "config_hash": config_hash},
    }
    if policy is not None:
        receipt["policy"] = policy
    return receipt


# --------------------------------------------------------------------------- verification


def _int_field(receipt: dict[str, Any], name: str) -> int:
    value = receipt.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReceiptInvalid(f"{name} must be an integer, got {value!r}")
    return value


def check_proof(receipt: Any) -> bytes:
    """The digest the attestation must cover, recomputed from batch.root and the audit path.

    Raises ReceiptInvalid on a malformed field or when the path does not lead to
    anchored_root. A group of one (tree_size 1) anchors the batch root itself.
    """
    if not isinstance(receipt, dict):
        raise ReceiptInvalid("a receipt is a JSON object")
    if receipt.get("version") != RECEIPT_VERSION:
        raise ReceiptInvalid(f"unsupported receipt version {receipt.get('version')!r}")
    batch = receipt.get("batch")
    if not isinstance(batch, dict):
        raise ReceiptInvalid("batch must be an object with id and root")
    leaf = root_bytes(batch.get("root"), "batch.root")
    anchored = root_bytes(receipt.get("anchored_root"), "anchored_root")
    proof_field = receipt.get("proof")
    if not isinstance(proof_field, list):
        raise ReceiptInvalid(f"proof must be a list, got {proof_field!r}")
    proof = [root_bytes(p, f"proof[{i}]") for i, p in enumerate(proof_field)]
    index = _int_field(receipt, "leaf_index")
    size = _int_field(receipt, "tree_size")
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
            f"audit path leads to sha256:{computed.hex()}, not anchored_root {receipt['anchored_root']}"
        )
    return anchored


async def verify_receipt(receipt: dict[str, Any], backend_for: Callable[[str], Backend]) -> None:
    """Check the audit path, then ask the target's backend to verify the attestation.

    ReceiptInvalid when the receipt is wrong; ReceiptUncheckable when `backend_for` or the
    backend raise CannotVerify (what is needed is missing here)."""
    digest = check_proof(receipt)
    target = receipt.get("target")
    if not isinstance(target, str) or not target:
        raise ReceiptInvalid(f"target must be a non-empty string, got {target!r}")
    attestation = receipt.get("attestation")
    if not isinstance(attestation, dict):
        raise ReceiptInvalid("attestation must be an object")
    try:
        backend = backend_for(target)
    except CannotVerify as exc:
        raise ReceiptUncheckable(str(exc)) from None
    except Exception as exc:  # unknown scheme, missing settings
        raise ReceiptInvalid(f"no verifier for target {target}: {exc}") from exc
    confirmations = receipt.get("confirmations")
    required = confirmations.get("required") if isinstance(confirmations, dict) else None
    if not isinstance(required, int) or isinstance(required, bool):
        required = None
    policy = receipt.get("policy")
    if policy is not None and not isinstance(policy, str):
        raise ReceiptInvalid(f"policy must be a dotted object identifier, got {policy!r}")
    try:
        await backend.verify(attestation, digest, required=required, policy=policy)
    except VerificationFailed as exc:
        raise ReceiptInvalid(f"attestation: {exc}") from exc
    except CannotVerify as exc:
        raise ReceiptUncheckable(str(exc)) from None


def load_receipt(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a receipt file; ReceiptError naming the file when unreadable or not a JSON object."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReceiptError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(data)
    except UnicodeDecodeError as exc:
        raise ReceiptError(f"{path}: not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ReceiptError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from exc
    if not isinstance(doc, dict):
        raise ReceiptError(f"{path}: a receipt is a JSON object, got {type(doc).__name__}")
    return doc


# --------------------------------------------------------------------------- store


def _error_entry(path: Path, exc: Exception) -> dict[str, Any]:
    return {"error": str(exc), "path": str(path)}


class ReceiptStore:
    """Receipts under `<data_dir>/receipts/<safe namespace>/`.

    Listings return `(Path, dict)` pairs. A file that cannot be read yields
    `(path, {"error": "<message naming the file>", "path": "<path>"})` instead of
    stopping the listing: check `"error" in receipt`.
    """

    INDEX = ".pending"
    INDEX_COMPLETE = ".complete"

    def __init__(self, root_dir: str | os.PathLike[str]) -> None:
        self.root = Path(root_dir)
        self.index = self.root / self.INDEX
        self._pending: set[Path] | None = None  # known pending receipts, after a first scan
        self._cleaned: set[Path] = set()  # namespace folders rid of stale temps by this store

    # ---- writing

    def file_name(self, receipt: dict[str, Any]) -> str:
        at = parse_iso_utc(receipt["anchored_at"])
        stamp = at.strftime("%Y%m%dT%H%M%S") + f"{at.microsecond // 1000:03d}Z"
        root_hex = receipt["batch"]["root"].removeprefix("sha256:")[:12]
        return f"{stamp}-{safe_name(receipt['cadence'])}-{root_hex}.json"

    def write(self, receipt: dict[str, Any]) -> Path:
        """Write a new receipt durably; never replaces an existing file."""
        result = self.write_many([receipt])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def write_many(self, receipts: list[dict[str, Any]]) -> list[Path | Exception]:
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
                folder = self.root / safe_name(receipt["namespace"])
                ensure_dir(folder, parents_to_sync=receipt_dirs)
                self._clean_once(folder)
                name = self.file_name(receipt)
                data = dumps_json(receipt)
                pending = receipt.get("status") == "pending"
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

    def confirm(self, path: str | os.PathLike[str], observed: int) -> dict[str, Any]:
        """Move a pending receipt to confirmed (the only rewrite allowed); idempotent."""
        path = Path(path)
        receipt = load_receipt(path)
        status = receipt.get("status")
        if status == "confirmed":
            self._unmark(path)
            if self._pending is not None:
                self._pending.discard(path)
            return receipt
        if status != "pending":
            raise ReceiptError(f"{path}: status is {status!r}, not pending")
        receipt["status"] = "confirmed"
        confirmations = receipt.get("confirmations")
        if not isinstance(confirmations, dict):
            confirmations = receipt["confirmations"] = {"required": 0}
        confirmations["observed"] = observed
        atomic_write_bytes(path, dumps_json(receipt))
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
    def _read(path: Path) -> tuple[Path, dict[str, Any]]:
        try:
            return path, load_receipt(path)
        except ReceiptError as exc:
            return path, _error_entry(path, exc)

    def recent(self, limit: int = 50) -> list[tuple[Path, dict[str, Any]]]:
        """The newest `limit` receipts of all namespaces, newest first (by file name)."""
        if limit <= 0:
            return []
        candidates = (
            (name, folder) for folder in self._namespace_dirs() for name in self._names(folder)
        )
        newest = heapq.nlargest(limit, candidates, key=lambda c: c[0])
        return [self._read(folder / name) for name, folder in newest]

    def for_job(
        self, namespace: str, cadence: str, limit: int = 50
    ) -> list[tuple[Path, dict[str, Any]]]:
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

    def pending(self) -> list[tuple[Path, dict[str, Any]]]:
        """Receipts still `pending` (oldest first). The first call reads the ones the index
        marks (every receipt, once, in a data dir without an index); later calls read only
        the ones this store knows are pending (it tracks write/confirm). Unreadable files
        are not listed here (their status is unknown); `recent` shows them."""
        if self._pending is None:
            indexed = self._indexed()
            if indexed is None:
                found = set()
                out = []
                for path in self.all_paths():
                    path, receipt = self._read(path)
                    if receipt.get("status") == "pending":
                        found.add(path)
                        out.append((path, receipt))
                self._build_index(found)
                self._pending = found
                return out
            self._pending = set(indexed)
        out = []
        for path in sorted(self._pending, key=lambda p: p.name):
            path, receipt = self._read(path)
            if receipt.get("status") == "pending":
                out.append((path, receipt))
            elif "error" not in receipt or not path.exists():
                self._pending.discard(path)  # confirmed, or gone: the marker goes too
                self._unmark(path)
        return out

    @staticmethod
    def namespace_of(path: Path) -> str:
        return unsafe_name(path.parent.name)
