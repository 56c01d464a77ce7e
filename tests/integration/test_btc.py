"""`btc:regtest` against a real bcoin regtest node (tests/integration/bcoin.py): the backend
builds, signs and sends its own transactions; the node mines when the test says so."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.main import main
from core.anchors.base import Attestation, VerificationFailed
from core.anchors.btc import BtcTarget
from core.anchors.btc.backend import BtcBackend
from core.anchors.btc.tx import DUST, Outpoint, build_anchor, parse_key, signer_script
from core.clock import FakeClock
from core.config import load_config
from core.errors import ValidationError
from core.events import LogRecord
from core.jobs import JobKey, safe_name
from core.lifecycle import running
from core.runtime import Runtime
from core.sources import write_batch
from tests.integration.bcoin import BURN, SEGWIT_HEIGHT, Bcoin, segwit_node
from tests.integration.ganache import free_port


@pytest.fixture(scope="module")
def bcoin(tmp_path_factory):
    yield from segwit_node(tmp_path_factory.mktemp("bcoin"))


def funded(bcoin: Bcoin, n: int, script_type: str = "p2wpkh") -> BtcTarget:
    return bcoin.funded(script_type, key_number=n, confirmations=2)


def backend(settings: BtcTarget, data_dir: Path, accept_wait: float = 10.0) -> BtcBackend:
    """`accept_wait`: bcoin (pure JS here) may take seconds to show a sent transaction on a busy machine."""
    return BtcBackend(
        "btc:regtest", settings, FakeClock(), data_dir, receipt_timeout=30, poll_interval=0.05, accept_wait=accept_wait
    )


async def mined(bcoin: Bcoin, anchoring: asyncio.Task[Attestation], blocks: int = 1) -> Attestation:
    """Mine `blocks` blocks once the anchor's transaction is in the mempool."""
    while not await asyncio.to_thread(bcoin.rpc, "getrawmempool"):
        assert not anchoring.done(), anchoring.exception()
        await asyncio.sleep(0.05)
    await asyncio.to_thread(bcoin.mine, blocks, BURN)
    return await anchoring


def test_the_regtest_node_mines_to_a_raw_script_past_segwit_activation(bcoin):
    assert bcoin.height() >= SEGWIT_HEIGHT + 1
    block = bcoin.rpc("getblock", bcoin.rpc("getblockhash", 1), True)
    assert bcoin.rpc("gettxout", block["tx"][0], 0)["scriptPubKey"]["hex"] == BURN.hex()
    assert bcoin.started_in is not None and bcoin.started_in < 30


@pytest.mark.parametrize("script_type", ["p2wpkh", "p2wsh"])
async def test_an_anchor_lands_in_an_op_return_and_its_receipt_verifies(bcoin, tmp_path, script_type):
    settings = funded(bcoin, 7 if script_type == "p2wpkh" else 8, script_type)
    b = backend(settings, tmp_path)
    notes: list[dict] = []
    try:
        digests = [hashlib.sha256(b"root %d" % i).digest() for i in range(2)]
        atts = []
        for digest in digests:  # the second spends the first one's change
            atts.append(await mined(bcoin, asyncio.create_task(b.anchor(digest, notes.append))))
        first, second = atts
        assert first.status == "pending" and first.confirmations == 1
        assert first.data["tx_hash"] in bcoin.rpc("getblock", first.data["block_hash"], True)["tx"]
        assert [n["tx_hash"] for n in notes] == [a.data["tx_hash"] for a in atts]
        assert await b.confirmations(first.data) == 2 and await b.confirmations(second.data) == 1
        await b.verify(first.data, digests[0], required=2)
        with pytest.raises(VerificationFailed, match="1 blocks deep, 2 required"):
            await b.verify(second.data, digests[1], required=2)
        with pytest.raises(VerificationFailed, match="anchors"):
            await b.verify(first.data, digests[1], required=1)
        assert settings.key is not None
        secret = settings.key.get_secret_value()
        assert secret not in repr(atts) + repr(notes) + repr(b)
        assert "coin" in next((tmp_path / "btc").iterdir()).read_text()
    finally:
        await b.close()


