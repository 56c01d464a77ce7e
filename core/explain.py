"""`vmsh-scheduler verify --explain RECEIPT...`: the stock-tool commands that check a receipt.

An auditor should not have to trust this program to trust a receipt. For each receipt this
prints a POSIX shell script that checks the same things with stock tools, reading the
receipt file itself (python3 for JSON, SHA-256 and the audit path; openssl for RFC 3161
tokens; curl for EVM nodes). Piped to `sh`, each receipt's checks stop at its first
failure, and the script ends with the worst outcome's exit code, as verify.

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

The audit path is checked here; the steps after it are the scheme's (its spec's `explain`,
core/anchors/<scheme>/checking.py; the openssl steps both time-stamp schemes share are in
core/anchors/tokens.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TextIO

from core.anchors.schemes import SCHEMES
from core.anchors.spec import shell_word
from core.receipts import (
    ANCHORED_AT_EARLY,
    ANCHORED_AT_LATE,
    REDUNDANT_VERSION,
    UNBOUND_V1,
    Receipt,
    ReceiptError,
    load_receipt,
)
from core.text import printable
from core.verify import ReadOnlyVerifiers, expand

_AUDIT_PATH = """\
python3 - "$R" <<'PY'
import hashlib, json, sys
r = json.load(open(sys.argv[1]))
h = lambda b: hashlib.sha256(b).digest()
x = lambda s: bytes.fromhex(s.split(":")[1])
n8 = lambda s: len(s.encode()).to_bytes(4, "big") + s.encode()
leaf, want = x(r["batch"]["root"]), x(r["anchored_root"])
if r["version"] == 3:  # the leaf binds the targets and min too (docs/receipts.md)
    leaf = h(b"vmsh-scheduler/receipt-leaf/v3\\0" + n8(r["namespace"]) + n8(r["batch"]["id"]) + n8(r["target"]) + leaf)
elif r["version"] >= 2:  # the leaf binds namespace and batch id (docs/receipts.md)
    leaf = h(b"vmsh-scheduler/receipt-leaf/v2\\0" + n8(r["namespace"]) + n8(r["batch"]["id"]) + leaf)
if r["tree_size"] == 1:  # a group of one anchors its leaf itself
    got = leaf
else:  # RFC 9162 2.1.3.2, leaf data = the 32 bytes of the leaf
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

# The scheme's steps leave the attested time in $W/attested (openssl's "Time stamp:" text,
# a TSTInfo's GENERALIZEDTIME, or "@<epoch seconds>" of a block) and, when the attestation
# is genuine but not final, how far it is in $W/pending.
_TIMES = """\
import datetime as d, json, os, re, sys
r, w, early, late = json.load(open(sys.argv[1])), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
read = lambda f: open(os.path.join(w, f)).read().strip() if os.path.exists(os.path.join(w, f)) else ""
def parse(text):
    t = None
    if text.startswith("@"):
        t = d.datetime.fromtimestamp(int(text[1:]), d.timezone.utc)
    elif text:
        m = re.match(r"(\\d{{14}})(\\.\\d+)?Z$", text) or re.match(r"(\\w+ +\\d+ [\\d:]+)(\\.\\d+)? (\\d+) GMT$", text)
        fmt, base = ("%Y%m%d%H%M%S", m.group(1)) if len(m.groups()) == 2 else ("%b %d %H:%M:%S %Y", m.group(1) + " " + m.group(3))
        t = d.datetime.strptime(re.sub(" +", " ", base), fmt).replace(tzinfo=d.timezone.utc)
        t += d.timedelta(microseconds=round(float(m.group(2) or 0) * 1e6))
    return t
iso = lambda t: t and t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{{t.microsecond:06d}}".rstrip("0") if t.microsecond else "") + "Z"
def lag_ok(t, what=""):
    lag = (d.datetime.fromisoformat(r["anchored_at"].replace("Z", "+00:00")) - t).total_seconds()
    ok = -early <= lag <= late
    print(what + "anchored_at:", "OK" if ok else "FAIL", r["anchored_at"], "attested", iso(t))
    return ok
"""
_VERDICT = """\
python3 - "$R" "$W" {early} {late} <<'PY'
""" + _TIMES + """\
text, pending = read("attested"), read("pending")
t = parse(text)
when = iso(t)
if r["version"] >= 2 and t:
    if not lag_ok(t):
        sys.exit(1)
if pending:
    print("PENDING", pending)
    sys.exit(4)
line = f"{{r['namespace']}} {{r['batch']['id']}} {{r['batch']['root']}} existed at {{when or 'an unknown time'}} ({{r['target']}})"
if r["version"] == 1:
    line += "; not bound by this version 1 receipt: {unbound}"
print("OK", "".join(c if c.isprintable() else ascii(c)[1:-1] for c in line))  # hidden characters escaped
PY"""


