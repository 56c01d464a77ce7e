"""The signers' balances read after anchors (core/observe/wallets.py)."""

from __future__ import annotations

from pathlib import Path

from core.anchors.base import Wallet
from core.anchors.local.backend import LocalTSA
from core.clock import FakeClock
from core.events import AnchorSucceeded, ConfigApplied, EventBus, WalletRead
from core.jobs import JobKey
from core.observe.logs import Log
from core.observe.wallets import WalletWatch


class Signer:
    """A paying target's backend as the watch sees it (btc's: a `wallet` after each send)."""

    target = "local:dev"

    def __init__(self, wallet: Wallet) -> None:
        self.wallet = wallet


def test_a_target_without_a_wallet_is_not_asked_at_every_receipt_and_one_with_one_after_a_reload_is(tmp_path: Path) -> None:
    clock = FakeClock()
    bus = EventBus()
    read: list[WalletRead] = []
    bus.subscribe(lambda e: read.append(e) if isinstance(e, WalletRead) else None)
    backend: object = LocalTSA(tmp_path, "dev", clock)
    asked: list[str] = []

    def backend_for(target: str) -> object:
        asked.append(target)
        return backend

    WalletWatch(bus, Log(bus, clock), backend_for)  # type: ignore[arg-type]

    def anchored(jobs: int) -> None:
        for n in range(jobs):
            bus.publish(AnchorSucceeded(at=clock.now(), job=JobKey(f"ns{n}", "fast"), target="local:dev",
                                        root="sha256:" + "00" * 32, duration=0.1, status="confirmed"))

    anchored(1000)  # one anchor's receipts: a TSA has no wallet, asked once
    assert (len(asked), read) == (1, [])
    # a reload builds the target's backend again: a signer that pays now
    backend = Signer(Wallet(sats=9000, anchors_left=29, warn_below=5))
    bus.publish(ConfigApplied(at=clock.now(), config_hash="b", added=(), removed=(), changed=()))
    anchored(3)
    assert [(r.target, r.sats, r.anchors_left) for r in read] == [("local:dev", 9000, 29)]
    assert len(asked) == 4  # a paying target's wallet is read after each job, as before