async def test_each_tamper_of_a_receipt_fails_verify(bcoin, tmp_path):
    b = backend(funded(bcoin, 9), tmp_path)
    digest = hashlib.sha256(b"tamper").digest()
    try:
        att = (await mined(bcoin, asyncio.create_task(b.anchor(digest, lambda facts: None)))).data
        await b.verify(att, digest, required=1)

        def flip(hex_text: str, at: int) -> str:
            raw = bytearray(bytes.fromhex(hex_text))
            raw[at] ^= 1
            return raw.hex()

        proof = att["txoutproof"]
        cases: dict[str, tuple[dict[str, Any], str]] = {
            "raw_tx": ({"raw_tx": flip(att["raw_tx"], 60)}, "raw_tx is not transaction"),
            "op_return": ({"vout": 1}, "not OP_RETURN"),
            "branch": ({"txoutproof": proof[:-2] + ("00" if proof[-2:] != "00" else "01")}, "txoutproof"),
            "header root": ({"txoutproof": flip(proof, 40)}, "Merkle root"),
            "header work": ({"txoutproof": flip(proof, 79)}, "txoutproof"),
            "block hash": ({"block_hash": "00" * 32}, "header is block"),
        }
        for name, (change, message) in cases.items():
            with pytest.raises(VerificationFailed, match=message):
                await b.verify({**att, **change}, digest, required=1)
            assert name
    finally:
        await b.close()


async def test_a_reorg_that_drops_the_block_is_seen_and_verify_fails(bcoin, tmp_path):
    b = backend(funded(bcoin, 10), tmp_path)
    digest = hashlib.sha256(b"reorg").digest()
    try:
        att = (await mined(bcoin, asyncio.create_task(b.anchor(digest, lambda facts: None)))).data
        assert await b.confirmations(att) == 1
        bcoin.rpc("invalidateblock", att["block_hash"])
        bcoin.mine(2, BURN)  # a longer chain without it
        assert await b.confirmations(att) is None
        with pytest.raises(VerificationFailed, match="not on the node's best chain"):
            await b.verify(att, digest, required=1)
        # Anchored again: the lost transaction is sent again first (bcoin forgot it), then
        # the new one spends its change.
        again = await mined(bcoin, asyncio.create_task(b.anchor(digest, lambda facts: None)), 1)
        assert await b.confirmations(again.data) == 1
        await b.verify(again.data, digest, required=1)
    finally:
        await b.close()


async def test_a_double_spend_the_node_says_it_accepted_is_not_taken_for_an_anchor(bcoin, tmp_path):
    """bcoin answers sendrawtransaction with the txid even for a double spend: recovering a
    journalled transaction whose coin went to another must give None, not wait for it."""
    settings = funded(bcoin, 11)
    first_dir, other_dir = tmp_path / "a", tmp_path / "b"
    a, other = backend(settings, first_dir), backend(settings, other_dir, accept_wait=3)
    journal: list[dict] = []
    try:
        await mined(bcoin, asyncio.create_task(a.anchor(hashlib.sha256(b"one").digest(), journal.append)))
        # The same coin, spent again by another transaction (another data dir: another record).
        conflict = asyncio.create_task(other.anchor(hashlib.sha256(b"two").digest(), lambda facts: None))
        with pytest.raises(ValidationError, match="spent or unknown"):
            await conflict
        other_notes = dict(journal[0])
        other_notes["tx_hash"], other_notes["raw_tx"] = _double_spend(settings, journal[0])
        assert await asyncio.wait_for(other.recover(b"\x00" * 32, other_notes), 30) is None
        assert not bcoin.rpc("getrawmempool")
    finally:
        await a.close()
        await other.close()