# Version 3 (redundant): each attestation's steps ran in $W/<n> (its exit code in rc, its
# attested time and pending as above); counted as verify counts them.
_VERDICT_V3 = """\
python3 - "$R" "$W" {early} {late} <<'PY'
""" + _TIMES + """\
valid, pending, unchecked = [], [], []
for n, a in enumerate(r["attestations"]):
    rc, t = read(f"{{n}}/rc"), parse(read(f"{{n}}/attested"))
    if rc == "3":
        unchecked.append(a["target"])
        continue
    if rc != "0":
        print("FAIL attestation of", a["target"], "does not check out")
        sys.exit(1)
    if t and not lag_ok(t, a["target"] + " "):
        sys.exit(1)
    (pending if read(f"{{n}}/pending") else valid).append((a["target"], t))
least, total = r["min"], r["target"].split(" of ", 1)[1].count(",") + 1
if len(valid) >= least:
    times = sorted(t for _, t in valid if t)
    when = iso(times[least - 1]) if len(times) >= least else "an unknown time"
    line = f"{{r['namespace']}} {{r['batch']['id']}} {{r['batch']['root']}} existed at {{when}} ({{len(valid)}} of {{total}}: {{', '.join(t for t, _ in valid)}})"
    print("OK", "".join(c if c.isprintable() else ascii(c)[1:-1] for c in line))
    sys.exit(0)
if len(valid) + len(pending) >= least:
    print("PENDING", len(valid), "of the", least, "attestations required are final")
    sys.exit(4)
if len(valid) + len(pending) + len(unchecked) >= least:
    print("CANNOT CHECK", len(valid) + len(pending), "of the", least, "attestations required can be checked here")
    sys.exit(3)
print("FAIL", len(r["attestations"]), "attestation(s),", least, "required")
sys.exit(1)
PY"""

# A version 3 receipt's attestation <n> as a receipt of one target, for its scheme's steps.
_VIEW = """\
python3 - "$R" {n} > "$W/{n}/view.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
a = r["attestations"][int(sys.argv[2])]
print(json.dumps(r | {{"version": 2, "target": a["target"], "attestation": a["attestation"],
                      "status": a["status"], "confirmations": a["confirmations"]}}))
PY"""


def _scheme_steps(receipt: Receipt, path: Path, verifiers: ReadOnlyVerifiers) -> list[str]:
    """The scheme's stock-tool steps for the receipt's attestation, or the CANNOT CHECK
    line when none are known."""
    target = receipt.target
    spec = SCHEMES.get(target.partition(":")[0])
    if spec is not None and spec.explain is not None:
        return spec.explain(receipt, path, verifiers)
    return [  # as verify: its attestation cannot be checked here
        f"# {target}: no stock-tool check is known for this target",
        f"echo CANNOT CHECK: no stock-tool check is known for {shell_word(target)}; exit 3",
    ]


