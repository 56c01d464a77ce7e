"""`btc:<name>`: anchoring a digest in the OP_RETURN output of a Bitcoin transaction, built and
signed locally, sent to a node over JSON-RPC (bcoin or Bitcoin Core).

    settings.py   BtcTarget, the `targets.btc.<name>` model
    scheme.py     BTC, its entry in the scheme table (core/anchors/schemes.py)
    tx.py         keys, the anchor transaction (embit), Merkle blocks and headers
    backend.py    BtcBackend: coins, fees, signing, sending, confirmations, recovery
    proof.py      what an attestation proves, offline and on a node
    checking.py   verify and verify --explain (--rpc-url, else the config's rpcUrl);
                  check-config's key file check

Importing the package loads the settings and the entry only (pydantic).
"""

from core.anchors.btc.scheme import BTC
from core.anchors.btc.settings import BtcTarget

__all__ = ["BTC", "BtcTarget"]
