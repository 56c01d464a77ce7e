"""Receipts: one JSON document per job anchored, and its verification.

Format (DESIGN.md, with the audit path made self-describing; docs/architecture.md):

    {"version": 1, "namespace", "cadence", "target",
     "batch": {"id", "root": "sha256:<hex>"},
     "anchored_root": "sha256:<hex>", "proof": ["sha256:<hex>", ...],
     "leaf_index", "tree_size", "attestation": {...scheme-specific...},
     "status": "pending" | "confirmed", "confirmations": {"required", "observed"},
     "anchored_at": "2026-01-01T00:00:00.000Z", "scheduler": {"version", "config_hash"},
     "policy": "<dotted OID>"}

Version 2 binds what it states: the anchored leaf is `bound_leaf(namespace, batch.id,
batch.root)` (domain-separated, docs/receipts.md byte for byte), and `anchored_at` must lie
within ANCHORED_AT_EARLY / ANCHORED_AT_LATE of the attested time (TSA genTime, block
time). Version 1 receipts (the leaf was the batch root itself) still verify; what they do
not bind is `UNBOUND_V1`.

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
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from core import safejson
from core.anchors.base import CannotVerify, NotFinal, VerificationFailed
from core.fsutil import dumps_json
from core.jobs import member_targets, redundant_parts
from core.merkle import root_from_path

RECEIPT_VERSION = 2  # what build_receipt writes for a job of one target
REDUNDANT_VERSION = 3  # what it writes for a redundant job (several targets, `min` of them)
VERSIONS = (1, 2, 3)  # what from_json reads
LEAF_DOMAIN = b"vmsh-scheduler/receipt-leaf/v2\x00"  # docs/receipts.md
LEAF_DOMAIN_V3 = b"vmsh-scheduler/receipt-leaf/v3\x00"  # binds the targets and min too
# anchored_at (written by the scheduler after the attestation came back) may precede the
# attested time by clock differences only, and follow it by a late write (a held
# attestation, recovery after a crash) of at most a day.
ANCHORED_AT_EARLY = 300.0
ANCHORED_AT_LATE = 86_400.0
UNBOUND_V1 = ("namespace", "batch.id", "anchored_at")  # a version 1 receipt's leaf is the root only
STATUSES = ("pending", "confirmed")
_ROOT_RE = re.compile(r"sha256:[0-9a-f]{64}")
_JSON_ESCAPED = bytes(range(32)) + b'"\\'  # the bytes of a UTF-8 text that JSON escapes


class ReceiptError(Exception):
    """A receipt file that cannot be read or stored; the message names the file."""


class ReceiptInvalid(ReceiptError):
    """A receipt that does not prove what it claims; `reason` says why (and `path`, when
    known, which file: it then starts the message)."""

    def __init__(self, reason: str, path: Path | None = None) -> None:
        super().__init__(reason if path is None else f"{path}: {reason}")
        self.reason = reason
        self.path = path


class ReceiptPending(ReceiptError):
    """A receipt whose attestation is genuine but not final yet (e.g. an EVM transaction
    fewer blocks deep than required); `reason` says how far it is."""

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
    if _ROOT_RE.fullmatch(text):
        return text  # already so: the same string (a sibling hash shared by many receipts stays one)
    if text[:7].lower() == "sha256:":
        text = "sha256:" + text[7:].lower()
    if not _ROOT_RE.fullmatch(text):
        raise ValueError(f"{value!r} is not sha256:<64 hex>")
    return text


def root_bytes(value: object, what: str = "root") -> bytes:
    """Parse "sha256:<64 lowercase hex>" to 32 bytes; ReceiptInvalid on anything else."""
    return bytes.fromhex(_root(value, what)[7:])


def _length_prefixed(text: str) -> bytes:
    data = text.encode("utf-8")
    return len(data).to_bytes(4, "big") + data


def bound_leaf(namespace: str, batch_id: str, batch_root: str | bytes) -> bytes:
    """The 32-byte leaf a version 2 receipt anchors: SHA-256 of LEAF_DOMAIN, then the
    namespace and the batch id (UTF-8, each after its length as 4 bytes big-endian), then
    the 32 bytes of the batch root (docs/receipts.md). The engine anchors it and verify
    recomputes it: the one definition."""
    root = bytes.fromhex(root_text(batch_root)[7:])
    return hashlib.sha256(leaf_preamble(namespace, batch_id) + root).digest()


def leaf_preamble(namespace: str, batch_id: str) -> bytes:
    """What a version 2 leaf hashes before the batch root's 32 bytes (an OpenTimestamps
    proof of the root prepends it)."""
    return LEAF_DOMAIN + _length_prefixed(namespace) + _length_prefixed(batch_id)


def redundant_leaf(namespace: str, batch_id: str, target: str, batch_root: str | bytes) -> bytes:
    """The 32-byte leaf a version 3 receipt (redundant anchoring) anchors: as version 2's,
    under LEAF_DOMAIN_V3 and with the target text ("2 of rfc3161:a,rfc3161:b,...", its
    targets and min) length-prefixed after the batch id: lowering min or changing the
    targets changes the leaf."""
    root = bytes.fromhex(root_text(batch_root)[7:])
    preamble = LEAF_DOMAIN_V3 + _length_prefixed(namespace) + _length_prefixed(batch_id) + _length_prefixed(target)
    return hashlib.sha256(preamble + root).digest()


def leaf_for(
    receipt_version: int, namespace: str, batch_id: str, batch_root: str | bytes, target: str = ""
) -> bytes:
    """The leaf data of a receipt of that version (1: the batch root's 32 bytes; 3: bound to
    the target text too)."""
    if receipt_version == 1:
        return bytes.fromhex(root_text(batch_root)[7:])
    if receipt_version == REDUNDANT_VERSION:
        return redundant_leaf(namespace, batch_id, target, batch_root)
    return bound_leaf(namespace, batch_id, batch_root)


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


@dataclass(frozen=True, slots=True)
class Attested:
    """One target's attestation in a version 3 (redundant) receipt."""

    target: str
    attestation: Mapping[str, Any]
    status: str  # one of STATUSES
    confirmations: Confirmations

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "attestation": dict(self.attestation),
            "status": self.status,
            "confirmations": {"required": self.confirmations.required, "observed": self.confirmations.observed},
        }


