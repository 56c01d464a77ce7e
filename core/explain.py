"""`vmsh-scheduler verify --explain RECEIPT...`: the stock-tool commands that check a receipt.

An auditor should not have to trust this program to trust a receipt. For each receipt this
prints a POSIX shell script that checks the same things with stock tools, reading the
receipt file itself (python3 for JSON, SHA-256 and the audit path; openssl for RFC 3161
tokens; curl for EVM nodes). Piped to `sh` it stops at the first check that fails.

    audit path   python3, RFC 9162 section 2.1.3.2 (RFC 6962 trees): from SHA-256(0x00 ||
                 batch root) up to anchored_root; a group of one anchors batch.root itself
    rfc3161 /    `openssl ts -verify -digest <anchored_root hex>` (sha256 imprints), or
    local        `-data <the 32 root bytes>` (sha384/sha512 imprints hash those bytes);
                 a token carrying an attribute certificate, which `openssl ts` cannot parse,
                 is checked with `openssl cms -verify -purpose timestampsign` and its imprint
                 read from the TSTInfo
    eip155       JSON-RPC over curl: eth_getTransactionByHash (the calldata carries the root),
                 eth_getTransactionReceipt (succeeded, in the attested block), eth_blockNumber
                 (depth)
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from asn1crypto import cms

from core.anchors.base import CannotVerify
from core.anchors.schemes import SCHEMES
from core.anchors.tsp import policy_oid_problem, signer_matches
from core.receipts import Receipt, ReceiptError, load_receipt
from core.verify import ReadOnlyVerifiers, expand

_AUDIT_PATH = """\
python3 - "$R" <<'PY'
import hashlib, json, sys
r = json.load(open(sys.argv[1]))
h = lambda b: hashlib.sha256(b).digest()
x = lambda s: bytes.fromhex(s.split(":")[1])
leaf, want = x(r["batch"]["root"]), x(r["anchored_root"])
if r["tree_size"] == 1:  # a group of one anchors the batch root itself
    got = leaf
else:  # RFC 9162 2.1.3.2, leaf data = the 32 bytes of the batch root
    i, n, got = r["leaf_index"], r["tree_size"] - 1, h(b"\\0" + leaf)
    for p in map(x, r["proof"]):
        assert n, "the audit path is longer than the tree"
        if i % 2 or i == n:
            got = h(b"\\1" + p + got)
            while i % 2 == 0 and i:
                i, n = i >> 1, n >> 1
        else:
            got = h(b"\\1" + got + p)
        i, n = i >> 1, n >> 1
    got = got if n == 0 else b""
