"""Bitcoin anchoring: transactions built and signed per second (embit, no node), and on a
real bcoin regtest node (tests/integration/bcoin.py) the receipt and `.ots` sizes of a
1,000-namespace group (one transaction anchors the tree hash of all 1,000 roots)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.anchors.btc.backend import BtcBackend  # noqa: E402
from core.anchors.btc.ots import ots_proof  # noqa: E402
from core.anchors.btc.tx import Outpoint, build_anchor, parse_key  # noqa: E402
from core.clock import FakeClock  # noqa: E402
from core.merkle import tree_and_paths  # noqa: E402
from tests.integration.bcoin import BURN, SEGWIT_HEIGHT, Bcoin  # noqa: E402

NAMESPACES = 1_000


def _signing_rate(seconds: float = 1.0) -> float:
    key = parse_key("11" * 32)
    coin = Outpoint("22" * 32, 0, 10**8)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        build_anchor(key, "p2wpkh", coin, hashlib.sha256(done.to_bytes(8, "big")).digest(), 2.0)
        done += 1
    return done / (time.perf_counter() - start)


async def _anchor(node: Bcoin, data: Path, digest: bytes) -> dict:
    backend = BtcBackend("btc:regtest", node.funded(), FakeClock(), data, poll_interval=0.05)
    try:
        return (await backend.anchor(digest, lambda facts: None)).data
    finally:
        await backend.close()


def run() -> list[tuple[str, str, str]]:
    rate = _signing_rate()
    roots = [hashlib.sha256(b"ns %d" % i).digest() for i in range(NAMESPACES)]
    tree, paths = tree_and_paths(roots)
    with tempfile.TemporaryDirectory() as tmp:
        node = Bcoin(Path(tmp)).start()
        try:
            node.mine(SEGWIT_HEIGHT + 1, BURN)
            node.start_miner()
            att = asyncio.run(_anchor(node, Path(tmp) / "data", tree))
        finally:
            node.stop()
    receipt = {
        "batch": {"root": "sha256:" + roots[0].hex()}, "anchored_root": "sha256:" + tree.hex(),
        "tree_size": NAMESPACES, "leaf_index": 0, "proof": ["sha256:" + p.hex() for p in paths[0]],
        "attestation": att,
    }
    return [
        ("btc: anchor transactions built and signed", f"{rate:,.0f}/s", "one OP_RETURN + change, P2WPKH, embit"),
        ("btc: anchors per transaction, 1,000 namespaces", f"{NAMESPACES:,}", "one tree hash of all roots"),
        ("btc: transaction size", f"{len(att['raw_tx']) // 2} B", "with witness"),
        ("btc: receipt attestation (JSON)", f"{len(json.dumps(att))} B", "raw tx + gettxoutproof"),
        ("btc: .ots proof of one root of 1,000", f"{len(ots_proof(receipt))} B", "audit path + tx + branch"),
    ]


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
