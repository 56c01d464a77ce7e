"""Bitcoin anchoring: transactions built and signed per second (embit, no node), and on a
real bcoin regtest node (tests/integration/bcoin.py) the receipt and `.ots` sizes of a
1,000-namespace group (one transaction anchors the tree hash of all 1,000 roots), and the
engine's folding: 1,000 namespaces coming due over 10 passes while the first anchor is
unmined end in 2 transactions (the first, then one for the 900 that waited)."""

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
from core.config import load_config  # noqa: E402
from core.merkle import tree_and_paths  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from core.sources import write_batch  # noqa: E402
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


FOLD_PASSES = 10


async def _folding(node: Bcoin, tmp: Path) -> tuple[int, int, float]:
    """(transactions, receipts, seconds from the first pass to the last receipt)."""
    settings = node.funded()
    assert settings.key is not None
    (tmp / "key.txt").write_text(settings.key.get_secret_value())
    per_pass = NAMESPACES // FOLD_PASSES
    lines = [
        "scheduler: {tick: 60, data_dir: data}",
        "targets:",
        "  btc:",
        f'    regtest: {{rpcUrl: "{settings.rpc_url}", network: regtest, keyFile: key.txt,',
        f'              funding: "{settings.funding}", feeRate: 2, confirmations: 1}}',
        "namespaces:",
    ]
    lines += [f'  n{i:04d}: {{cadence: {{fast: {{target: "btc:regtest", every: "60s"}}}}}}' for i in range(NAMESPACES)]
    (tmp / "config.yaml").write_text("\n".join(lines) + "\n")
    clock = FakeClock()
    t0 = clock.now()
    jobs = {}
    for i in range(NAMESPACES):
        write_batch(tmp / "data" / "batches" / f"n{i:04d}", "1", "sha256:" + hashlib.sha256(b"%d" % i).hexdigest())
        if i >= per_pass:  # anchored before: due again at T0 + its pass
            jobs[f"n{i:04d}/fast"] = {"last_anchored_at": t0 - 60 + i // per_pass, "last_root": None}
    (tmp / "data" / "state").mkdir(parents=True, exist_ok=True)
    (tmp / "data" / "state" / "scheduler.json").write_text(json.dumps({"version": 1, "jobs": jobs}))
    start = node.height()
    runtime = Runtime(load_config(tmp / "config.yaml", env={}, cwd=tmp), clock=clock)
    engine = runtime.engine
    began = time.perf_counter()
    loop = asyncio.create_task(engine.run())
    try:
        for n in range(FOLD_PASSES):
            clock.set(t0 + n)
            while engine.last_tick is None or engine.last_tick < t0 + n:
                await asyncio.sleep(0.01)
            if n == 0:
                while not await asyncio.to_thread(node.rpc, "getrawmempool"):
                    await asyncio.sleep(0.05)
        node.start_miner()
        receipts = tmp / "data" / "receipts"
        while sum(1 for _ in receipts.rglob("*.json")) < NAMESPACES:
            await asyncio.sleep(0.1)
        took = time.perf_counter() - began
    finally:
        node.stop_miner()
        await engine.stop()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await runtime.close()
    txs = sum(len(node.rpc("getblock", node.rpc("getblockhash", h), True)["tx"]) - 1
              for h in range(start + 1, node.height() + 1))
    return txs, sum(1 for _ in receipts.rglob("*.json")), took


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
            node.stop_miner()
            (Path(tmp) / "fold").mkdir()
            txs, written, took = asyncio.run(_folding(node, Path(tmp) / "fold"))
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
        ("btc: transactions for 1,000 jobs due over 10 passes, one anchor unmined", f"{txs}",
         f"folded: the first, then one for the rest; {written:,} receipts in {took:.1f} s"),
    ]


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