print("audit path:", "OK" if got == want else "FAIL", "->", r["anchored_root"])
sys.exit(got != want)
PY"""

_DIGEST = (
    "D=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"anchored_root\"]"
    '.split(":")[1])\' "$R")'
)

_TOKEN = (
    "python3 -c 'import base64,json,sys; sys.stdout.buffer.write(base64.b64decode("
    'json.load(open(sys.argv[1]))["attestation"]["token"]))\' "$R" > "$W/token.der"'
)

_ROOT_BYTES = (
    "python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(sys.argv[1]))' \"$D\" "
    '> "$W/root.bin"'
)


def _q(value: Any) -> str:
    return shlex.quote(str(value))


def _token_facts(attestation: Mapping[str, Any]) -> tuple[bool, bool]:
    """(embeds its signer's certificate, carries a non-X.509 certificate) of the token."""
    try:
        sd = cms.ContentInfo.load(base64.b64decode(attestation.get("token", "")))["content"]
        choices = [] if sd["certificates"].native is None else list(sd["certificates"])
        sid = sd["signer_infos"][0]["sid"]
    except Exception:  # a malformed token: the commands will say so when run
        return True, False
    embeds = any(c.name == "certificate" and signer_matches(sid, c.chosen) for c in choices)
    return embeds, any(c.name != "certificate" for c in choices)


def _token_steps(receipt: Receipt, path: Path, verifiers: ReadOnlyVerifiers) -> list[str]:
    target = receipt.target
    attestation = receipt.attestation
    try:
        ca_files = verifiers.ca_files(target, path)
        if len(ca_files) == 1:
            ca = [f"CA={_q(Path(ca_files[0]).resolve())}"]
        else:
            ca = [
                'CA="$W/ca.pem"',
                "cat " + " ".join(_q(Path(f).resolve()) for f in ca_files) + ' > "$CA"',
            ]
    except CannotVerify as exc:
        ca = [f"# {exc}", 'CA="${CA:?set CA to the PEM file of the TSA\'s CA certificate(s)}"']
    hash_name = attestation.get("hash") or "sha256"
    embeds, odd_certs = _token_facts(attestation)
    untrusted = "" if embeds else ' -untrusted "$CA"'  # the signer's certificate is only there
    lines = [
        *ca,
        "# 2. the token as the TSA sent it (attestation.token, base64 DER)",
        _TOKEN,
        _DIGEST,
    ]
    if odd_certs:
        lines += [
            "# 3. the token carries an attribute certificate, which `openssl ts` cannot parse;",
            "#    openssl cms checks the signature, the signer's path to $CA and its",
            "#    timeStamping EKU, and writes out the signed TSTInfo",
            'openssl cms -verify -inform DER -in "$W/token.der" -CAfile "$CA"' + untrusted
            + ' -purpose timestampsign -binary -out "$W/tstinfo.der"',
            "# 4. the TSTInfo's messageImprint must be the anchored root"
            + ("" if hash_name == "sha256" else f" hashed with {hash_name}"),
        ]
        if hash_name == "sha256":
            lines.append('I="$D"')
        else:
            lines.append(
                f"I=$(python3 -c 'import hashlib,sys; print(hashlib.{hash_name}("
                "bytes.fromhex(sys.argv[1])).hexdigest())' \"$D\")"
            )
        lines.append(
            'openssl asn1parse -inform DER -in "$W/tstinfo.der" | grep -qi "HEX DUMP\\]:$I$" '
            '&& echo "imprint: OK" || { echo "imprint: FAIL"; exit 1; }'
        )
        return lines + _policy_steps(receipt, "5", from_tstinfo=True)
    lines.append(
        "# 3. OpenSSL checks the signature, the signer's path to $CA at genTime, its "
        "timeStamping EKU and the imprint"
    )
    if hash_name == "sha256":  # the imprint is the anchored root itself
        lines.append(
            'openssl ts -verify -digest "$D" -in "$W/token.der" -token_in -CAfile "$CA"' + untrusted
        )
    else:  # the imprint is <hash>(the 32 bytes of the anchored root)
        lines += [
            _ROOT_BYTES,
            'openssl ts -verify -data "$W/root.bin" -in "$W/token.der" -token_in -CAfile "$CA"'
            + untrusted,
        ]
    return lines + _policy_steps(receipt, "4", from_tstinfo=False)


def _policy_steps(receipt: Receipt, step: str, *, from_tstinfo: bool) -> list[str]:
    """The token is under the policy the receipt states (the checks above look at none).
    OpenSSL shows a policy it knows by name: ask it for that name first."""
    policy = receipt.policy
    if policy is None or policy_oid_problem(policy):
        return []  # no policy requested (or a malformed one: verify says so)
    shown = (
        'openssl asn1parse -inform DER -in "$W/tstinfo.der" | grep -m1 OBJECT | sed "s/.*OBJECT *://"'
        if from_tstinfo
        else 'openssl ts -reply -in "$W/token.der" -token_in -text 2>/dev/null | sed -n "s/^Policy OID: //p"'
    )
    return [
        f"# {step}. the token must be under the policy the receipt states",
        f'P=$(openssl asn1parse -genstr "OID:{policy}" | sed "s/.*OBJECT *://")',
        f'[ "$({shown})" = "$P" ] && echo "policy: OK" || {{ echo "policy: FAIL"; exit 1; }}',
    ]


_RPC = (
    'rpc() {{ curl -sf -H "Content-Type: application/json" --data '
    '"{{\\"jsonrpc\\":\\"2.0\\",\\"id\\":1,\\"method\\":\\"$1\\",\\"params\\":[$2]}}" "$RPC"; }}'
)

_EVM_CHECK = """\
python3 - "$R" "$W/tx.json" "$W/receipt.json" "$W/head.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); a = r["attestation"]
tx, rc, head = (json.load(open(f))["result"] for f in sys.argv[2:5])
want = {want}
ok = tx is not None and rc is not None and tx["input"].lower().startswith(want)
ok = ok and (not a.get("contract") or tx["to"].lower() == a["contract"].lower())
ok = ok and int(rc["status"], 16) == 1 and rc["blockHash"] == a["block_hash"]
depth = int(head, 16) - int(rc["blockNumber"], 16) + 1 if ok else 0
need = (r.get("confirmations") or {{}}).get("required") or 0
print("calldata:", tx and tx["input"][:{shown}], "expected", want)
print("transaction:", "OK" if ok else "FAIL", "depth", depth, "required", need)
sys.exit(not ok or depth < need)
PY"""


def _evm_steps(receipt: Receipt, verifiers: ReadOnlyVerifiers) -> list[str]:
    from core.anchors.evm import ANCHOR_SELECTOR, ANCHOR_SIGNATURE

    target = receipt.target
    attestation = receipt.attestation
    root = receipt.anchored_root.partition(":")[2]
    try:
        rpc = [f"RPC={_q(verifiers.rpc_url(target))}"]
    except CannotVerify as exc:
        rpc = [f"# {exc}", f'RPC="${{RPC:?set RPC to the URL of a node of chain {target.partition(":")[2]}}}"']
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
        _EVM_CHECK.format(want=repr(want), shown=len(want)),
    ]


def explain(path: Path, receipt: Receipt, verifiers: ReadOnlyVerifiers) -> str:
    """The shell script that checks one receipt with stock tools."""
    target = receipt.target
    spec = SCHEMES.get(target.partition(":")[0])
    proof = spec.proof if spec is not None else None
    head = [
        f"# ---- {path}: {target}, {receipt.namespace}/{receipt.cadence}, "
        f"batch {receipt.batch.id}",
        f"R={_q(path.resolve())}",
        'W=$(mktemp -d)',
        "# 1. the audit path leads from batch.root to anchored_root",
        _AUDIT_PATH,
    ]
    if proof in ("timestamp", "embedded-timestamp"):
        steps = _token_steps(receipt, path, verifiers)
    elif proof == "transaction":
        steps = _evm_steps(receipt, verifiers)
    else:
        steps = [f"# {target}: no stock-tool check is known for this target"]
    return "\n".join([*head, *steps, 'rm -rf "$W"', ""])


def explain_files(paths: list[Path], out: TextIO, verifiers: ReadOnlyVerifiers) -> int:
    """Print the script for every receipt; 1 if a receipt could not be read, else 0."""
    failed = 0
    out.write("#!/bin/sh\n# Checks receipts with stock tools; run with sh. Stops at the first failure.\nset -e\n")
    for path, problem in expand(paths):
        try:
            if problem:
                raise ReceiptError(f"{path}: {problem}")
            out.write(explain(path, load_receipt(path), verifiers))
        except ReceiptError as exc:
            failed += 1
            out.write(f"# cannot explain {exc}\n")
    return 1 if failed else 0
