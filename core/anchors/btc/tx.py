"""Bitcoin bytes, no node: keys, the anchor transaction (one input, an OP_RETURN output with
the digest, one change output) built and signed with embit, and what a receipt's proof is
made of (the transaction's id, a `gettxoutproof` Merkle block, a header and its work).

Raw scripts and raw transactions only: no address format (bcoin's regtest prefixes differ
from Bitcoin Core's)."""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

from embit import ec
from embit.base58 import decode_check
from embit.script import Script, Witness
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

__all__ = [
    "AnchorTx",
    "Outpoint",
    "anchored_digest",
    "build_anchor",
    "check_header",
    "merkle_block",
    "merkle_branch",
    "parse_key",
    "sha256d",
    "signer_script",
    "stripped",
    "txid_of",
]

OP_RETURN = 0x6A
DUST = 330  # sat: the largest standard dust limit of our outputs (P2WSH at 3 sat/vB relay)


class KeyProblem(ValueError):
    """A signing key that cannot be used; the message never quotes the key."""


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def parse_key(text: str) -> ec.PrivateKey:
    """A private key from 64 hex digits or a WIF (any network's prefix, bcoin's included)."""
    text = text.strip()
    try:
        if len(text) == 64:
            secret = bytes.fromhex(text)
        else:
            raw = decode_check(text)
            if len(raw) not in (33, 34) or (len(raw) == 34 and raw[33] != 1):
                raise KeyProblem("a WIF holds 32 bytes and an optional 0x01")
            secret = raw[1:33]
        return ec.PrivateKey(secret)
    except Exception:  # never chained: the original could quote the key
        raise KeyProblem(
            "not a valid secp256k1 private key (64 hex digits or a WIF)"
        ) from None


def signer_script(key: ec.PrivateKey, script_type: str) -> tuple[bytes, bytes | None]:
    """The output script the key spends (P2WPKH, or P2WSH of `<pubkey> OP_CHECKSIG`) and, for
    P2WSH, its witness script."""
    pub = key.get_public_key().sec()
    if script_type == "p2wsh":
        witness_script = bytes([len(pub)]) + pub + b"\xac"
        return bytes([0, 32]) + hashlib.sha256(witness_script).digest(), witness_script
    h160 = hashlib.new("ripemd160", hashlib.sha256(pub).digest()).digest()
    return bytes([0, 20]) + h160, None


@dataclass(frozen=True)
class Outpoint:
    txid: str  # display order (as the node shows it)
    vout: int
    value: int  # sat


@dataclass(frozen=True)
class AnchorTx:
    raw: bytes
    txid: str
    fee: int
    change: Outpoint


def build_anchor(
    key: ec.PrivateKey, script_type: str, spend: Outpoint, digest: bytes, fee_rate: float
) -> AnchorTx:
    """Spend `spend` (an output of our own script) into `OP_RETURN <digest>` and the change,
    paying `fee_rate` sat/vB; ValueError when the coin cannot pay the fee and keep the change
    above dust."""
    script, witness_script = signer_script(key, script_type)
    fee = 0
    for _ in range(3):  # the fee depends on the size, which depends (a little) on the fee
        change = spend.value - fee
        if change < DUST:
            raise ValueError(
                f"the coin {spend.txid}:{spend.vout} holds {spend.value} sat, too little to pay "
                f"a fee of {fee} sat and keep {DUST} sat of change"
            )
        raw, txid, vsize = _signed(key, script, witness_script, spend, digest, change)
        needed = math.ceil(vsize * fee_rate)
        if needed <= fee:
            return AnchorTx(raw, txid, fee, Outpoint(txid, 1, change))
        fee = needed
    change = spend.value - fee
    raw, txid, _ = _signed(key, script, witness_script, spend, digest, change)
    return AnchorTx(raw, txid, fee, Outpoint(txid, 1, change))


def _signed(
    key: ec.PrivateKey,
    script: bytes,
    witness_script: bytes | None,
    spend: Outpoint,
    digest: bytes,
    change: int,
) -> tuple[bytes, str, int]:
    tx = Transaction(
        version=2,
        vin=[TransactionInput(bytes.fromhex(spend.txid), spend.vout, sequence=0xFFFFFFFD)],
        vout=[
            TransactionOutput(0, Script(bytes([OP_RETURN, 32]) + digest)),
            TransactionOutput(change, Script(script)),
        ],
    )
    if witness_script is None:  # P2WPKH: the script code is the P2PKH of the key hash
        code = Script(b"\x76\xa9\x14" + script[2:] + b"\x88\xac")
    else:
        code = Script(witness_script)
    sighash = tx.sighash_segwit(0, code, spend.value, SIGHASH.ALL)
    sig = key.sign(sighash).serialize() + bytes([SIGHASH.ALL])
    items = [sig, key.get_public_key().sec()] if witness_script is None else [sig, witness_script]
    tx.vin[0].witness = Witness(items)
    raw = tx.serialize()
    base = len(raw) - len(tx.vin[0].witness.serialize()) - 2  # less marker, flag and witness
    vsize = math.ceil((base * 3 + len(raw)) / 4)
    return raw, tx.txid().hex(), vsize


