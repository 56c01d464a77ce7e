"""The signers' balances: what each paying target (btc) has left after its anchors.

`WalletWatch(bus, log, backend_for)` listens for `AnchorSucceeded` and reads the target's
backend `wallet` (core.anchors.base.Wallet: the tracked coin's value, how many more anchors
it pays at the last fee, the threshold). Each new reading is published as a `WalletRead`
event (core/observe/metrics.py: `vmsh_btc_signer_balance_sats`,
`vmsh_signer_anchors_left`, `vmsh_signer_balance_low`), and `low()` gives /health its
warnings. The log says it once per crossing: a WARNING when a target's balance falls
below its threshold, an INFO when it is back above (refunded): never once per anchor.
"""

from __future__ import annotations

from collections.abc import Callable

from core.anchors.base import Backend, Wallet
from core.events import AnchorSucceeded, ConfigApplied, Event, EventBus, WalletRead
from core.observe.logs import Log


def low_balance_warning(target: str, wallet: Wallet) -> str:
    """The one sentence /health and the log use."""
    return (
        f"{target}: the signer's balance ({wallet.sats} sat) pays {wallet.anchors_left} more "
        f"anchors at the current fee, fewer than lowBalanceAnchors {wallet.warn_below}: fund it"
    )


class WalletWatch:
    def __init__(self, bus: EventBus, log: Log, backend_for: Callable[[str], Backend]) -> None:
        self._bus = bus
        self._log = log
        self._backend_for = backend_for
        self.latest: dict[str, Wallet] = {}  # per target, the last reading
        # targets whose backend has no wallet, not asked again at each receipt (10,000 an
        # anchor: backend_for compares the target's settings each time) until a config applies
        self._walletless: set[str] = set()
        self._unsubscribe: Callable[[], None] | None = bus.subscribe(self._handle)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def low(self) -> list[str]:
        """A warning per target whose balance is low, in target order."""
        return [low_balance_warning(t, w) for t, w in sorted(self.latest.items()) if w.low]

    def _handle(self, event: Event) -> None:
        if isinstance(event, ConfigApplied):  # a target's backend may be another one now
            self._walletless.clear()
            return
        if not isinstance(event, AnchorSucceeded) or event.target in self._walletless:
            return
        try:
            backend = self._backend_for(event.target)
        except Exception:
            return  # its backend cannot be built now: nothing to read
        if not hasattr(backend, "wallet"):  # not a paying target (only btc signers have one)
            self._walletless.add(event.target)
            return
        wallet = backend.wallet
        if not isinstance(wallet, Wallet) or self.latest.get(event.target) == wallet:
            return  # one event per anchor job: one reading per transaction
        before = self.latest.get(event.target)
        self.latest[event.target] = wallet
        self._bus.publish(
            WalletRead(at=event.at, target=event.target, sats=wallet.sats, anchors_left=wallet.anchors_left,
                       low=wallet.low)
        )
        if wallet.low and (before is None or not before.low):
            self._log.warning(
                "signer balance low", target=event.target, balance_sats=wallet.sats,
                anchors_left=wallet.anchors_left, low_balance_anchors=wallet.warn_below,
                hint=low_balance_warning(event.target, wallet),
            )
        elif not wallet.low and before is not None and before.low:
            self._log.info(
                "signer balance ok again", target=event.target, balance_sats=wallet.sats,
                anchors_left=wallet.anchors_left,
            )


__all__ = ["WalletWatch", "low_balance_warning"]
