"""What an `eip155` attestation proves, checked on a node: the transaction exists on the
chain, succeeded, sits in the attested block, was sent by the attested account, carries the
digest (calldata, or the anchor(...) call's root) and is deep enough."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core.anchors.base import NotFinal, VerificationFailed
from core.anchors.evm.abi import decode_anchor_call
from core.anchors.evm.rpc import Node, qty, unhex

__all__ = ["check_transaction"]


async def check_transaction(
    node: Node, chain_id: int, att: dict[str, Any], digest: bytes, need: int
) -> datetime:
    """The attested block's time; VerificationFailed saying what is wrong, NotFinal when the
    transaction is genuine but fewer than `need` blocks deep; the node's failures as anchor
    errors."""
    if att.get("scheme") != "eip155":
        raise VerificationFailed(f"scheme is {att.get('scheme')!r}, not 'eip155'")
    if att.get("chain_id") != chain_id:
        raise VerificationFailed(f"chain_id {att.get('chain_id')!r} is not this target's {chain_id}")
    await node.check_chain(chain_id)
    tx_hash = att.get("tx_hash")
    if not isinstance(tx_hash, str):
        raise VerificationFailed("tx_hash is missing")
    tx = await node.call("eth_getTransactionByHash", tx_hash)
    receipt = await node.call("eth_getTransactionReceipt", tx_hash)
    if tx is None or receipt is None:
        raise VerificationFailed(f"transaction {tx_hash} is not on chain {chain_id}")
    _check_mined(tx_hash, tx, receipt, att)
    root = _anchored(tx_hash, tx, att)
    if root != digest:
        raise VerificationFailed(
            f"transaction {tx_hash} anchors 0x{root.hex()}, not the anchored root 0x{digest.hex()}"
        )
    block = await node.call("eth_getBlockByHash", receipt["blockHash"], False)
    if not isinstance(block, dict) or "timestamp" not in block:
        raise VerificationFailed(f"block {receipt['blockHash']} of transaction {tx_hash} is not on chain {chain_id}")
    at = datetime.fromtimestamp(qty(block["timestamp"]), UTC)
    head = qty(await node.call("eth_blockNumber"))
    depth = head - qty(receipt["blockNumber"]) + 1
    if depth < need:
        raise NotFinal(f"transaction {tx_hash} is {depth} of {need} blocks deep", at)
    return at


def _check_mined(tx_hash: str, tx: dict[str, Any], receipt: dict[str, Any], att: dict[str, Any]) -> None:
    """Succeeded, in the attested block, from the attested sender."""
    if qty(receipt.get("status", "0x0")) != 1:
        raise VerificationFailed(f"transaction {tx_hash} failed (status 0)")
    if receipt.get("blockHash") != att.get("block_hash") or qty(receipt["blockNumber"]) != att.get(
        "block_number"
    ):
        raise VerificationFailed(
            f"transaction {tx_hash} is in block {qty(receipt['blockNumber'])} "
            f"({receipt.get('blockHash')}), not the attested block {att.get('block_number')} "
            f"({att.get('block_hash')})"
        )
    if att.get("from") and str(tx.get("from", "")).lower() != str(att["from"]).lower():
        raise VerificationFailed(f"transaction {tx_hash} was sent by {tx.get('from')}, not {att['from']}")


def _anchored(tx_hash: str, tx: dict[str, Any], att: dict[str, Any]) -> bytes:
    """The root the transaction carries: its calldata, or the root of its anchor(...) call."""
    data = unhex(tx.get("input") or tx.get("data") or "0x")
    contract = att.get("contract")
    if not contract:
        return data
    if str(tx.get("to", "")).lower() != str(contract).lower():
        raise VerificationFailed(f"transaction {tx_hash} calls {tx.get('to')}, not the contract {contract}")
    try:
        root, _, _, _ = decode_anchor_call(data)
    except ValueError as exc:
        raise VerificationFailed(f"transaction {tx_hash}: {exc}") from None
    return root
