"""`verify` and `verify --explain` for `btc:` receipts: the proof's own bytes offline, then a
node of the network (--rpc-url, else the target's rpcUrl in the config; no key is read,
nothing is written) for the best chain and the depth; check-config's look at a key file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.anchors.base import CannotVerify
from core.anchors.btc.backend import BtcBackend
from core.anchors.btc.settings import BtcTarget
from core.anchors.btc.tx import KeyProblem, parse_key
from core.anchors.spec import VerifyInputs, shell_word
from core.clock import SystemClock

if TYPE_CHECKING:
    from core.receipts import Receipt


def key_file_problem(path: Path) -> str | None:
    """None if `path` holds a usable key (64 hex digits or a WIF), else why not; never
    quotes the file's content."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read key file {path}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}"
    try:
        parse_key(text)
    except KeyProblem as exc:
        return f"key file {path} holds {exc}"
    finally:
        del text
    return None


def rpc_url(target: str, inputs: VerifyInputs) -> str:
    """The node a btc receipt is checked on; CannotVerify when there is none."""
    url = inputs.rpc_urls.get(target) or getattr(inputs.settings(target), "rpc_url", None) or None
    if url is None:
        raise CannotVerify(
            f"{target}: the block is checked on a node of the network; pass --rpc-url "
            f"{target}=URL{inputs.no_config()}"
        )
    return url


def node_checker(target: str, inputs: VerifyInputs) -> BtcBackend:
    """A backend that only checks (its verify()): no key is read, nothing written."""
    url = rpc_url(target, inputs)
    settings = inputs.settings(target)
    if not isinstance(settings, BtcTarget):
        settings = BtcTarget.model_validate({"rpcUrl": url})
    elif target in inputs.rpc_urls:
        settings = settings.model_copy(update={"rpc_url": url})
    return BtcBackend(target, settings, SystemClock(), inputs.config_data_dir or Path("."))


# --------------------------------------------------------------------------- verify --explain

_RPC = (
    "rpc() { curl -sf --data \"{\\\"method\\\":\\\"$1\\\",\\\"params\\\":[$2],\\\"id\\\":1}\" \"$RPC\""
    ' || { echo "CANNOT CHECK: the node $RPC did not answer $1"; exit 3; }; }'
)

_OFFLINE = """\
python3 - "$R" <<'PY'
import hashlib, io, json, sys
d = lambda b: hashlib.sha256(hashlib.sha256(b).digest()).digest()
r = json.load(open(sys.argv[1])); a = r["attestation"]; raw = bytes.fromhex(a["raw_tx"])
s = io.BytesIO(raw)
def vi():
    n = s.read(1)[0]; return int.from_bytes(s.read({0xfd: 2, 0xfe: 4, 0xff: 8}[n]), "little") if n >= 0xfd else n
ver = s.read(4); seg = raw[4:6] == b"\\0\\1"; s.seek(6 if seg else 4); body = s.tell()
for _ in range(vi()): s.read(36); s.read(vi()); s.read(4)
outs = []
for _ in range(vi()): s.read(8); outs.append(s.read(vi()))
end = s.tell()
txid = d(ver + raw[body:end] + raw[-4:])[::-1].hex()
root = r["anchored_root"].split(":")[1]
ok_tx = txid == a["tx_hash"] and outs[a["vout"]] == bytes.fromhex("6a20" + root)
h = bytes.fromhex(a["txoutproof"])[:80]; bits = int.from_bytes(h[72:76], "little")
target = (bits & 0x7fffff) << (8 * ((bits >> 24) - 3))
ok_block = d(h)[::-1].hex() == a["block_hash"] and int.from_bytes(d(h), "little") <= target
print("transaction", txid, "OP_RETURN", outs[a["vout"]].hex(), "expected 6a20" + root, "OK" if ok_tx else "FAIL")
print("header", d(h)[::-1].hex(), "proof of work", "OK" if ok_block else "FAIL")
sys.exit(not (ok_tx and ok_block))
PY"""

_ON_NODE = """\
python3 - "$R" "$W/proved.json" "$W/best.json" "$W/count.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); a = r["attestation"]
proved, best, count = (json.load(open(f))["result"] for f in sys.argv[2:5])
depth = count - a["block_number"] + 1
need = (r.get("confirmations") or {}).get("required") or 0
ok = a["tx_hash"] in (proved or []) and best == a["block_hash"] and depth >= need
print("Merkle branch", proved, "best chain", best, "depth", depth, "required", need, "OK" if ok else "FAIL")
sys.exit(not ok)
PY"""


def explain_steps(receipt: Receipt, inputs: VerifyInputs) -> list[str]:
    """python3 (the transaction's id and OP_RETURN, the header's hash and work), then curl
    to the node: verifytxoutproof (the Merkle branch), getblockhash (best chain),
    getblockcount (depth)."""
    target = receipt.target
    att = receipt.attestation
    try:
        rpc = [f"RPC={shell_word(rpc_url(target, inputs))}"]
    except CannotVerify as exc:  # as verify: nothing is checked without a node (exit 3)
        rpc = [
            f"# {exc}",
            '[ -n "${RPC:-}" ] || { echo "CANNOT CHECK: set RPC to http://user:password@host:port/ '
            'of a node of the network"; exit 3; }',
        ]
    return [
        *rpc,
        _RPC,
        f"# 2. transaction {att.get('tx_hash')}: its id, and its OP_RETURN output carries the root;",
        f"#    block {att.get('block_hash')}: the proof's header hashes to it and meets its nBits",
        _OFFLINE,
        f"# 3. the Merkle branch (txoutproof), the block on the best chain at {att.get('block_number')}, deep enough",
        f"rpc verifytxoutproof '\"{att.get('txoutproof')}\"' > \"$W/proved.json\"",
        f"rpc getblockhash {int(att.get('block_number', 0))} > \"$W/best.json\"",
        'rpc getblockcount "" > "$W/count.json"',
        _ON_NODE,
    ]
