"""What a `btc` attestation proves: offline (the transaction, its OP_RETURN, its Merkle
branch, the header and its proof of work) and on a node (the block is on the best chain,
deep enough)."""

from __future__ import annotations

from typing import Any

from core.anchors.base import VerificationFailed
from core.anchors.btc.tx import anchored_digest, check_header, merkle_block, txid_of
from core.anchors.evm.rpc import Node

__all__ = ["check_attestation", "check_on_node"]


def check_attestation(att: dict[str, Any], digest: bytes) -> None:
    """VerificationFailed saying what is wrong with the attestation's own bytes."""
    if att.get("scheme") != "btc":
        raise VerificationFailed(f"scheme is {att.get('scheme')!r}, not 'btc'")
    txid = att.get("tx_hash")
    try:
        raw = bytes.fromhex(str(att.get("raw_tx")))
        proof = bytes.fromhex(str(att.get("txoutproof")))
    except ValueError:
        raise VerificationFailed("raw_tx and txoutproof must be hex") from None
    try:
        if txid_of(raw) != txid:
            raise VerificationFailed(f"raw_tx is not transaction {txid} (its id is {txid_of(raw)})")
        carried = anchored_digest(raw, int(att.get("vout", 0)))
    except ValueError as exc:
        raise VerificationFailed(f"transaction {txid}: {exc}") from None
    if carried != digest:
        raise VerificationFailed(
            f"transaction {txid} anchors {carried.hex()}, not the anchored root {digest.hex()}"
        )
    try:
        header, proved = merkle_block(proof)
        block_hash = check_header(header)
    except ValueError as exc:
        raise VerificationFailed(f"txoutproof: {exc}") from None
    if txid not in proved:
        raise VerificationFailed(f"the txoutproof proves {proved}, not transaction {txid}")
    if block_hash != att.get("block_hash"):
        raise VerificationFailed(f"the txoutproof's header is block {block_hash}, not {att.get('block_hash')}")


async def check_on_node(node: Node, att: dict[str, Any], need: int) -> None:
    """The attested block is the node's block at its height, at least `need` deep."""
    height = int(att.get("block_number", -1))
    top = int(await node.call("getblockcount"))
    best = await node.call("getblockhash", height) if 0 <= height <= top else None
    if best != att.get("block_hash"):
        raise VerificationFailed(
            f"block {att.get('block_hash')} is not on the node's best chain at height {height} "
            f"(there: {best})"
        )
    depth = top - height + 1
    if depth < need:
        raise VerificationFailed(f"transaction {att.get('tx_hash')} is {depth} blocks deep, {need} required")