def redundant_attestations(doc: Mapping[str, Any], target: str) -> tuple[int, tuple[Attested, ...]]:
    """A version 3 receipt's `min` and `attestations`, each of a distinct target of the ones
    its target text names; ReceiptInvalid naming the field."""
    parts = redundant_parts(target)
    if parts is None:
        raise ReceiptInvalid(f"target must name the targets and min of a version 3 receipt, got {target!r}")
    least = _int(doc, "min")
    if least != parts[0]:
        raise ReceiptInvalid(f"min {least} differs from the {parts[0]} its target {target!r} says")
    items = doc.get("attestations")
    if not isinstance(items, list) or not items:
        raise ReceiptInvalid(f"attestations must be a non-empty list, got {items!r}")
    out: list[Attested] = []
    for n, item in enumerate(items):
        where = f"attestations[{n}]."
        if not isinstance(item, dict):
            raise ReceiptInvalid(f"attestations[{n}] must be an object")
        member = _text(item, "target", where)
        if member not in parts[1]:
            raise ReceiptInvalid(f"{where}target {member!r} is not one of the receipt's targets")
        if any(a.target == member for a in out):
            raise ReceiptInvalid(f"{where}target {member!r} attests twice")
        status = item.get("status")
        if status not in STATUSES:
            raise ReceiptInvalid(f"{where}status must be one of {', '.join(STATUSES)}, got {status!r}")
        conf = _object(item, "confirmations", f" with required and observed ({where}confirmations)")
        out.append(Attested(
            member,
            MappingProxyType(dict(_object(item, "attestation", f" ({where}attestation)"))),
            status,
            Confirmations(_int(conf, "required", where + "confirmations."), _int(conf, "observed", where + "confirmations.")),
        ))
    return least, tuple(out)


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
    # version 3 (redundant anchoring): how many must be valid, and every attestation
    # obtained; `attestation` is then empty
    least: int = 0
    attestations: tuple[Attested, ...] = ()

    @classmethod
    def from_json(cls, doc: object) -> Receipt:
        """Validate a parsed JSON document; ReceiptInvalid naming the first bad field.

        The fields the proof rests on are checked first, in the order `check_proof`
        has always named them."""
        if not isinstance(doc, dict):
            raise ReceiptInvalid("a receipt is a JSON object")
        version = doc.get("version")
        if version not in VERSIONS or isinstance(version, bool):
            raise ReceiptInvalid(f"unsupported receipt version {version!r}")
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
        least, attestations = redundant_attestations(doc, target) if version == REDUNDANT_VERSION else (0, ())
        attestation = _object(doc, "attestation", "") if version != REDUNDANT_VERSION else {}
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
            version=version,
            least=least,
            attestations=attestations,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON document, keys in the order receipts have always been written (version
        3: `min` and `attestations` where the others have `attestation`)."""
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
        }
        if self.version == REDUNDANT_VERSION:
            doc["min"] = self.least
            doc["attestations"] = [a.to_json() for a in self.attestations]
        else:
            doc["attestation"] = dict(self.attestation)
        doc["status"] = self.status
        doc["confirmations"] = {
            "required": self.confirmations.required,
            "observed": self.confirmations.observed,
        }
        doc["anchored_at"] = self.anchored_at
        doc["scheduler"] = {
            "version": self.scheduler.version,
            "config_hash": self.scheduler.config_hash,
        }
        if self.policy is not None:
            doc["policy"] = self.policy
        return doc

    def to_bytes(self) -> bytes:
        """The receipt file's bytes: `dumps_json(self.to_json())` (core/fsutil.py), byte
        for byte, written out field by field, with the attestation's (or version 3's
        attestations') JSON made once for all the receipts that share it (the receipts of
        one anchor: `AnchorReceipts`): a 3 KB token is encoded once an anchor, not once a
        receipt. Fields not of their types (a Receipt made by hand) go by dumps_json."""
        ints = (self.version, self.leaf_index, self.tree_size, self.least, self.confirmations.required,
                self.confirmations.observed)
        if any(type(n) is not int for n in ints):
            return dumps_json(self.to_json())
        try:
            return self._written()
        except TypeError:  # a field that is not a text
            return dumps_json(self.to_json())

    def _written(self) -> bytes:
        q = encode_basestring
        texts = "".join(self.proof).encode()
        # "sha256:<hex>" texts: nothing JSON escapes (checked: one pass over bytes, not a call each)
        if len(texts.translate(None, _JSON_ESCAPED)) == len(texts):
            proof = '"' + '",\n    "'.join(self.proof) + '"'
        else:
            proof = ",\n    ".join([q(p) for p in self.proof])
        parts = [
            '{\n  "version": ', str(self.version),
            ',\n  "namespace": ', q(self.namespace),
            ',\n  "cadence": ', q(self.cadence),
            ',\n  "target": ', q(self.target),
            ',\n  "batch": {\n    "id": ', q(self.batch.id), ',\n    "root": ', q(self.batch.root),
            '\n  },\n  "anchored_root": ', q(self.anchored_root),
            ',\n  "proof": ', f"[\n    {proof}\n  ]" if self.proof else "[]",
            ',\n  "leaf_index": ', str(self.leaf_index),
            ',\n  "tree_size": ', str(self.tree_size),
        ]
        if self.version == REDUNDANT_VERSION:
            parts += (',\n  "min": ', str(self.least), ',\n  "attestations": ', _shared_json(self.attestations))
        else:
            parts += (',\n  "attestation": ', _shared_json(self.attestation))
        parts += (
            ',\n  "status": ', q(self.status),
            ',\n  "confirmations": {\n    "required": ', str(self.confirmations.required),
            ',\n    "observed": ', str(self.confirmations.observed),
            '\n  },\n  "anchored_at": ', q(self.anchored_at),
            ',\n  "scheduler": {\n    "version": ', q(self.scheduler.version),
            ',\n    "config_hash": ', q(self.scheduler.config_hash), "\n  }",
        )
        if self.policy is not None:
            parts += (',\n  "policy": ', q(self.policy))
        parts.append("\n}\n")
        return "".join(parts).encode()

    def confirmed(self, observed: int) -> Receipt:
        """This receipt moved to `confirmed` with `observed` confirmations."""
        return dataclasses.replace(
            self,
            status="confirmed",
            confirmations=Confirmations(self.confirmations.required, observed),
        )


class AnchorReceipts:
    """The receipts of one anchor (one attestation over one tree of `tree_size` leaves),
    built from what they share, made once: the attestation's read-only copy, the texts of
    anchored_root and anchored_at, the scheduler stamp, one Confirmations per count
    required, and each audit-path hash's text (a tree's upper siblings are in most of its
    proofs: 14 hashes a receipt of 10,000, ~2 distinct). What `build_receipt` builds, for
    many jobs at a fraction of the time; not shared between threads."""

    __slots__ = ("_anchored_at", "_anchored_root", "_attestation", "_attestations", "_confirmations",
                 "_least", "_observed", "_policy", "_scheduler", "_status", "_target", "_texts",
                 "_tree_size", "_version")

    def __init__(
        self,
        *,
        target: str,
        anchored_root: str | bytes,
        tree_size: int,
        attestation: Mapping[str, Any],
        status: str,
        confirmations_observed: int,
        anchored_at: float,
        version: str,
        config_hash: str,
        policy: str | None = None,
        receipt_version: int = RECEIPT_VERSION,
        least: int = 0,
        attestations: tuple[Attested, ...] = (),
    ) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self._target = target
        self._anchored_root = root_text(anchored_root)
        self._tree_size = tree_size
        self._attestation = MappingProxyType(dict(attestation))
        self._status = status
        self._observed = confirmations_observed
        self._confirmations: dict[int, Confirmations] = {}
        self._anchored_at = iso_utc(anchored_at)
        self._scheduler = SchedulerStamp(version, config_hash)
        self._policy = policy
        self._version = receipt_version
        self._least = least
        self._attestations = attestations
        self._texts: dict[bytes | str, str] = {}

    def receipt(
        self,
        *,
        namespace: str,
        cadence: str,
        batch_id: str,
        batch_root: str | bytes,
        proof: Sequence[bytes | str],
        leaf_index: int,
        confirmations_required: int,
    ) -> Receipt:
        """The receipt of one job of the anchor: its batch, its audit path and index."""
        texts = self._texts
        try:
            path = tuple([texts.get(p) or texts.setdefault(p, root_text(p)) for p in proof])
        except TypeError:  # a bytearray (not a key): its text alone
            path = tuple([root_text(p) for p in proof])
        confirmations = self._confirmations.get(confirmations_required)
        if confirmations is None:
            confirmations = self._confirmations[confirmations_required] = Confirmations(
                confirmations_required, self._observed
            )
        return Receipt(
            namespace,
            cadence,
            self._target,
            BatchRef(batch_id, root_text(batch_root)),
            self._anchored_root,
            path,
            leaf_index,
            self._tree_size,
            self._attestation,
            self._status,
            confirmations,
            self._anchored_at,
            self._scheduler,
            self._policy,
            self._version,
            self._least,
            self._attestations,
        )


# The attestation (or version 3's attestations) last written out, and its JSON as it stands
# in a receipt file: the receipts of one anchor share that object (AnchorReceipts), so a
# chunk of them encodes it once. Keyed by the object itself (held here, so its id is never
# another's); only a read-only one (this module's copies: MappingProxyType), whose JSON
# never changes.
_last_shared: tuple[object, str] = ((), "[]")


def _shared_json(value: Mapping[str, Any] | tuple[Attested, ...]) -> str:
    global _last_shared
    last, text = _last_shared
    if last is value:
        return text
    if isinstance(value, Mapping):
        doc: Any = dict(value)
        frozen = type(value) is MappingProxyType
    else:
        doc = [a.to_json() for a in value]
        frozen = all(type(a.attestation) is MappingProxyType for a in value)
    # the encoder a whole receipt's is (fsutil.dumps_json: pydantic_core or json), one level in
    text = dumps_json(doc).decode()[:-1].replace("\n", "\n  ")
    if frozen:
        _last_shared = (value, text)
    return text


_JOB_PARTS = ("namespace", "cadence", "batch_id", "batch_root", "proof", "leaf_index", "confirmations_required")


def build_receipt(**parts: Any) -> Receipt:
    """One receipt, from the keyword arguments of `AnchorReceipts` (what the receipts of one
    anchor share) and of its `receipt` (the job's own: `_JOB_PARTS`). A missing or unknown
    one is a TypeError naming it."""
    job = {name: parts.pop(name) for name in _JOB_PARTS if name in parts}
    return AnchorReceipts(**parts).receipt(**job)


# --------------------------------------------------------------------------- verification


def check_proof(receipt: Receipt) -> bytes:
    """The digest the attestation must cover, recomputed from batch.root and the audit path.

    Raises ReceiptInvalid when the path does not lead to anchored_root (the fields'
    forms were checked by `Receipt.from_json`). A group of one (tree_size 1) anchors the
    batch root itself (version 1) or its bound leaf (version 2).
    """
    leaf = leaf_for(receipt.version, receipt.namespace, receipt.batch.id, receipt.batch.root, receipt.target)
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
            if receipt.version == 1:
                raise ReceiptInvalid("anchored_root differs from batch.root in a group of one")
            targets = ", the targets or min" if receipt.version == REDUNDANT_VERSION else ""
            raise ReceiptInvalid(
                f"anchored_root is not the leaf of namespace {receipt.namespace!r}, batch "
                f"{receipt.batch.id!r} and batch.root (sha256:{leaf.hex()}): the namespace, "
                f"the batch id{targets} or the root was changed"
            )
        return anchored
    try:
        computed = root_from_path(index, size, leaf, proof)
    except ValueError as exc:
        raise ReceiptInvalid(f"audit path: {exc}") from None
    if computed != anchored:
        bound = "" if receipt.version == 1 else " (the namespace, the batch id or the root was changed?)"
        raise ReceiptInvalid(
            f"audit path leads to sha256:{computed.hex()}, not anchored_root {receipt.anchored_root}{bound}"
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
    ) -> datetime | None: ...


@dataclass(frozen=True, slots=True)
class Vouched:
    """What a receipt that verified proves: `attested_at` the attested time (ISO, UTC; None
    when the scheme gives none) and `unbound` the fields it states but does not prove."""

    attested_at: str | None
    unbound: tuple[str, ...] = ()
    valid: tuple[str, ...] = ()  # version 3: the targets whose attestations are valid

    def line(self, receipt: Receipt) -> str:
        """"<namespace> <batch id> <root> existed at <attested time> (<target>)", and what a
        version 1 receipt does not bind; version 3: "(2 of 3: rfc3161:a, rfc3161:b)"."""
        when = self.attested_at or "an unknown time"
        source = receipt.target
        if receipt.version == REDUNDANT_VERSION:
            source = f"{len(self.valid)} of {len(member_targets(receipt.target))}: {', '.join(self.valid)}"
        text = f"{receipt.namespace} {receipt.batch.id} {receipt.batch.root} existed at {when} ({source})"
        if self.unbound:
            text += f"; not bound by this version {receipt.version} receipt: {', '.join(self.unbound)}"
        return text


def check_anchored_at(receipt: Receipt, attested: datetime) -> None:
    """ReceiptInvalid when a version 2 receipt's anchored_at is not within ANCHORED_AT_EARLY
    before / ANCHORED_AT_LATE after the attested time."""
    lag = (parse_iso_utc(receipt.anchored_at) - attested).total_seconds()
    if not -ANCHORED_AT_EARLY <= lag <= ANCHORED_AT_LATE:
        raise ReceiptInvalid(
            f"anchored_at {receipt.anchored_at} is {abs(lag):.0f} s "
            f"{'before' if lag < 0 else 'after'} the attested time {iso_z(attested)} "
            f"(allowed: {ANCHORED_AT_EARLY:.0f} s before to {ANCHORED_AT_LATE:.0f} s after)"
        )


def iso_z(at: datetime) -> str:
    """A UTC time as "2026-01-01T00:00:00Z", or "...:00.123Z" with its fraction (verify
    --explain prints it the same way)."""
    at = at.astimezone(UTC)
    fraction = f".{at.microsecond:06d}".rstrip("0") if at.microsecond else ""
    return at.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


async def verify_receipt(receipt: Receipt, backend_for: Callable[[str], Verifier]) -> Vouched:
    """Check the audit path (from the bound leaf, version 2), then ask the target's backend
    to verify the attestation, then anchored_at against the attested time (version 2).

    ReceiptInvalid when the receipt is wrong; ReceiptUncheckable when `backend_for` or the
    backend raise CannotVerify (what is needed is missing here); ReceiptPending when the
    attestation is genuine but not final yet (and everything else checks out)."""
    digest = check_proof(receipt)
    if receipt.version == REDUNDANT_VERSION:
        return await _verify_redundant(receipt, digest, backend_for)
    target = receipt.target
    try:
        backend = backend_for(target)
    except CannotVerify as exc:
        raise ReceiptUncheckable(str(exc)) from None
    except Exception as exc:  # unknown scheme, missing settings
        raise ReceiptInvalid(f"no verifier for target {target}: {exc}") from exc
    pending: NotFinal | None = None
    try:
        attested = await backend.verify(
            dict(receipt.attestation),
            digest,
            required=receipt.confirmations.required,
            policy=receipt.policy,
        )
    except NotFinal as exc:
        pending, attested = exc, exc.attested_at
    except VerificationFailed as exc:
        raise ReceiptInvalid(f"attestation: {exc}") from exc
    except CannotVerify as exc:
        raise ReceiptUncheckable(str(exc)) from None
    if receipt.version >= 2 and attested is not None:
        check_anchored_at(receipt, attested)
    if pending is not None:
        raise ReceiptPending(f"{pending}: genuine, not final yet")
    unbound = UNBOUND_V1 if receipt.version == 1 else ()
    return Vouched(iso_z(attested) if attested is not None else None, unbound)


async def _verify_one(
    receipt: Receipt, item: Attested, digest: bytes, backend_for: Callable[[str], Verifier]
) -> tuple[datetime | None, str | None]:
    """(attested time, why not final or None) of one attestation of a version 3 receipt;
    ReceiptInvalid (naming its target) when it is wrong, ReceiptUncheckable when it cannot
    be checked here."""
    try:
        backend = backend_for(item.target)
        attested = await backend.verify(
            dict(item.attestation), digest, required=item.confirmations.required, policy=receipt.policy
        )
        pending = None
    except CannotVerify as exc:
        raise ReceiptUncheckable(f"{item.target}: {exc}") from None
    except NotFinal as exc:
        attested, pending = exc.attested_at, str(exc)
    except VerificationFailed as exc:
        raise ReceiptInvalid(f"attestation of {item.target}: {exc}") from exc
    except Exception as exc:  # unknown scheme, missing settings
        raise ReceiptInvalid(f"no verifier for target {item.target}: {exc}") from exc
    if attested is not None:
        try:
            check_anchored_at(receipt, attested)
        except ReceiptInvalid as exc:
            raise ReceiptInvalid(f"attestation of {item.target}: {exc.reason}") from None
    return attested, pending


async def _verify_redundant(receipt: Receipt, digest: bytes, backend_for: Callable[[str], Verifier]) -> Vouched:
    """Each attestation of a version 3 receipt checked; OK when at least `min` are valid
    (the time vouched for: the min-th earliest attested time, what `min` of them prove),
    PENDING when valid or pending reach `min`, CANNOT CHECK when only the attestations
    that cannot be checked here would reach it, else FAIL. Any wrong attestation FAILs."""
    valid: list[tuple[str, datetime | None]] = []
    pending: list[str] = []
    unchecked: list[str] = []
    for item in receipt.attestations:
        try:
            attested, why = await _verify_one(receipt, item, digest, backend_for)
        except ReceiptUncheckable as exc:
            unchecked.append(exc.reason)
            continue
        if why is None:
            valid.append((item.target, attested))
        else:
            pending.append(f"{item.target}: {why}")
    least = receipt.least
    if len(valid) >= least:
        times = sorted(t for _, t in valid if t is not None)
        when = iso_z(times[least - 1]) if len(times) >= least else None
        return Vouched(when, (), tuple(t for t, _ in valid))
    if len(valid) + len(pending) >= least:
        raise ReceiptPending(
            f"{len(valid)} of the {least} attestations required are final; {'; '.join(pending)}: "
            "genuine, not final yet"
        )
    if len(valid) + len(pending) + len(unchecked) >= least:
        raise ReceiptUncheckable(
            f"{len(valid) + len(pending)} of the {least} attestations required can be checked here; "
            + "; ".join(unchecked)
        )
    raise ReceiptInvalid(
        f"{len(receipt.attestations)} attestation(s), {least} required: too few to vouch for anything"
    )


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

