"""`verify` and `verify --explain` for `eip155:` receipts, on a node of the chain
(--rpc-url, else the target's rpcUrl in the config; no key is read, nothing is written);
and check-config's look at a target's key file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.anchors.base import CannotVerify
from core.anchors.evm.abi import ANCHOR_SELECTOR, ANCHOR_SIGNATURE
from core.anchors.evm.backend import EVMBackend
from core.anchors.evm.settings import Eip155Target
from core.anchors.spec import VerifyInputs, shell_word
from core.clock import SystemClock
from core.errors import ValidationError

if TYPE_CHECKING:
    from core.receipts import Receipt


def key_file_problem(path: Path) -> str | None:
    """None if ``path`` holds a usable secp256k1 private key (hex, 0x optional), else why
    not; the message never quotes the file's content."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        return f"cannot read key file {path}: {reason}"
    from eth_account import Account

    try:
        Account.from_key(text)
    except Exception:  # never chained or quoted: the message could hold the key
        return f"key file {path} does not hold a valid secp256k1 private key (64 hex digits)"
    finally:
        del text
    return None


def rpc_url(target: str, inputs: VerifyInputs) -> str:
    """The node an eip155 receipt is checked on; CannotVerify when there is none."""
    url = inputs.rpc_urls.get(target)
    if url is None:
        url = getattr(inputs.settings(target), "rpc_url", None) or None
    if url is None:
        raise CannotVerify(
            f"{target}: the transaction is checked on a node of chain "
            f"{target.partition(':')[2]}; pass --rpc-url {target}=URL{inputs.no_config()}"
        )
    return url


def node_checker(target: str, inputs: VerifyInputs) -> EVMBackend:
    """A backend that only asks the node (its verify()): no key is read, nothing written."""
    name = target.partition(":")[2]
    if not name.isdigit():
        raise ValidationError(f"{target!r} is not an eip155:<chain id> target")
    url = rpc_url(target, inputs)
    settings = inputs.settings(target)
    if target in inputs.rpc_urls or not isinstance(settings, Eip155Target):  # no entry: None
        settings = Eip155Target.model_validate({"rpcUrl": url, "chainId": int(name)})
    try:
        return EVMBackend(target, settings, SystemClock(), inputs.config_data_dir or Path("."))
    except ValidationError as exc:
        raise CannotVerify(f"{exc}; pass --rpc-url {target}=URL") from None


# --------------------------------------------------------------------------- verify --explain

_RPC = (
    'rpc() {{ curl -sf -H "Content-Type: application/json" --data '
    '"{{\\"jsonrpc\\":\\"2.0\\",\\"id\\":1,\\"method\\":\\"$1\\",\\"params\\":[$2]}}" "$RPC" '
    '|| {{ echo "CANNOT CHECK: the node $RPC did not answer $1"; exit 3; }}; }}'
)

_EVM_CHECK = """\
python3 - "$R" "$W/tx.json" "$W/receipt.json" "$W/head.json" "$W/block.json" "$W" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); a = r["attestation"]
tx, rc, head, block = (json.load(open(f))["result"] for f in sys.argv[2:6])
want = {want}
ok = tx is not None and rc is not None and tx["input"].lower().startswith(want)
ok = ok and (not a.get("contract") or tx["to"].lower() == a["contract"].lower())
ok = ok and int(rc["status"], 16) == 1 and rc["blockHash"] == a["block_hash"]
depth = int(head, 16) - int(rc["blockNumber"], 16) + 1 if ok else 0
need = (r.get("confirmations") or {{}}).get("required") or 0
print("calldata:", tx and tx["input"][:{shown}], "expected", want)
ok = ok and block is not None and block["hash"] == a["block_hash"]
print("transaction:", "OK" if ok else "FAIL", "depth", depth, "required", need)
if ok:  # the block's time, and how far a genuine but young transaction is, for the last step
    open(sys.argv[6] + "/attested", "w").write("@%d" % int(block["timestamp"], 16))
    if depth < need:
        open(sys.argv[6] + "/pending", "w").write(f"transaction {{a['tx_hash']}} is {{depth}} of {{need}} blocks deep")
sys.exit(not ok)
PY"""


def explain_steps(receipt: Receipt, inputs: VerifyInputs) -> list[str]:
    """JSON-RPC over curl: eth_getTransactionByHash (the calldata carries the root),
    eth_getTransactionReceipt (succeeded, in the attested block), eth_blockNumber (depth)."""
    target = receipt.target
    attestation = receipt.attestation
    root = receipt.anchored_root.partition(":")[2]
    try:
        rpc = [f"RPC={shell_word(rpc_url(target, inputs))}"]
    except CannotVerify as exc:
        rpc = [
            f"# {exc}",
            f'[ -n "${{RPC:-}}" ] || {{ echo "CANNOT CHECK: set RPC to the URL of a node of chain '
            f'{target.partition(":")[2]}"; exit 3; }}',
        ]
    if attestation.get("contract"):
        want = "0x" + ANCHOR_SELECTOR.hex() + root + root
        what = (
            f"a call of {ANCHOR_SIGNATURE} on {attestation['contract']} (selector "
            f"0x{ANCHOR_SELECTOR.hex()} = keccak256 of that signature, first 4 bytes) whose "
            "root and batchId are the anchored root"
        )
    else:
        want = "0x" + root
        what = "exactly the 32 bytes of the anchored root"
    tx = attestation.get("tx_hash", "")
    return [
        *rpc,
        _RPC.format(),
        f"# 2. the transaction {tx}: its input (calldata) must be {what}:",
        f"#    {want}",
        f'rpc eth_getTransactionByHash \'"{tx}"\' > "$W/tx.json"',
        "# 3. it succeeded, in the attested block "
        f"{attestation.get('block_number')} ({attestation.get('block_hash')}), deep enough",
        f'rpc eth_getTransactionReceipt \'"{tx}"\' > "$W/receipt.json"',
        'rpc eth_blockNumber "" > "$W/head.json"',
        f'rpc eth_getBlockByHash \'"{attestation.get("block_hash", "")}",false\' > "$W/block.json"',
        "#    (the block's time is the attested time; fewer blocks than required: PENDING)",
        _EVM_CHECK.format(want=repr(want), shown=len(want)),
    ]
