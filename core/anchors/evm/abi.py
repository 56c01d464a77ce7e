"""The VaultMesh anchor contract's call, ABI-encoded by hand:
`anchor(bytes32 root, bytes32 batchId, string memo, bool persist)`."""

from __future__ import annotations

from eth_utils import keccak

__all__ = ["ANCHOR_SELECTOR", "ANCHOR_SIGNATURE", "MEMO", "decode_anchor_call", "encode_anchor_call"]

MEMO = "vaultmesh-scheduler"
ANCHOR_SIGNATURE = "anchor(bytes32,bytes32,string,bool)"
ANCHOR_SELECTOR = keccak(text=ANCHOR_SIGNATURE)[:4]


def _word(n: int) -> bytes:
    return n.to_bytes(32, "big")


def encode_anchor_call(root: bytes, batch_id: bytes, memo: str, persist: bool) -> bytes:
    """Calldata of anchor(bytes32,bytes32,string,bool): head of 4 words, then the string."""
    if len(root) != 32 or len(batch_id) != 32:
        raise ValueError("root and batchId are 32 bytes")
    text = memo.encode()
    padded = text + b"\x00" * (-len(text) % 32)
    return (
        ANCHOR_SELECTOR
        + root
        + batch_id
        + _word(4 * 32)  # offset of the string's tail from the start of the arguments
        + _word(1 if persist else 0)
        + _word(len(text))
        + padded
    )


def decode_anchor_call(data: bytes) -> tuple[bytes, bytes, str, bool]:
    """The arguments of an anchor(...) call; ValueError if `data` is not one."""
    if data[:4] != ANCHOR_SELECTOR:
        raise ValueError("not a call of " + ANCHOR_SIGNATURE)
    args = data[4:]
    if len(args) < 5 * 32:
        raise ValueError("anchor(...) calldata is too short")
    root, batch_id = args[0:32], args[32:64]
    offset = int.from_bytes(args[64:96], "big")
    persist = int.from_bytes(args[96:128], "big")
    if persist > 1 or offset + 32 > len(args):
        raise ValueError("malformed anchor(...) calldata")
    length = int.from_bytes(args[offset : offset + 32], "big")
    if offset + 32 + length > len(args):
        raise ValueError("malformed anchor(...) calldata: string out of bounds")
    memo = args[offset + 32 : offset + 32 + length].decode("utf-8", "replace")
    return root, batch_id, memo, bool(persist)
