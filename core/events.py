"""Typed engine events and the in-process fan-out bus that metrics, logs and the TUI consume.

Subscribers are plain callables run synchronously on the engine's loop: they must be
cheap (append to a buffer, bump a counter, post a message). A failing subscriber is
dropped from that delivery, never allowed to stop the engine.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.jobs import JobKey


@dataclass(frozen=True, slots=True)
class Event:
    at: float  # epoch seconds, from the engine's clock


@dataclass(frozen=True, slots=True)
class JobSkipped(Event):
    job: JobKey
    reason: str


@dataclass(frozen=True, slots=True)
class AnchorStarted(Event):
    target: str
    jobs: tuple[JobKey, ...]
    digest: str  # hex of what is sent to the backend


@dataclass(frozen=True, slots=True)
class AnchorSucceeded(Event):
    job: JobKey
    target: str
    root: str
    duration: float
    status: str  # receipt status: confirmed | pending


@dataclass(frozen=True, slots=True)
class AnchorFailed(Event):
    job: JobKey
    target: str
    kind: str
    message: str
    duration: float


@dataclass(frozen=True, slots=True)
class TargetAnswered(Event):
    """One target of a redundant anchor (several targets, `min` of them) answered for
    `jobs`: it attested (`retry_at` None), or it failed and backs off until `retry_at`."""

    jobs: tuple[JobKey, ...]
    target: str
    attested: bool
    retry_at: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StorageFailed(Event):
    """A journal, receipt or state write failed (once per failed write, not per job)."""

    op: str  # journal | receipt | state | recover | ...
    path: str | None
    errno: int | None
    message: str


@dataclass(frozen=True, slots=True)
class BackoffChanged(Event):
    job: JobKey
    level: int
    max_level: int
    next_attempt: float | None
    kind: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class ReceiptWritten(Event):
    job: JobKey
    target: str
    path: str
    root: str
    status: str
    anchored_at: float
    tx_hash: str = ""  # a chain anchor's transaction (eip155, btc), else ""
    observed: int = 0  # confirmations seen when written
    required: int = 0  # confirmations the receipt waits for (0: none, a timestamp authority)


@dataclass(frozen=True, slots=True)
class ReceiptDepth(Event):
    """A pending receipt's transaction is this deep now, not yet `required` (core/confirmations.py)."""

    job: JobKey
    target: str
    path: str
    observed: int
    required: int


@dataclass(frozen=True, slots=True)
class WalletRead(Event):
    """A signer's balance after an anchor it paid for (core/observe/wallets.py)."""

    target: str
    sats: int
    anchors_left: int
    low: bool  # fewer anchors left than the target's threshold (btc: lowBalanceAnchors)


@dataclass(frozen=True, slots=True)
class ReceiptConfirmed(Event):
    job: JobKey
    target: str
    path: str


@dataclass(frozen=True, slots=True)
class ConfigApplied(Event):
    config_hash: str
    added: tuple[JobKey, ...] = ()
    removed: tuple[JobKey, ...] = ()
    changed: tuple[JobKey, ...] = ()


@dataclass(frozen=True, slots=True)
class ConfigRejected(Event):
    errors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Paused(Event):
    paused: bool


@dataclass(frozen=True, slots=True)
class ControlCommand(Event):
    """A mutating command over the control socket, as written to the audit log."""

    command: str  # force | pause | resume | reload
    uid: int
    user: str
    arguments: dict[str, Any] = field(default_factory=dict)
    status: int = 200  # the answer's HTTP status: 403 refused, 4xx/5xx failed


@dataclass(frozen=True, slots=True)
class ReplicasSeen(Event):
    """Cluster mode: a heartbeat read the replica registry (every lease / 3 seconds), so
    dashboards, attached ones too, show current heartbeats and who is alive."""

    alive: int
    store_ok: bool


@dataclass(frozen=True, slots=True)
class TokenDiscarded(Event):
    """An attestation was paid for (a token signed, a transaction sent) and ends in no
    receipt: `reason` is `lease_lost` (another replica claimed its jobs first),
    `taken_over` (another replica resolved its intent), `superseded` (its jobs were all
    anchored again before the interrupted anchor was recovered) or `unrecovered` (an
    interrupted call whose outcome could not be found: it may have been paid)."""

    target: str
    intent: str
    reason: str
    jobs: int


@dataclass(frozen=True, slots=True)
class TickCompleted(Event):
    duration: float
    due: int


@dataclass(frozen=True, slots=True)
class LogRecord(Event):
    level: str
    msg: str
    fields: dict[str, Any] = field(default_factory=dict)


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def publish(self, event: Event) -> None:
        for fn in tuple(self._subscribers):
            try:
                fn(event)
            except Exception as exc:  # a broken consumer must never stop anchoring
                print(f"event subscriber {fn!r} failed: {exc!r}", file=sys.stderr)