def _redundant_steps(path: Path, receipt: Receipt, verifiers: ReadOnlyVerifiers) -> list[str]:
    """Each attestation of a version 3 receipt checked by its scheme's steps in a subshell
    of its own (its exit code kept, the others go on), then counted."""
    out: list[str] = []
    for n, item in enumerate(receipt.attestations):
        view = dataclasses.replace(
            receipt, version=2, target=item.target, attestation=item.attestation, status=item.status,
            confirmations=item.confirmations, least=0, attestations=(),
        )
        out += [
            f"# 2.{n + 1}. the attestation of {item.target}, on its own (a view of it in $W/{n}/view.json)",
            f'mkdir "$W/{n}"',
            _VIEW.format(n=n),
            "set +e",
            f'(\nset -e\nR="$W/{n}/view.json"; W="$W/{n}"',
            *_scheme_steps(view, path, verifiers),
            f')\necho $? > "$W/{n}/rc"',
            "set -e",
        ]
    return [
        *out,
        f"# last: at least min ({receipt.least}) attestations valid, each within the tolerance of anchored_at;",
        "#       any that does not check out FAILs the receipt",
        _VERDICT_V3.format(early=ANCHORED_AT_EARLY, late=ANCHORED_AT_LATE),
    ]


def explain(path: Path, receipt: Receipt, verifiers: ReadOnlyVerifiers) -> str:
    """The shell script that checks one receipt with stock tools."""
    target = receipt.target
    head = [
        f"# ---- {path}: {target}, {receipt.namespace}/{receipt.cadence}, "
        f"batch {receipt.batch.id}",
        f"R={shell_word(path.resolve())}",
        'W=$(mktemp -d); trap \'rm -rf "$W"\' EXIT',
        "# 1. the audit path leads from the leaf (version 2: namespace, batch id and batch.root,"
        " docs/receipts.md) to anchored_root",
        _AUDIT_PATH,
    ]
    if receipt.version == REDUNDANT_VERSION:
        return "\n".join([*head, *_redundant_steps(path, receipt, verifiers), ""])
    steps = _scheme_steps(receipt, path, verifiers)
    verdict = [
        "# last: anchored_at within the tolerance of the attested time (version 2); PENDING (exit 4)",
        "#       when genuine but not final; else what the receipt vouches for",
        _VERDICT.format(early=ANCHORED_AT_EARLY, late=ANCHORED_AT_LATE, unbound=", ".join(UNBOUND_V1)),
    ]
    return "\n".join([*head, *steps, *verdict, ""])


_HEAD = """\
#!/bin/sh
# Checks receipts with stock tools; run with sh. Each receipt's checks stop at its first
# failure; the exit code is the worst outcome, as verify's: FAIL 1, CANNOT CHECK 3, PENDING 4.
worst=0
rank() { case $1 in 0) echo 0;; 4) echo 1;; 3) echo 2;; *) echo 3;; esac; }
"""
# after each receipt's subshell: its exit code (a tool's own code is a FAIL) into $worst
_TALLY = """\
rc=$?; case $rc in 0|3|4) ;; *) rc=1;; esac
[ "$(rank $rc)" -gt "$(rank $worst)" ] && worst=$rc
"""


def explain_files(paths: list[Path], out: TextIO, verifiers: ReadOnlyVerifiers) -> int:
    """Print the script for every receipt, each in a subshell of its own (`set -e`: it stops
    at its first failed check) and the worst outcome as the exit code; 1 if a receipt
    could not be read (the script says FAIL for it, as verify does), else 0."""
    failed = 0
    out.write(_HEAD)
    for path, problem in expand(paths):
        try:
            if problem:
                raise ReceiptError(f"{path}: {problem}")
            block = explain(path, load_receipt(path), verifiers)
        except ReceiptError as exc:
            failed += 1
            block = f"# cannot explain {printable(str(exc))}\necho FAIL {shell_word(printable(str(exc)))}; exit 1\n"
        out.write(f"(\nset -e\n{block})\n{_TALLY}")
    out.write('exit "$worst"\n')
    return 1 if failed else 0
