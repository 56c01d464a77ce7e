"""Two replicas on one real PostgreSQL store (tests/cluster/postgres.py) anchoring to one
real bcoin regtest node (tests/integration/bcoin.py) with ONE key: the store's signer record
and lock (core/store/postgres/records.py) make them one signer. Every anchor transaction
spends the previous one's change (one linear chain on the node, no double spend), and
every job is receipted once per root."""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from embit.transaction import Transaction

from core.anchors.btc.backend import BtcBackend
from core.clock import FakeClock
from core.config import load_config
from core.runtime import Runtime
from core.sources import write_batch
from core.store import open_store
from core.store.postgres.database import Database
from core.store.postgres.records import PgSharedRecords
from tests.integration.bcoin import BURN, Bcoin, segwit_node

from .engines import receipts_by_job, root
from .postgres import PASSWORD

NAMESPACES = ("n1", "n2", "n3", "n4")
CONFIG = """\
scheduler: {{tick: 5.0, data_dir: data-{name}, lease: 30}}
targets:
  btc:
    regtest: {{rpcUrl: "{url}", network: regtest, keyFile: {key}, funding: "{funding}", feeRate: 2,
               confirmations: 1}}
namespaces:
{namespaces}
"""


@pytest.fixture(scope="module")
def bcoin(tmp_path_factory):
    yield from segwit_node(tmp_path_factory.mktemp("bcoin"))


class BtcReplica:
    def __init__(self, tmp: Path, name: str, url: str, clock: FakeClock, bcoin: Bcoin, funding: str) -> None:
        namespaces = "\n".join(
            f'  {ns}: {{source: "{tmp / "batches" / ns}", cadence: {{fast: {{target: "btc:regtest", every: "60s"}}}}}}'
            for ns in NAMESPACES
        )
        path = tmp / f"config-{name}.yaml"
        path.write_text(CONFIG.format(name=name, url=bcoin.url, key=tmp / "key.txt", funding=funding,
                                      namespaces=namespaces))
        loaded = load_config(path, env={}, cwd=tmp)
        store = open_store(url, data_dir=loaded.config.scheduler.data_dir, env={"VMSH_STORE_PASSWORD": PASSWORD},
                           replica=name, lease=30)
        self.runtime = Runtime(loaded, clock=clock, rng=random.Random(1), store=store)
        self.engine = self.runtime.engine

    async def close(self) -> None:
        await self.engine.stop(1.0)
        await self.runtime.close()


def publish(tmp: Path, n: int) -> None:
    for ns in NAMESPACES:
        write_batch(tmp / "batches" / ns, f"{n:06d}", root(ns, n))


def attestations(url: str) -> list[dict]:
    with psycopg.connect(url, password=PASSWORD) as conn:
        return [json.loads(doc)["attestation"] if isinstance(doc, str) else doc["attestation"]
                for (doc,) in conn.execute("SELECT doc FROM receipts")]


def test_two_replicas_with_one_key_sign_one_linear_chain_and_receipt_each_job_once(bcoin, tmp_path, migrated):
    settings = bcoin.funded()
    assert settings.key is not None and settings.funding is not None
    (tmp_path / "key.txt").write_text(settings.key.get_secret_value() + "\n")
    start = bcoin.height()
    clock = FakeClock()

    async def run() -> None:
        a = BtcReplica(tmp_path, "a", migrated, clock, bcoin, settings.funding)
        b = BtcReplica(tmp_path, "b", migrated, clock, bcoin, settings.funding)
        try:
            publish(tmp_path, 1)
            await a.engine.run_once()  # a alone: its transaction spends the funding coin
            clock.advance(61)
            publish(tmp_path, 2)
            await b.engine.run_once()  # b alone: it spends a's change, from the store's record
            clock.advance(61)
            publish(tmp_path, 3)
            await asyncio.gather(a.engine.run_once(), b.engine.run_once())  # both at once
        finally:
            await a.close()
            await b.close()

    with bcoin.mining():
        asyncio.run(run())

    got = receipts_by_job(migrated)
    assert sorted(got) == [(ns, "fast") for ns in NAMESPACES]
    for (ns, _), roots in got.items():
        assert sorted(roots) == sorted(root(ns, n) for n in (1, 2, 3)), f"{ns}: a root anchored twice or not at all"

    # The node's chain: exactly our transactions, each spending the previous one's change.
    ours = {att["tx_hash"]: att["raw_tx"] for att in attestations(migrated)}
    mined = [tx for h in range(start + 1, bcoin.height() + 1)
             for tx in bcoin.rpc("getblock", bcoin.rpc("getblockhash", h), True)["tx"][1:]]
    assert sorted(mined) == sorted(ours), "a transaction on the node that no receipt names (or the reverse)"
    assert len(mined) >= 3
    spent = {txid: Transaction.read_from(io.BytesIO(bytes.fromhex(raw))).vin[0] for txid, raw in ours.items()}
    previous = settings.funding
    for txid in mined:  # in block order
        vin = spent[txid]
        assert f"{vin.txid.hex()}:{vin.vout}" == previous, f"{txid} does not spend the previous change"
        previous = f"{txid}:1"


def test_a_replica_waits_for_another_replicas_unmined_anchor_before_it_signs(bcoin, tmp_path, migrated):
    """At most one unmined anchor per key across the cluster: replica b (another process:
    its own event loop here) finds replica a's transaction of the same key unmined in the
    store's record and waits for its block before it signs; it then spends its change."""
    settings = bcoin.funded()
    db = Database(migrated, password=PASSWORD)

    def replica(name: str, digest: bytes) -> dict:
        async def main() -> dict:
            backend = BtcBackend("btc:regtest", settings, FakeClock(), tmp_path / name, receipt_timeout=60,
                                 poll_interval=0.05, accept_wait=10, shared=PgSharedRecords(db))
            try:
                return (await backend.anchor(digest, lambda facts: None)).data
            finally:
                await backend.close()

        return asyncio.run(main())

    def mempool() -> list[str]:
        return list(bcoin.rpc("getrawmempool"))

    def wait(predicate, what: str) -> None:
        deadline = time.monotonic() + 30
        while not predicate():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(replica, "a", b"\x0a" * 32)
            wait(lambda: len(mempool()) == 1, "a's transaction")
            second = pool.submit(replica, "b", b"\x0b" * 32)
            time.sleep(2.0)  # time enough for b to sign and send, had it not waited
            assert len(mempool()) == 1 and not second.done(), "b signed while a's anchor was unmined"
            bcoin.mine(1, BURN)
            one = first.result(30)
            wait(lambda: len(mempool()) == 1, "b's transaction, once a's is mined")
            bcoin.mine(1, BURN)
            two = second.result(30)
    finally:
        db.close()
    assert two["block_number"] == one["block_number"] + 1
    vin = Transaction.read_from(io.BytesIO(bytes.fromhex(two["raw_tx"]))).vin[0]
    assert f"{vin.txid.hex()}:{vin.vout}" == f"{one['tx_hash']}:1"
