"""Redundant anchoring: what `targets: [...]`, `min: 2` costs a pass, against real TSAs.

Three OpenSSL TSAs (tests/integration/tsa_servers.py `OpenSSLTSA`, each its own PKI) on
127.0.0.1. One engine pass over 100 namespaces (aggregated: one tree, one call per target),
timed from its start until the 100 receipts are written, for:

* one target (`rfc3161:a`, version 2 receipts, as before);
* `2 of rfc3161:a,rfc3161:b,rfc3161:c`, all three up (version 3 receipts, 3 attestations);
* the same with one down (connection refused: 2 attestations);
* the same with one hung (accepts, answers after 30 s): the receipts wait GRACE at most.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.anchors.registry import Backends  # noqa: E402
from core.anchors.rfc3161 import Rfc3161Target  # noqa: E402
from core.backoff import BackoffPolicy  # noqa: E402
from core.clock import SystemClock  # noqa: E402
from core.engine import Scheduler  # noqa: E402
from core.engine.redundant import GRACE  # noqa: E402
from core.events import EventBus  # noqa: E402
from core.jobs import JobKey, JobSpec, safe_name  # noqa: E402
from core.sources import write_batch  # noqa: E402
from core.store.files.journal import IntentJournal  # noqa: E402
from core.store.files.receipts import ReceiptStore  # noqa: E402
from core.store.files.state import StateStore  # noqa: E402
from tests.integration.tsa_servers import OpenSSLTSA, free_port  # noqa: E402

NAMESPACES = 100
LABEL = "2 of rfc3161:a,rfc3161:b,rfc3161:c"


async def one_pass(tmp: Path, tsas: dict[str, OpenSSLTSA], target: str, paths: dict[str, str]) -> float:
    settings = {
        f"rfc3161:{name}": Rfc3161Target(
            url=f"http://127.0.0.1:{free_port()}/tsa" if path == "down" else tsas[name].url(path),
            trust_bundle=str(tsas[name].pki.path("bundle.pem")), timeout=30,
        )
        for name, path in paths.items()
    }
    clock = SystemClock()
    backends = Backends(settings.get, tmp / "data", clock)
    specs = []
    for n in range(NAMESPACES):
        source = tmp / "batches" / safe_name(f"ns{n}")
        write_batch(source, "000001", "sha256:" + hashlib.sha256(f"{tmp} {n}".encode()).hexdigest())
        specs.append(JobSpec(JobKey(f"ns{n}", "fast"), target, 3600, source))
    receipts = ReceiptStore(tmp / "data" / "receipts")
    engine = Scheduler(
        jobs=specs, clock=clock, bus=EventBus(), backend_for=backends,
        state_store=StateStore(tmp / "data" / "state" / "scheduler.json"),
        journal=IntentJournal(tmp / "data" / "journal"), receipts=receipts,
        policy=BackoffPolicy(base=5.0, max_level=7, jitter=0.0, rng=random.Random(1)),
    )
    started = time.perf_counter()
    await engine.run_once()
    took = time.perf_counter() - started
    await backends.close()
    written = len(list((tmp / "data" / "receipts").rglob("*.json")))
    if written != NAMESPACES:
        raise RuntimeError(f"{target}: {written} receipts of {NAMESPACES}")
    return took


def run() -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        tsas = {name: OpenSSLTSA(tmp / f"tsa-{name}", slow_seconds=30) for name in "abc"}
        try:
            cases = [
                ("one target (version 2)", "rfc3161:a", {"a": "/tsa"}, "as before"),
                ("2 of 3, all up", LABEL, {"a": "/tsa", "b": "/tsa", "c": "/tsa"}, "3 calls at once"),
                ("2 of 3, one refusing", LABEL, {"a": "/tsa", "b": "/tsa", "c": "down"}, "no wait for it"),
                ("2 of 3, one hung", LABEL, {"a": "/tsa", "b": "/tsa", "c": "/slow"}, f"<= {GRACE:g} s grace + the others"),
            ]
            for n, (what, target, paths, note) in enumerate(cases):
                took = asyncio.run(one_pass(tmp / f"case{n}", tsas, target, paths))
                rows.append((f"redundancy: pass of {NAMESPACES} jobs, {what}", f"{took * 1000:.0f} ms", note))
        finally:
            for server in tsas.values():
                server.stop()
    return rows


if __name__ == "__main__":
    from bench.run import table

    print(table(run()))
