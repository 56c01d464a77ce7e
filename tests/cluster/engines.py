"""Schedulers in one process on one real PostgreSQL store (a FakeClock each, or shared):
the replicas of tests/cluster/test_claims.py and test_fencing.py, and what they anchored."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import psycopg

from core.clock import FakeClock
from core.config import load_config
from core.runtime import Runtime
from core.sources import write_batch
from core.store import open_store

from .postgres import PASSWORD

NAMESPACES = [f"ns{n:03d}" for n in range(40)]


def root(ns: str, n: int) -> str:
    return "sha256:" + hashlib.sha256(f"{ns}-{n}".encode()).hexdigest()


def write_config(tmp: Path, name: str, *, namespaces=NAMESPACES, every: str = "60s") -> Path:
    lines = [
        "scheduler:",
        "  tick: 5.0",
        f"  data_dir: data-{name}",
        "  lease: 10",
        "targets:",
        "  local:",
        "    dev: {}",
        "namespaces:",
    ]
    for ns in namespaces:
        lines += [
            f'  "{ns}":',
            f"    source: {tmp / 'batches' / ns}",
            "    cadence:",
            "      fast:",
            '        target: "local:dev"',
            f'        every: "{every}"',
        ]
    path = tmp / f"config-{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def publish(tmp: Path, n: int, namespaces=NAMESPACES) -> None:
    for ns in namespaces:
        write_batch(tmp / "batches" / ns, f"{n:06d}", root(ns, n))


class Replica:
    def __init__(self, tmp: Path, name: str, url: str, clock: FakeClock) -> None:
        config = write_config(tmp, name)
        self.loaded = load_config(config, env={}, cwd=tmp)
        self.store = open_store(url, data_dir=self.loaded.config.scheduler.data_dir, env={"VMSH_STORE_PASSWORD": PASSWORD}, replica=name, lease=10)
        self.runtime = Runtime(self.loaded, clock=clock, rng=random.Random(1), store=self.store)
        self.engine = self.runtime.engine
        self.closed = False

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.engine.stop(1.0)
            await self.runtime.close()


def receipts_by_job(url: str) -> dict[tuple[str, str], list[str]]:
    """(namespace, cadence) -> the batch roots of its receipts, from the database itself."""
    out: dict[tuple[str, str], list[str]] = {}
    with psycopg.connect(url, password=PASSWORD) as conn:
        for ns, cadence, batch_root in conn.execute("SELECT namespace, cadence, batch_root FROM receipts"):
            out.setdefault((ns, cadence), []).append(batch_root)
    return out


class Pair:
    """Replicas a and b of one config on the test's database, sharing a FakeClock."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.clock = FakeClock()
        self.a = Replica(tmp, "a", url, self.clock)
        self.b = Replica(tmp, "b", url, self.clock)