def _double_spend(settings: BtcTarget, facts: dict) -> tuple[str, str]:
    """Another signed transaction spending the coin `facts` spent (another digest)."""
    from core.anchors.btc.tx import Outpoint, build_anchor

    txid, _, vout = facts["spent"].partition(":")
    assert settings.key is not None
    tx = build_anchor(parse_key(settings.key.get_secret_value()), "p2wpkh", Outpoint(txid, int(vout), 50 * 10**8),
                      hashlib.sha256(b"other").digest(), 3)
    return tx.txid, tx.raw.hex()


def ots_verify(bcoin: Bcoin, proof: Path, root_hex: str) -> subprocess.CompletedProcess[str]:
    """The OpenTimestamps client (PyPI opentimestamps-client) checking `proof` on the node."""
    ots = [sys.executable, "-c", "import sys; from otsclient.ots import main; sys.exit(main())"]
    return subprocess.run(
        [*ots, "--no-cache", "--btc-regtest", "--bitcoin-node", bcoin.url, "verify", "-d", root_hex, str(proof)],
        capture_output=True, text=True, timeout=60,
    )


CONFIG = """\
scheduler: {{tick: 1.0, data_dir: data, base_backoff: 5.0}}
targets:
  btc:
    regtest:
      rpcUrl: "{url}"
      network: regtest
      keyFile: key.txt
      funding: "{funding}"
      feeRate: 2
      confirmations: 1
namespaces:
  a: {{cadence: {{fast: {{target: "btc:regtest", every: "10s", confirmations: 1}}}}}}
  b: {{cadence: {{fast: {{target: "btc:regtest", every: "10s", confirmations: 1}}}}}}
  c: {{cadence: {{fast: {{target: "btc:regtest", every: "10s", confirmations: 1}}}}}}
"""
ROOTS = {"a": "ab" * 32, "b": "ba" * 32, "c": "bb" * 32}


