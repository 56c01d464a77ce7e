"""Receipts: one JSON document per job anchored, and its verification.

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

Where receipts are kept, and how (files under the data dir, rows): core/store/
(core/store/files/receipts.py, core/store/postgres/receipts.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from core import safejson
from core.anchors.base import CannotVerify, VerificationFailed
from core.merkle import root_from_path

RECEIPT_VERSION = 1
STATUSES = ("pending", "confirmed")
_ROOT_RE = re.compile(r"sha256:[0-9a-f]{64}")


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


def receipt_matches(receipt: Receipt, *, root: str | None = None, batch_id: str | None = None) -> bool:
    """Whether a receipt is one asked for by root (its batch root, or the root it anchored:
    an aggregated group's tree hash) and/or by batch id; the one rule of `verify --root`,
    `ctl receipt` and the control API's `GET /v1/receipts`."""
    if root is not None and root not in (receipt.batch.root, receipt.anchored_root):
        return False
    return batch_id is None or receipt.batch.id == batch_id


def lookup_problem(root: str | None, batch_id: str | None) -> str | None:
    """Why a receipt lookup cannot be made (a sentence), or None."""
    if root is None and batch_id is None:
        return "name a root (sha256:<64 hex digits>) or a batch id"
    if root is not None and not _ROOT_RE.fullmatch(root):
        return f"{root!r} is not a root: expected sha256:<64 lowercase hex digits>"
    if batch_id is not None and not batch_id:
        return "the batch id is empty"
    return None

