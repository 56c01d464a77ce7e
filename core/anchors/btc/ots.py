"""An OpenTimestamps proof (`.ots`) of a btc receipt's batch root, that the OpenTimestamps
client checks against a node (`ots --bitcoin-node URL verify -d <root hex> X.ots`).

The proof's "file digest" is the batch root (sha256); its operations make the leaf a
version 2 receipt anchors (prepend the domain, namespace and batch id; sha256), then walk
the receipt's audit path (RFC 6962: the leaf `prepend 00`, each node `prepend 01||left` or `prepend 01`
`append right`, sha256) to the anchored root, then the transaction's bytes around its
OP_RETURN (prepend, append, sha256 twice: the txid), then the transaction's Merkle branch
from the receipt's `gettxoutproof` (prepend or append the sibling, sha256 twice) to the
block's Merkle root, ending in a BitcoinBlockHeaderAttestation(height). Written by hand
(the format is a few bytes per operation): no library is needed to make it."""

from __future__ import annotations

from typing import Any

from core.anchors.btc.tx import merkle_branch, stripped
from core.receipts import leaf_preamble

__all__ = ["ots_proof"]

MAGIC = b"\x00OpenTimestamps\x00\x00Proof\x00\xbf\x89\xe2\xe8\x84\xe8\x92\x94"
SHA256, APPEND, PREPEND, ATTESTATION = b"\x08", b"\xf0", b"\xf1", b"\x00"
BITCOIN = bytes.fromhex("0588960d73d71901")


def _varuint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _varbytes(data: bytes) -> bytes:
    return _varuint(len(data)) + data


def _hex(text: str) -> bytes:
    return bytes.fromhex(str(text).partition(":")[2] or str(text))


def _bound_leaf(receipt: dict[str, Any]) -> list[bytes]:
    """From the batch root to the leaf a version 2 receipt anchors (docs/receipts.md):
    prepend the domain, the namespace and the batch id, sha256. Version 1: the root itself."""
    if int(receipt.get("version", 1)) < 2:
        return []
    preamble = leaf_preamble(str(receipt["namespace"]), str(receipt["batch"]["id"]))
    return [PREPEND + _varbytes(preamble), SHA256]


def _audit_path(receipt: dict[str, Any]) -> list[bytes]:
    """The operations from the batch root to the anchored root (RFC 9162 2.1.3.2)."""
    if int(receipt.get("tree_size", 1)) == 1:
        return []
    ops = [PREPEND + _varbytes(b"\x00"), SHA256]
    i, n = int(receipt["leaf_index"]), int(receipt["tree_size"]) - 1
    for sibling in map(_hex, receipt["proof"]):
        if i % 2 or i == n:
            ops += [PREPEND + _varbytes(b"\x01" + sibling), SHA256]
            while i % 2 == 0 and i:
                i, n = i >> 1, n >> 1
        else:
            ops += [PREPEND + _varbytes(b"\x01"), APPEND + _varbytes(sibling), SHA256]
        i, n = i >> 1, n >> 1
    return ops


def ots_proof(receipt: dict[str, Any]) -> bytes:
    """The `.ots` file of a btc receipt (its JSON document); ValueError when the receipt
    is not a mined btc anchor."""
    att = receipt["attestation"]
    if att.get("scheme") != "btc" or "txoutproof" not in att:
        raise ValueError("not a btc receipt with a block proof")
    anchored = _hex(receipt["anchored_root"])
    tx = stripped(bytes.fromhex(att["raw_tx"]))
    at = tx.find(b"\x6a\x20" + anchored)
    if at < 0:
        raise ValueError("the transaction does not carry the anchored root")
    at += 2
    ops = _bound_leaf(receipt) + _audit_path(receipt)
    ops += [PREPEND + _varbytes(tx[:at]), APPEND + _varbytes(tx[at + 32 :]), SHA256, SHA256]
    for sibling, on_left in merkle_branch(bytes.fromhex(att["txoutproof"]), att["tx_hash"]):
        ops += [(PREPEND if on_left else APPEND) + _varbytes(sibling), SHA256, SHA256]
    attestation = ATTESTATION + BITCOIN + _varbytes(_varuint(int(att["block_number"])))
    return MAGIC + _varuint(1) + SHA256 + _hex(receipt["batch"]["root"]) + b"".join(ops) + attestation