def test_the_scheduler_anchors_roots_that_verify_its_stock_tool_steps_and_ots_accept(bcoin, tmp_path, capsys):
    """Three namespaces due together: one transaction anchors the tree hash of their roots."""
    settings = bcoin.funded()
    assert settings.key is not None and settings.funding is not None
    secret = settings.key.get_secret_value()
    (tmp_path / "key.txt").write_text(secret + "\n")
    (tmp_path / "config.yaml").write_text(CONFIG.format(url=bcoin.url, funding=settings.funding))
    for namespace, root in ROOTS.items():
        write_batch(tmp_path / "data" / "batches" / safe_name(namespace), "1", "sha256:" + root)

    async def one_pass() -> None:
        runtime = Runtime(load_config(tmp_path / "config.yaml", env={}, cwd=tmp_path), clock=FakeClock())
        try:
            await runtime.engine.run_once()
            await runtime.engine.settle()
        finally:
            runtime.engine.flush()
            await runtime.close()

    with bcoin.mining():
        asyncio.run(one_pass())
    receipts = tmp_path / "data" / "receipts"
    bodies = [json.loads(p.read_text()) for p in sorted(receipts.rglob("*.json"))]
    assert [b["batch"]["root"] for b in bodies] == ["sha256:" + r for r in ROOTS.values()]
    assert len({b["attestation"]["tx_hash"] for b in bodies}) == 1 and bodies[0]["tree_size"] == 3
    assert secret not in "".join(p.read_text(errors="replace") for p in (tmp_path / "data").rglob("*") if p.is_file())

    rpc = ["--rpc-url", f"btc:regtest={bcoin.url}"]
    assert main(["verify", *rpc, str(receipts)]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert main(["verify", "--explain", *rpc, str(receipts)]) == 0
    script = capsys.readouterr().out
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("OK") >= 9 and "FAIL" not in run.stdout

    # export --format ots: OpenTimestamps proofs of the batch roots the ots client accepts.
    out = tmp_path / "export"
    assert main(["export", "--config", str(tmp_path / "config.yaml"), "--out", str(out), "--format", "ots"]) == 0
    assert "wrote 3 proof(s) as <receipt>.ots" in capsys.readouterr().out
    for namespace, root in ROOTS.items():
        [proof] = list((out / safe_name(namespace)).glob("*.ots"))
        good = ots_verify(bcoin, proof, root)
        assert good.returncode == 0 and "Success! Bitcoin block" in good.stdout + good.stderr, good
    assert ots_verify(bcoin, proof, ROOTS["a"]).returncode != 0  # another namespace's root
    broken = bytearray(proof.read_bytes())
    broken[-40] ^= 1  # inside the Merkle branch
    (tmp_path / "broken.ots").write_bytes(bytes(broken))
    assert ots_verify(bcoin, tmp_path / "broken.ots", ROOTS["c"]).returncode != 0

    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps({**bodies[0], "attestation": {**bodies[0]["attestation"], "block_hash": "00" * 32}}))
    assert main(["verify", *rpc, str(tampered)]) == 1
    capsys.readouterr()
    main(["verify", "--explain", *rpc, str(tampered)])
    run = subprocess.run(["sh", "-c", capsys.readouterr().out], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "FAIL" in run.stdout


# --------------------------------------------------------------------------- crashes (a real process)

CLI = [sys.executable, "-m", "cli"]
DAEMON_CONFIG = """\
scheduler:
  tick: 0.2
  data_dir: {data}
http:
  listen: "127.0.0.1:{port}"
targets:
  btc:
    regtest: {{rpcUrl: "{url}", network: regtest, keyEnv: VMSH_TEST_BTC_KEY, funding: "{funding}",
               feeRate: 2, confirmations: 1}}
namespaces:
  "demo:btc":
    source: {batches}
    cadence:
      fast: {{target: "btc:regtest", every: "1h"}}
"""


def _daemon(bcoin: Bcoin, tmp: Path, key: str, **env: str) -> subprocess.Popen[bytes]:
    hooks = ("VMSH_TEST_CRASH_AFTER_SEND", "VMSH_TEST_CRASH_BEFORE_SEND")
    full = {k: v for k, v in os.environ.items() if k not in hooks}
    full.update(VMSH_TEST_BTC_KEY=key, **env)
    log = open(tmp / f"scheduler-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115 - the child's
    proc = subprocess.Popen(
        [*CLI, "--no-ui", "--config", str(tmp / "config.yaml"), "--data-dir", str(tmp / "data")],
        stdout=log, stderr=subprocess.STDOUT, env=full,
    )
    log.close()
    return proc


def _journal_tx(tmp: Path) -> str | None:
    for path in (tmp / "data" / "journal").glob("*.json"):
        return str(json.loads(path.read_text())["notes"].get("tx_hash"))
    return None


def _wait(predicate, what: str, proc: subprocess.Popen[bytes], timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        assert proc.poll() is None, f"the scheduler exited ({proc.returncode}) while waiting for {what}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _spenders(bcoin: Bcoin, since: int) -> list[str]:
    """Every non-coinbase transaction mined after height `since`."""
    return [
        txid
        for height in range(since + 1, bcoin.height() + 1)
        for txid in bcoin.rpc("getblock", bcoin.rpc("getblockhash", height), True)["tx"][1:]
    ]


@pytest.mark.parametrize("hook", ["VMSH_TEST_CRASH_BEFORE_SEND", "VMSH_TEST_CRASH_AFTER_SEND"])
def test_a_crash_around_the_broadcast_ends_in_one_transaction_signed_once_and_one_receipt(bcoin, tmp_path, hook):
    settings = bcoin.funded()
    assert settings.key is not None
    key = settings.key.get_secret_value()
    (tmp_path / "config.yaml").write_text(DAEMON_CONFIG.format(
        data=tmp_path / "data", port=free_port(), url=bcoin.url, funding=settings.funding,
        batches=tmp_path / "batches"))
    write_batch(tmp_path / "batches", "1", "sha256:" + "cd" * 32)
    start = bcoin.height()
    crashed = _daemon(bcoin, tmp_path, key, **{hook: "1"})
    assert crashed.wait(30) == 137
    journalled = _journal_tx(tmp_path)
    assert journalled and not list((tmp_path / "data" / "receipts").rglob("*.json"))
    in_pool = journalled in bcoin.rpc("getrawmempool")
    assert in_pool == (hook == "VMSH_TEST_CRASH_AFTER_SEND")  # before: the node never saw it

    bcoin.start_miner()
    restarted = _daemon(bcoin, tmp_path, key)
    try:
        [receipt] = _wait(lambda: list((tmp_path / "data" / "receipts").rglob("*.json")), "the receipt", restarted)
        time.sleep(1.0)  # a few ticks: nothing more may be sent
    finally:
        bcoin.stop_miner()
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(20) == 0
    assert json.loads(receipt.read_text())["attestation"]["tx_hash"] == journalled
    assert _spenders(bcoin, start) == [journalled]  # the journalled bytes, never signed again
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("scheduler-*.log"))
    assert "interrupted anchor recovered from the journal" in logs
    files = "".join(p.read_text(errors="replace") for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert key not in logs + files


async def test_a_node_of_another_network_or_a_coin_too_small_is_refused_before_anything_is_sent(bcoin, tmp_path):
    settings = bcoin.funded()
    before = bcoin.rpc("getrawmempool")
    wrong = backend(settings.model_copy(update={"network": "main"}), tmp_path / "main")
    greedy = backend(settings.model_copy(update={"fee_rate": 10**9, "max_fee_rate": 10**10}), tmp_path / "fee")
    capped = backend(settings.model_copy(update={"fee_rate": 500.0}), tmp_path / "cap")
    try:
        with pytest.raises(ValidationError, match="is not on main"):
            await wrong.anchor(hashlib.sha256(b"x").digest(), lambda facts: None)
        with pytest.raises(ValidationError, match="too little to pay"):
            await greedy.anchor(hashlib.sha256(b"x").digest(), lambda facts: None)
        with pytest.raises(ValidationError, match="above maxFeeRate 100"):
            await capped.anchor(hashlib.sha256(b"x").digest(), lambda facts: None)
    finally:
        for b in (wrong, greedy, capped):
            await b.close()
    assert bcoin.rpc("getrawmempool") == before


async def test_a_second_group_waits_for_the_first_transaction_to_be_mined_before_it_signs(bcoin, tmp_path):
    b = backend(bcoin.funded(), tmp_path)
    try:
        groups = [asyncio.create_task(b.anchor(hashlib.sha256(n).digest(), lambda facts: None)) for n in (b"1", b"2")]
        while not await asyncio.to_thread(bcoin.rpc, "getrawmempool"):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # time enough for a second send, had there been one
        assert len(bcoin.rpc("getrawmempool")) == 1 and not any(g.done() for g in groups)
        await asyncio.to_thread(bcoin.mine, 1, BURN)
        [done], [waiting] = await asyncio.wait(groups, return_when=asyncio.FIRST_COMPLETED)
        one, two = done.result(), await mined(bcoin, waiting)  # signed only now
        assert two.data["block_number"] == one.data["block_number"] + 1
        assert bytes.fromhex(one.data["tx_hash"])[::-1] in bytes.fromhex(two.data["raw_tx"])  # spends its change
    finally:
        await b.close()


# --------------------------------------------------------------------------- folding

FOLD_CONFIG = """\
scheduler: {{tick: 60, data_dir: data}}
targets:
  btc:
    regtest: {{rpcUrl: "{url}", network: regtest, keyFile: key.txt, funding: "{funding}", feeRate: 2,
               confirmations: 1}}
namespaces:
{namespaces}
"""
FOLDED = ("p", "q", "r", "s")  # due at T0, T0+2, T0+4, T0+6


def test_jobs_due_while_an_anchor_is_unmined_are_folded_into_one_next_transaction(bcoin, tmp_path, capsys):
    """`p` is anchored at T0 and its transaction stays unmined; q, r and s come due one pass
    each meanwhile. They are anchored together by ONE next transaction (one OP_RETURN over
    their three leaves): two transactions for four jobs, each job receipted once."""
    settings = bcoin.funded()
    assert settings.key is not None and settings.funding is not None
    (tmp_path / "key.txt").write_text(settings.key.get_secret_value() + "\n")
    lines = "\n".join(f'  {n}: {{cadence: {{fast: {{target: "btc:regtest", every: "10s"}}}}}}' for n in FOLDED)
    (tmp_path / "config.yaml").write_text(FOLD_CONFIG.format(url=bcoin.url, funding=settings.funding, namespaces=lines))
    clock = FakeClock()
    t0 = clock.now()
    states = {}
    for i, namespace in enumerate(FOLDED):
        write_batch(tmp_path / "data" / "batches" / safe_name(namespace), "2", "sha256:" + f"{i + 1:02x}" * 32)
        if i:  # anchored before: due again 10 s after, i.e. at T0 + 2i
            states[f"{namespace}/fast"] = {"last_anchored_at": t0 - 10 + 2 * i, "last_root": "sha256:" + "00" * 32}
    (tmp_path / "data" / "state").mkdir(parents=True)
    (tmp_path / "data" / "state" / "scheduler.json").write_text(json.dumps({"version": 1, "jobs": states}))
    start = bcoin.height()
    receipts = tmp_path / "data" / "receipts"

    async def run() -> None:
        runtime = Runtime(load_config(tmp_path / "config.yaml", env={}, cwd=tmp_path), clock=clock)
        engine = runtime.engine
        loop = asyncio.create_task(engine.run())

        async def passed(at: float) -> None:
            while engine.last_tick is None or engine.last_tick < at:
                assert not loop.done(), loop.exception()
                await asyncio.sleep(0.02)

        try:
            await passed(t0)
            while not await asyncio.to_thread(bcoin.rpc, "getrawmempool"):  # p's transaction, unmined
                await asyncio.sleep(0.05)
            for step in (2, 4, 6):  # q, r, s come due, one pass each
                clock.set(t0 + step)
                await passed(t0 + step)
                await asyncio.sleep(0.3)  # time enough for a send, had there been one
            assert len(await asyncio.to_thread(bcoin.rpc, "getrawmempool")) == 1
            bcoin.start_miner()
            deadline = time.monotonic() + 60
            while len(list(receipts.rglob("*.json"))) < len(FOLDED):
                assert time.monotonic() < deadline, "not every job got its receipt"
                assert not loop.done(), loop.exception()
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # nothing more may be sent
        finally:
            bcoin.stop_miner()
            await engine.stop()
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
            await runtime.close()

    asyncio.run(run())
    bodies = {b["namespace"]: b for b in (json.loads(p.read_text()) for p in receipts.rglob("*.json"))}
    assert sorted(bodies) == sorted(FOLDED) and len(list(receipts.rglob("*.json"))) == len(FOLDED)
    spenders = _spenders(bcoin, start)
    assert len(spenders) == 2  # two transactions for four jobs
    first, folded = bodies["p"]["attestation"]["tx_hash"], {bodies[n]["attestation"]["tx_hash"] for n in "qrs"}
    assert spenders == [first, *folded] and len(folded) == 1
    assert all(bodies[n]["tree_size"] == 3 for n in "qrs") and bodies["p"]["tree_size"] == 1
    assert sorted(bodies[n]["leaf_index"] for n in "qrs") == [0, 1, 2]
    assert main(["verify", "--rpc-url", f"btc:regtest={bcoin.url}", str(receipts)]) == 0, capsys.readouterr()


# --------------------------------------------------------------------------- the signer's balance

LOW_CONFIG = """\
scheduler: {{tick: 60, data_dir: data}}
http: {{listen: "127.0.0.1:{port}"}}
targets:
  btc:
    regtest: {{rpcUrl: "{url}", network: regtest, keyFile: key.txt, funding: "{funding}", feeRate: 2,
               confirmations: 1}}
namespaces:
  w: {{cadence: {{fast: {{target: "btc:regtest", every: "1h"}}}}}}
"""


def test_a_balance_running_low_is_a_metric_a_health_warning_and_one_log_line(bcoin, tmp_path, capsys):
    """A coin worth 21.5 anchors at 2 sat/vB: after the first anchor it pays 20 more (the
    default lowBalanceAnchors: not low), after the second 19 (low: one WARNING), after the
    third 18 (still low: no second line)."""
    key = parse_key(f"{4242:064x}")
    script = signer_script(key, "p2wpkh")[0]
    fee = build_anchor(key, "p2wpkh", Outpoint("00" * 32, 0, 10**6), b"\x00" * 32, 2).fee
    funding = bcoin.small_coin(script, DUST + 21 * fee + fee // 2)
    (tmp_path / "key.txt").write_text(f"{4242:064x}\n")
    port = free_port()
    (tmp_path / "config.yaml").write_text(LOW_CONFIG.format(port=port, url=bcoin.url, funding=funding))
    batches = tmp_path / "data" / "batches" / "w"
    write_batch(batches, "0", "sha256:" + "a0" * 32)
    runtime = Runtime(load_config(tmp_path / "config.yaml", env={}, cwd=tmp_path), clock=FakeClock())
    records: list = []
    runtime.bus.subscribe(lambda e: records.append(e) if isinstance(e, LogRecord) else None)
    receipts = tmp_path / "data" / "receipts"
    seen: list[tuple[str, str]] = []

    async def run() -> None:
        async with running(runtime, http_required=True), httpx.AsyncClient() as http:
            for n in range(1, 4):
                if n > 1:
                    write_batch(batches, str(n), "sha256:" + f"a{n}" * 32)
                    assert runtime.engine.force(JobKey("w", "fast"))
                deadline = time.monotonic() + 60
                while len(list(receipts.rglob("*.json"))) < n:
                    assert time.monotonic() < deadline, f"no receipt {n}"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.2)
                metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                health = (await http.get(f"http://127.0.0.1:{port}/health")).json()
                seen.append((metrics, json.dumps(health)))
            sock = str(tmp_path / "data" / "control.sock")
            assert await asyncio.to_thread(main, ["ctl", "--socket", sock, "receipt", "sha256:" + "a3" * 32]) == 0

    with bcoin.mining():
        asyncio.run(run())
    left = [DUST + 21 * fee + fee // 2 - n * fee for n in (1, 2, 3)]
    for n, (metrics, health) in enumerate(seen):
        assert f'vmsh_btc_signer_balance_sats{{target="btc:regtest"}} {float(left[n])}' in metrics
        assert f'vmsh_signer_anchors_left{{target="btc:regtest"}} {float(20 - n)}' in metrics
        assert f'vmsh_signer_balance_low{{target="btc:regtest"}} {1.0 if n else 0.0}' in metrics
        warned = f"pays {20 - n} more anchors at the current fee, fewer than lowBalanceAnchors 20" in health
        assert warned == (n > 0), health
    low = [r for r in records if r.msg == "signer balance low"]
    assert len(low) == 1 and low[0].level == "WARNING" and low[0].fields["anchors_left"] == 19
    # ctl receipt names the transaction and its confirmations (observed/required)
    # (by its batch's root: "a3a3" is also in ~3 % of the other receipts' random hex, their
    # transactions and block proofs)
    [receipt] = [r for r in (json.loads(p.read_text()) for p in receipts.rglob("*.json"))
                 if r["batch"]["root"] == "sha256:" + "a3" * 32]
    out = capsys.readouterr().out
    assert f"tx {receipt['attestation']['tx_hash']}  confirmations 1/1" in out, out


# --------------------------------------------------------------------------- the dashboard and ctl

DASH_CONFIG = """\
scheduler: {{tick: 60, data_dir: data}}
targets:
  btc:
    regtest: {{rpcUrl: "{url}", network: regtest, keyFile: key.txt, funding: "{funding}", feeRate: 2}}
namespaces:
  chain: {{cadence: {{fast: {{target: "btc:regtest", every: "1h", confirmations: 3}}}}}}
"""


def test_the_dashboard_and_ctl_show_a_btc_receipts_transaction_and_its_confirmations(bcoin, tmp_path, capsys):
    """Receipts pane: `1/3 conf`, then `2/3 conf` as the block above it is mined, then
    `confirmed`; the selected receipt's note and the namespace detail name the transaction;
    `ctl receipt` prints it with its confirmations."""
    os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
    from core.confirmations import ConfirmationTracker
    from tests.tui.conftest import screen_text
    from tui.app import VaultMeshApp
    from tui.detail import namespace_detail_of
    from tui.host import InProcessHost
    from tui.widgets import DiffTable

    settings = bcoin.funded()
    assert settings.key is not None
    (tmp_path / "key.txt").write_text(settings.key.get_secret_value() + "\n")
    (tmp_path / "config.yaml").write_text(DASH_CONFIG.format(url=bcoin.url, funding=settings.funding))
    write_batch(tmp_path / "data" / "batches" / "chain", "1", "sha256:" + "c1" * 32)
    runtime = Runtime(load_config(tmp_path / "config.yaml", env={}, cwd=tmp_path), clock=FakeClock())
    tracker = ConfirmationTracker(runtime.receipts, runtime.backends, runtime.bus, runtime.clock, runtime.log,
                                  requeue=lambda key: None)
    app = VaultMeshApp(InProcessHost(runtime, start_engine=False), env={"COLORTERM": "truecolor"})

    async def run() -> tuple[str, list[str], str]:
        async with app.run_test(size=(120, 30)) as pilot:
            bcoin.start_miner()
            try:
                await runtime.engine.run_once()
            finally:
                bcoin.stop_miner()
            app.flush_now()
            await pilot.pause()
            await pilot.press("3")  # the Receipts pane, its newest receipt selected
            await pilot.pause()
            receipts = app.dashboard.body("receipts")
            assert isinstance(receipts, DiffTable)
            [path] = receipts.shown_keys
            txid = json.loads(Path(path).read_text())["attestation"]["tx_hash"]
            seen = [screen_text(app)]
            for _ in range(2):
                await asyncio.to_thread(bcoin.mine, 1, BURN)
                await tracker.check_once()
                app.flush_now()
                await pilot.pause()
                seen.append(screen_text(app))
            detail = namespace_detail_of(app.host.control, "chain", [], str(tmp_path / "data")).plain
        return txid, seen, detail

    txid, (first, deeper, final), detail = asyncio.run(run())
    row = next(line for line in first.splitlines() if "btc:regtest" in line and "chain" in line)
    assert "1/3 conf" in row, first
    assert f"tx {txid}, confirmations 1/3" in first
    assert "2/3 conf" in deeper and f"tx {txid}, confirmations 2/3" in deeper
    row = next(line for line in final.splitlines() if "btc:regtest" in line and "chain" in line)
    assert "confirmed" in row and f"tx {txid}, confirmations 3/3" in final
    assert f"tx {txid}, confirmations 3/3" in detail
    assert f"last tx {txid}, confirmations 3/3" in detail  # the job's line, under Cadences
