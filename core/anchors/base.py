"""The interface every anchoring backend implements (local, rfc3161, eip155, btc)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from core.errors import ValidationError
from core.fsutil import atomic_write_json


@dataclass(frozen=True)
class Attestation:
    """What a backend returns for one anchored digest; `data` goes into the receipt as is.

    `data` must be JSON-serialisable and must never hold a secret.
    """

    data: dict[str, Any]
    status: str = "confirmed"  # or "pending" until `confirmations.required` is reached
    confirmations: int = 0  # observed depth (0 for timestamp authorities)


@dataclass(frozen=True)
class Wallet:
    """What a signer that pays for its anchors has left (btc: the value of its tracked coin),
    read by core/observe/wallets.py after each anchor. Never a secret."""

    sats: int  # the balance, in the chain's smallest unit
    anchors_left: int  # how many more anchors it pays at the last anchor's fee
    warn_below: int  # fewer anchors left than this is low (btc: lowBalanceAnchors)

    @property
    def low(self) -> bool:
        return self.anchors_left < self.warn_below


class VerificationFailed(Exception):
    """An attestation that does not prove what its receipt claims; the message says why."""


class NotFinal(Exception):
    """An attestation that is genuine but not final yet (a transaction fewer blocks deep than
    required); the message says how far it is. `attested_at`: its attested time, if known."""

    def __init__(self, message: str, attested_at: datetime | None = None) -> None:
        super().__init__(message)
        self.attested_at = attested_at


class CannotVerify(Exception):
    """An attestation that cannot be checked here: something it needs is missing or out of
    reach (a trust bundle, a certificate, a node). The message says what to pass."""


# Called by a backend with facts to journal before it commits to the outside world
# (for EVM: the signed transaction hash), so that a crash can be resolved without a resend.
# The journal's note is a plain function; a backend awaits what an async one returns.
JournalNote = Callable[[dict[str, Any]], Awaitable[None] | None]


class Backend(Protocol):
    """Optional attributes: `one_at_a_time = True` (btc): the engine starts one call per target
    at a time, and folds the jobs due meanwhile into the next call (core/engine/anchoring.py);
    `wallet: Wallet | None` (btc): the signer's balance after its last anchor."""

    target: str  # "<scheme>:<name>"

    async def anchor(
        self, digest: bytes, note: JournalNote, *, policy: str | None = None
    ) -> Attestation:
        """Anchor `digest` (32 bytes); raise core.errors.AnchorError subclasses on failure.

        `policy` is the job's policy OID (dotted), or None for the target's own default.
        A time-stamp authority requests it (`reqPolicy`) and refuses a token under any
        other; a scheme that has no policies refuses a non-None one (ValidationError)."""

    async def recover(self, digest: bytes, notes: dict[str, Any]) -> Attestation | None:
        """After a crash: the attestation for an interrupted call, or None if it never landed."""

    async def verify(
        self,
        attestation: dict[str, Any],
        digest: bytes,
        *,
        required: int | None = None,
        policy: str | None = None,
    ) -> datetime | None:
        """Check an attestation again (offline where the scheme allows), writing nothing; raise
        VerificationFailed when it is wrong, CannotVerify when it cannot be checked here,
        NotFinal when it is genuine but not final yet (chains: not deep enough). Returns
        the attested time (a token's genTime, the block's time; UTC), None if unknown.

        `required` is the depth the receipt asks for (chains only; others ignore it).
        `policy` is the policy the receipt says was requested: the proof must be under it
        (VerificationFailed otherwise, or from a scheme that has no policies)."""

    async def close(self) -> None: ...


class SignerRecord(Protocol):
    """A signer's durable record (EVM: {"sent": {nonce: tx hash}, "outstanding": {...}})."""

    def load(self) -> dict[str, Any]: ...

    def save(self, doc: dict[str, Any]) -> None: ...


class SignerFile:
    """A signer's record as one JSON object in the data dir (one scheduler; a cluster keeps
    it in its store): `load` names the file when it cannot be read and gives `defaults` the
    keys it lacks; `save` replaces it atomically."""

    def __init__(self, path: Path, what: str, defaults: tuple[str, ...] = ()) -> None:
        self.path, self.what, self.defaults = path, what, defaults

    def load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            doc = {}
        except (OSError, ValueError) as exc:
            raise ValidationError(f"{self.path}: unreadable {self.what}: {exc}") from None
        if not isinstance(doc, dict):
            raise ValidationError(f"{self.path}: {self.what} must be a JSON object")
        for key in self.defaults:
            doc.setdefault(key, {})
        return doc

    def save(self, doc: dict[str, Any]) -> None:
        atomic_write_json(self.path, doc)


class SharedRecords(Protocol):
    """What backends of several replicas share through their store (core/store/postgres/): a
    signer's record and a lock held across replicas while it signs and sends. None with
    the file store: one scheduler, its data dir."""

    def signer(self, name: str) -> SignerRecord: ...

    def signer_lock(self, name: str) -> AbstractAsyncContextManager[None]: ...
