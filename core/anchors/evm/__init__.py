"""`eip155:<chainId>`: anchoring a digest in an EVM transaction, signed locally, sent over
JSON-RPC.

    settings.py   Eip155Target, the `targets.eip155.<name>` model
    scheme.py     EIP155, its entry in the scheme table (core/anchors/schemes.py)
    backend.py    EVMBackend: fees, gas, nonces, signing, sending, recovery
    abi.py        the anchor contract's call, encoded and decoded
    rpc.py        the node: JSON-RPC, its failures as anchor error kinds
    proof.py      what an attestation proves, checked on a node (verify, the backend)
    checking.py   verify and verify --explain (--rpc-url, else the config's rpcUrl);
                  check-config's key file check

Importing the package loads the settings and the entry only (pydantic).
"""

from core.anchors.evm.scheme import EIP155
from core.anchors.evm.settings import Eip155Target

__all__ = ["EIP155", "Eip155Target"]