def txid_of(raw: bytes) -> str:
    """The id of a serialized transaction (display order); ValueError if it does not parse."""
    return str(Transaction.read_from(io.BytesIO(raw)).txid().hex())


def anchored_digest(raw: bytes, vout: int) -> bytes:
    """The 32 bytes of output `vout`'s `OP_RETURN <32 bytes>`; ValueError otherwise."""
    tx = Transaction.read_from(io.BytesIO(raw))
    if not 0 <= vout < len(tx.vout):
        raise ValueError(f"the transaction has no output {vout}")
    data = tx.vout[vout].script_pubkey.data
    if len(data) != 34 or data[0] != OP_RETURN or data[1] != 32:
        raise ValueError(f"output {vout} is not OP_RETURN with 32 bytes: {data.hex()}")
    return bytes(data[2:])


def check_header(header: bytes) -> str:
    """The block hash (display order) of an 80-byte header whose hash meets its own nBits
    target; ValueError otherwise."""
    if len(header) != 80:
        raise ValueError(f"a block header is 80 bytes, got {len(header)}")
    bits = int.from_bytes(header[72:76], "little")
    exponent, mantissa = bits >> 24, bits & 0x7FFFFF
    target = mantissa << (8 * (exponent - 3)) if exponent > 3 else mantissa >> (8 * (3 - exponent))
    digest = sha256d(header)
    if int.from_bytes(digest, "little") > target:
        raise ValueError("the header's hash does not meet its proof-of-work target (nBits)")
    return digest[::-1].hex()


# A step up a Merkle branch: (the sibling's hash, True when the sibling is on the left).
Branch = list[tuple[bytes, bool]]


def merkle_block(proof: bytes) -> tuple[bytes, list[str]]:
    """A `gettxoutproof` reply: its header and the ids it proves (display order), after
    checking that its partial Merkle tree hashes to the header's Merkle root; ValueError."""
    header, matched = _partial_tree(proof)
    return header, [leaf[::-1].hex() for leaf, _ in matched]


def merkle_branch(proof: bytes, txid: str) -> Branch:
    """The branch from transaction `txid` up to the header's Merkle root, leaf first."""
    for leaf, branch in _partial_tree(proof)[1]:
        if leaf[::-1].hex() == txid:
            return branch
    raise ValueError(f"the Merkle block does not prove transaction {txid}")


def _partial_tree(proof: bytes) -> tuple[bytes, list[tuple[bytes, Branch]]]:
    """BIP 37's partial Merkle tree: the header and each matched leaf with its branch."""
    stream = io.BytesIO(proof)
    header = stream.read(80)
    total = int.from_bytes(stream.read(4), "little")
    hashes = [stream.read(32) for _ in range(_varint(stream))]
    flag_bytes = stream.read(_varint(stream))
    if len(header) != 80 or not 0 < total <= 1_000_000 or any(len(h) != 32 for h in hashes):
        raise ValueError("the Merkle block is truncated")
    flags = [(flag_bytes[i // 8] >> (i % 8)) & 1 for i in range(len(flag_bytes) * 8)]
    height = 0
    while (total + (1 << height) - 1) >> height > 1:
        height += 1
    matched: list[tuple[bytes, Branch]] = []
    pos = {"bit": 0, "hash": 0}

    def width(h: int) -> int:
        return (total + (1 << h) - 1) >> h

    def walk(h: int, i: int) -> tuple[bytes, list[Branch]]:
        """The node's hash and the (partial) branches of the matched leaves below it."""
        if pos["bit"] >= len(flags):
            raise ValueError("the Merkle block's flags run out")
        flag = flags[pos["bit"]]
        pos["bit"] += 1
        if h == 0 or not flag:
            if pos["hash"] >= len(hashes):
                raise ValueError("the Merkle block's hashes run out")
            node = hashes[pos["hash"]]
            pos["hash"] += 1
            if h == 0 and flag:
                matched.append((node, []))
                return node, [matched[-1][1]]
            return node, []
        left, below_left = walk(h - 1, i * 2)
        if i * 2 + 1 < width(h - 1):
            right, below_right = walk(h - 1, i * 2 + 1)
            if right == left:
                raise ValueError("the Merkle block repeats a hash (CVE-2012-2459)")
        else:
            right, below_right = left, []
        for branch in below_left:
            branch.append((right, False))
        for branch in below_right:
            branch.append((left, True))
        return sha256d(left + right), below_left + below_right

    root, _ = walk(height, 0)
    if pos["hash"] != len(hashes):
        raise ValueError("the Merkle block has hashes it does not use")
    if root != header[36:68]:
        raise ValueError("the Merkle branch does not hash to the header's Merkle root")
    return header, matched


def stripped(raw: bytes) -> bytes:
    """The transaction without its witness: the bytes its id is the double SHA-256 of."""
    tx = Transaction.read_from(io.BytesIO(raw))
    for vin in tx.vin:
        vin.witness = Witness([])
    return bytes(tx.serialize())


def _varint(stream: io.BytesIO) -> int:
    first = stream.read(1)
    if not first:
        raise ValueError("the Merkle block is truncated")
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}.get(first[0])
    return first[0] if size is None else int.from_bytes(stream.read(size), "little")
