"""Anchoring throughput: 1,000 namespaces due at once against a real OpenSSL TSA over HTTP.

The TSA is tests/integration/tsa_servers.py's `OpenSSLTSA` (`openssl ts -reply` behind a
threaded http.server on 127.0.0.1). The scheduler is a real Runtime built from a YAML
config loaded with the real loader, on the real clock (the TSA stamps real time and the
backend checks it against ours). Two modes, each timed from the start of one engine pass
until all 1,000 receipts are written:

* aggregated: every namespace on `rfc3161:bench`, so the pass anchors one Merkle tree
  hash of all 1,000 roots in one TSA call;
* one call per job: namespace i on `rfc3161:bench<i>` (all resolving to
  `targets.rfc3161.default`, the same TSA), so every job is its own backend call.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.config import load_config  # noqa: E402
from core.jobs import safe_name  # noqa: E402
from core.receipts import load_receipt, verify_receipt  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from core.sources import write_batch  # noqa: E402
from tests.integration.tsa_servers import OpenSSLTSA  # noqa: E402

NAMESPACES = 1_000


def config_text(tmp: Path, tsa: OpenSSLTSA, *, per_job: bool, n: int) -> str:
    lines = [
        "scheduler:",
        "  tick: 1.0",
        f"  data_dir: {tmp / 'data'}",
        # One group per target and pass, no size limit; in per-job mode this many calls
        # are in flight at once (the OpenSSL TSA signs one at a time regardless).
        "  concurrency: 8",
        "http:",
        '  listen: "127.0.0.1:0"',
        "log:",
        "  level: WARNING",
        "targets:",
        "  rfc3161:",
        "    default:",
        f'      url: "{tsa.url("/tsa")}"',
        f"      trustBundle: {tsa.pki.path('bundle.pem')}",
        "      timeout: 30",
        "namespaces:",
    ]
    for i in range(n):
        target = f"rfc3161:bench{i}" if per_job else "rfc3161:bench"
        lines += [
            f'  "bench:{i}":',
            f"    source: {tmp / 'batches' / safe_name(f'bench:{i}')}",
            "    cadence:",
            "      fast:",
            f'        target: "{target}"',
            '        every: "1h"',
        ]
    return "\n".join(lines) + "\n"


def receipt_files(data: Path) -> list[Path]:
    return sorted((data / "receipts").rglob("*.json"))


async def anchor_pass(tsa: OpenSSLTSA, *, per_job: bool, n: int = NAMESPACES) -> tuple[float, int]:
    """Seconds for one pass to anchor n due jobs and write their receipts; TSA requests made."""
    with tempfile.TemporaryDirectory(prefix="vmsh-anchor-bench-") as name:
        tmp = Path(name)
        for i in range(n):
            root = "sha256:" + hashlib.sha256(f"bench {i} {time.time_ns()}".encode()).hexdigest()
            write_batch(tmp / "batches" / safe_name(f"bench:{i}"), "000001", root)
        config = tmp / "config.yaml"
        config.write_text(config_text(tmp, tsa, per_job=per_job, n=n))
        loaded = load_config(config, env={}, cwd=tmp)
        runtime = Runtime.open(loaded)  # SystemClock; the data dir locked, as the CLI does
        try:
            before = len(tsa.requests)
            t0 = time.perf_counter()
            await runtime.engine.run_once()
            elapsed = time.perf_counter() - t0
            requests = len(tsa.requests) - before
            files = receipt_files(tmp / "data")
            if len(files) != n:
                raise RuntimeError(f"expected {n} receipts, found {len(files)}")
            for path in (files[0], files[-1]):
                await verify_receipt(load_receipt(path), runtime.backends)
        finally:
            await runtime.close()
            runtime.release()
        return elapsed, requests


async def measure() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory(prefix="vmsh-anchor-bench-tsa-") as name:
        tsa = OpenSSLTSA(Path(name))
        try:
            aggregated, agg_calls = await anchor_pass(tsa, per_job=False)
            per_job, job_calls = await anchor_pass(tsa, per_job=True)
        finally:
            tsa.stop()
    plural = "call" if agg_calls == 1 else "calls"
    return [
        (
            f"{NAMESPACES:,} namespaces due at once, aggregated ({agg_calls} TSA {plural})",
            f"{aggregated:.2f} s",
            "< 2 s",
        ),
        (
            f"{NAMESPACES:,} namespaces due at once, one call per job ({job_calls:,} calls)",
            f"{per_job:.2f} s",
            f"for comparison ({per_job / aggregated:.0f}x)",
        ),
    ]


def run() -> list[tuple[str, str, str]]:
    return asyncio.run(measure())


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
