"""eip155 anchoring against a real ganache node (tests/integration/ganache.py starts it).

What a user would notice: a root lands on chain exactly once, its receipt starts
`pending` and turns `confirmed` at depth, verification checks the chain, failures have
the right kind (and so the right backoff), a crash never pays twice, and the key never
shows up anywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from eth_account import Account

from core.anchors.base import NotFinal, VerificationFailed
from core.anchors.evm import Eip155Target
from core.anchors.evm.abi import MEMO, decode_anchor_call
from core.anchors.evm.backend import EVMBackend
from core.backoff import BackoffPolicy
from core.clock import FakeClock
from core.confirmations import ConfirmationTracker
from core.engine import Scheduler
from core.errors import ErrorKind, NetworkError, ValidationError
from core.events import AnchorFailed, EventBus, LogRecord, ReceiptConfirmed
from core.jobs import JobKey, JobSpec, safe_name
from core.observe.logs import Log
from core.receipts import (
    BatchRef,
    Confirmations,
    Receipt,
    ReceiptInvalid,
    bound_leaf,
    load_receipt,
    verify_receipt,
)
from core.sources import write_batch
from core.store.files.journal import IntentJournal
from core.store.files.receipts import ReceiptStore
from core.store.files.state import StateStore
from tests.integration.ganache import ADDRESSES, KEYS, Ganache

# The `vmsh-scheduler` command (cli.main:main), from this checkout.
CLI = [sys.executable, "-m", "cli"]
TARGET = "eip155:1337"


def root(n: int) -> str:
    return "sha256:" + f"{n:064x}"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One node for the tests that only add transactions."""
    g = Ganache(tmp_path_factory.mktemp("ganache")).start()
    yield g
    g.stop()


@pytest.fixture
def own_node(tmp_path):
    """A node of its own, for tests that stop the miner or rewind the chain."""
    g = Ganache(tmp_path).start()
    yield g
    g.stop()


def settings(g: Ganache, **kw) -> Eip155Target:
    base = {"rpc_url": g.url, "chain_id": 1337, "key": KEYS[0], "confirmations": 3}
    base.update(kw)
    return Eip155Target(**base)


def backend(g: Ganache, data: Path, target: str = TARGET, **kw) -> EVMBackend:
    opts = {k: kw.pop(k) for k in ("receipt_timeout", "poll_interval") if k in kw}
    return EVMBackend(target, settings(g, **kw), FakeClock(), data, **opts)


class Stack:
    """The real engine, receipts, journal and tracker on a fake clock, anchoring to a node."""

    def __init__(
        self, tmp: Path, backend_for, namespaces=("alpha",), confirmations: int = 3
    ) -> None:
        self.tmp = tmp
        self.clock = FakeClock(start=time.time())  # blocks carry real time: anchored_at is checked against it
        self.bus = EventBus()
        self.events: list = []
        self.bus.subscribe(self.events.append)
        self.log = Log(self.bus, self.clock, "DEBUG")
        self.receipts = ReceiptStore(tmp / "data" / "receipts")
        self.backend_for = backend_for
        self.specs = [
            JobSpec(
                JobKey(ns, "fast"),
                TARGET,
                3600,
                tmp / "batches" / safe_name(ns),
                confirmations=confirmations,
            )
            for ns in namespaces
        ]
        for n, ns in enumerate(namespaces, 1):
            write_batch(tmp / "batches" / safe_name(ns), "000001", root(n))
        self.engine = Scheduler(
            jobs=self.specs,
            clock=self.clock,
            bus=self.bus,
            backend_for=backend_for,
            state_store=StateStore(tmp / "data" / "state" / "scheduler.json"),
            journal=IntentJournal(tmp / "data" / "journal"),
            receipts=self.receipts,
            policy=BackoffPolicy(base=5.0, max_level=7, jitter=0.0, rng=random.Random(1)),
            log=self.log,
        )
        self.requeued: list[JobKey] = []
        self.tracker = ConfirmationTracker(
            self.receipts, backend_for, self.bus, self.clock, self.log, self._requeue, interval=5.0
        )

    def _requeue(self, key: JobKey) -> None:
        self.requeued.append(key)
        self.engine.requeue(key, "reorg dropped the anchoring transaction")

    def all_receipts(self) -> list[tuple[Path, Receipt]]:
        return [(p, load_receipt(p)) for p in self.receipts.all_paths()]

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def tx_count(g: Ganache, address: str = ADDRESSES[0]) -> int:
    return g.nonce(address, "latest")


def assert_no_key_anywhere(folder: Path, texts: Sequence[str] = ()) -> None:
    secrets = [KEYS[0].lower(), KEYS[0].lower().removeprefix("0x")]
    for path in folder.rglob("*"):
        if path.is_file():
            content = path.read_text(errors="replace").lower()
            assert not any(s in content for s in secrets), f"the signing key leaked into {path}"
    for text in texts:
        assert not any(s in text.lower() for s in secrets), "the signing key leaked into a message"


# --------------------------------------------------------------------------- happy path


async def test_anchor_pending_then_confirmed_at_depth_and_verified(node, tmp_path):
    evm = backend(node, tmp_path / "data")
    stack = Stack(tmp_path, lambda target: evm, confirmations=3)
    before = tx_count(node)

    await stack.engine.run_once()

    [(path, receipt)] = stack.all_receipts()
    assert receipt.status == "pending"
    assert receipt.confirmations == Confirmations(required=3, observed=1)
    att = dict(receipt.attestation)
    assert att["scheme"] == "eip155" and att["chain_id"] == 1337 and att["from"] == ADDRESSES[0]
    assert set(att) == {"scheme", "chain_id", "tx_hash", "block_number", "block_hash", "from"}
    assert tx_count(node) == before + 1
    # Self-send mode: zero value to the sender itself, calldata = the 32-byte root.
    tx = node.rpc("eth_getTransactionByHash", att["tx_hash"])
    assert tx["to"].lower() == tx["from"].lower() == ADDRESSES[0].lower()
    # the leaf: the root bound to its namespace and batch id (a group of one anchors it)
    assert int(tx["value"], 16) == 0 and tx["input"] == "0x" + bound_leaf("alpha", "000001", root(1)).hex()
    assert tx["type"] == "0x2"  # ganache has a base fee: EIP-1559

    assert await stack.tracker.check_once() == {
        "confirmed": 0,
        "waiting": 1,
        "dropped": 0,
        "errors": 0,
    }
    assert load_receipt(path).status == "pending"
    node.mine(2)
    assert (await stack.tracker.check_once())["confirmed"] == 1
    confirmed = load_receipt(path)
    assert confirmed.status == "confirmed"
    assert confirmed.confirmations == Confirmations(required=3, observed=3)
    assert [e.path for e in stack.of(ReceiptConfirmed)] == [str(path)]
    assert stack.receipts.pending() == []

    await verify_receipt(confirmed, stack.backend_for)
    with pytest.raises(VerificationFailed, match="not the anchored root"):
        await evm.verify(att, bytes.fromhex(root(99)[7:]))
    forged = dataclasses.replace(confirmed, batch=BatchRef("x", root(99)), anchored_root=root(99))
    with pytest.raises(ReceiptInvalid):
        await verify_receipt(forged, stack.backend_for)
    with pytest.raises(NotFinal, match="3 of 10 blocks deep"):  # genuine, not final: PENDING
        await evm.verify(att, bytes.fromhex(confirmed.anchored_root[7:]), required=10)

    logs = [json.dumps(e.fields) + e.msg for e in stack.of(LogRecord)]
    assert_no_key_anywhere(tmp_path / "data", logs + [repr(evm), repr(evm.settings)])
    await evm.close()


async def test_a_group_of_jobs_is_one_transaction_and_each_receipt_verifies(node, tmp_path):
    evm = backend(node, tmp_path / "data", confirmations=1)
    stack = Stack(
        tmp_path, lambda target: evm, namespaces=("alpha", "beta", "gamma"), confirmations=1
    )
    before = tx_count(node)
    await stack.engine.run_once()
    receipts = stack.all_receipts()
    assert len(receipts) == 3 and tx_count(node) == before + 1
    assert len({r.attestation["tx_hash"] for _, r in receipts}) == 1
    assert (await stack.tracker.check_once())["confirmed"] == 3
    for path, _ in receipts:
        await verify_receipt(load_receipt(path), stack.backend_for)
    await evm.close()


# A contract whose runtime code is a single STOP: every call succeeds and keeps its input.
STOP_CONTRACT_INIT = "0x6001600c60003960016000f300"


async def test_contract_mode_calls_anchor_with_root_batch_id_memo_persist(node, tmp_path):
    deployer = Account.from_key(KEYS[1])
    nonce = node.nonce(deployer.address, "pending")
    signed = deployer.sign_transaction(
        {
            "chainId": 1337,
            "nonce": nonce,
            "gas": 100_000,
            "gasPrice": 3 * 10**9,
            "data": STOP_CONTRACT_INIT,
            "value": 0,
        }
    )
    tx_hash = node.rpc("eth_sendRawTransaction", "0x" + bytes(signed.raw_transaction).hex())
    contract = node.rpc("eth_getTransactionReceipt", tx_hash)["contractAddress"]
    assert node.rpc("eth_getCode", contract, "latest") == "0x00"

    evm = backend(node, tmp_path / "data", contract=contract, persist=True, confirmations=1)
    digest = bytes.fromhex(root(7)[7:])
    att = await evm.anchor(digest, lambda facts: None)
    assert att.data["contract"].lower() == contract.lower()
    tx = node.rpc("eth_getTransactionByHash", att.data["tx_hash"])
    assert tx["to"].lower() == contract.lower()
    assert decode_anchor_call(bytes.fromhex(tx["input"][2:])) == (digest, digest, MEMO, True)
    await evm.verify(att.data, digest)
    with pytest.raises(VerificationFailed, match="not the anchored root"):
        await evm.verify(att.data, bytes.fromhex(root(8)[7:]))
    await evm.close()


# --------------------------------------------------------------------------- error kinds


async def test_node_down_is_a_network_error_and_the_engine_backs_off(node, tmp_path):
    from tests.integration.ganache import free_port

    class Down:
        url = f"http://127.0.0.1:{free_port()}"

    evm = EVMBackend(TARGET, settings(Down), FakeClock(), tmp_path / "data")  # type: ignore[arg-type]  # only .url is read
    with pytest.raises(NetworkError, match="unreachable"):
        await evm.anchor(bytes(32), lambda facts: None)

    stack = Stack(tmp_path, lambda target: evm)
    now = stack.clock.now()
    await stack.engine.run_once()
    [failed] = stack.of(AnchorFailed)
    assert failed.kind == "network"
    view = stack.engine.view(JobKey("alpha", "fast"))
    assert view.state.failures == 1 and view.status == "backing_off"
    assert view.state.next_attempt == pytest.approx(now + stack.engine.policy.delay(1, ErrorKind.NETWORK))
    assert stack.all_receipts() == [] and list((tmp_path / "data" / "journal").glob("*.json")) == []
    await evm.close()


async def test_node_on_another_chain_is_a_validation_error_and_nothing_is_sent(node, tmp_path):
    evm = backend(node, tmp_path / "data", target="eip155:5", chain_id=5)
    before = tx_count(node)
    with pytest.raises(ValidationError, match="serves chain id 1337, not 5"):
        await evm.anchor(bytes(32), lambda facts: pytest.fail("nothing may be signed"))
    assert tx_count(node) == before
    await evm.close()


async def test_a_key_without_funds_is_a_validation_error_naming_the_account_not_the_key(
    node, tmp_path
):
    poor = Account.create()
    key = "0x" + bytes(poor.key).hex()
    evm = backend(node, tmp_path / "data", key=key)
    with pytest.raises(ValidationError, match="insufficient funds") as info:
        await evm.anchor(bytes(32), lambda facts: pytest.fail("nothing may be signed"))
    assert poor.address in str(info.value)
    assert key[2:] not in str(info.value).lower()
    assert tx_count(node, poor.address) == 0
    await evm.close()


async def test_a_fee_above_the_cap_is_a_validation_error_and_nothing_is_sent(node, tmp_path):
    evm = backend(node, tmp_path / "data", max_fee_gwei=0.5)  # ganache's base fee is ~1 gwei
    before = tx_count(node)
    with pytest.raises(ValidationError, match="above max_fee_gwei 0.5"):
        await evm.anchor(bytes(32), lambda facts: pytest.fail("nothing may be signed"))
    assert tx_count(node) == before
    await evm.close()
    # Under a generous cap it goes through, and maxFeePerGas never exceeds the cap.
    evm = backend(node, tmp_path / "data", max_fee_gwei=2.5)
    att = await evm.anchor(bytes.fromhex(root(3)[7:]), lambda facts: None)
    tx = node.rpc("eth_getTransactionByHash", att.data["tx_hash"])
    assert int(tx["maxFeePerGas"], 16) <= 2.5 * 10**9
    await evm.close()


async def test_a_missing_key_is_reported_by_name_of_its_source(node, tmp_path, monkeypatch):
    monkeypatch.delenv("VMSH_TEST_NO_SUCH_KEY", raising=False)
    evm = EVMBackend(
        TARGET,
        settings(node, key=None, key_env="VMSH_TEST_NO_SUCH_KEY"),
        FakeClock(),
        tmp_path / "data",
    )
    with pytest.raises(Exception, match="VMSH_TEST_NO_SUCH_KEY"):
        await evm.anchor(bytes(32), lambda facts: None)
    key_file = tmp_path / "key"
    key_file.write_text("not a key\n")
    evm = EVMBackend(
        TARGET, settings(node, key=None, key_file=key_file), FakeClock(), tmp_path / "data"
    )
    with pytest.raises(ValidationError, match="not a valid secp256k1 private key") as info:
        await evm.anchor(bytes(32), lambda facts: None)
    assert "not a key" not in str(info.value)


# --------------------------------------------------------------------------- nonces and crashes


async def test_concurrent_groups_get_distinct_nonces_that_survive_a_restart(own_node, tmp_path):
    data = tmp_path / "data"
    a, b = backend(own_node, data), backend(own_node, data)  # e.g. two targets, one signer
    digests = [bytes.fromhex(root(n)[7:]) for n in (1, 2, 3)]
    notes: list[dict] = []
    atts = await asyncio.gather(
        a.anchor(digests[0], notes.append), b.anchor(digests[1], notes.append)
    )
    assert sorted(n["nonce"] for n in notes) == [0, 1]
    assert len({x.data["tx_hash"] for x in atts}) == 2
    # The miner stops: ganache then reports a stale pending nonce (2 is in flight, it says
    # 2 only after mining). The persisted local nonce keeps a restarted backend right.
    own_node.rpc("miner_stop")
    c = backend(own_node, data, receipt_timeout=0.5, poll_interval=0.1)
    with pytest.raises(NetworkError, match="not mined within"):
        await c.anchor(digests[2], notes.append)
    d = backend(own_node, data, receipt_timeout=0.5, poll_interval=0.1)  # a restart
    with pytest.raises(NetworkError, match="not mined within"):
        await d.anchor(bytes.fromhex(root(4)[7:]), notes.append)
    assert [n["nonce"] for n in notes[2:]] == [2, 3]
    own_node.rpc("miner_start")
    # The retry of digest 3 waits for the transaction already sent; it never signs another.
    e = backend(own_node, data)
    again: list[dict] = []
    att = await e.anchor(digests[2], again.append)
    assert att.data["tx_hash"] == notes[2]["tx_hash"] == again[0]["tx_hash"]
    own_node.mine(1)
    assert tx_count(own_node) == 4
    for x in (a, b, c, d, e):
        await x.close()


class Crash(BaseException):
    """Stands for the process dying right after the journal note, before the send."""


async def test_recover_rebroadcasts_the_journalled_bytes_and_never_signs_again(own_node, tmp_path):
    data = tmp_path / "data"
    digest = bytes.fromhex(root(5)[7:])
    journal: dict = {}

    def note_then_die(facts):
        journal.update(facts)
        raise Crash

    with pytest.raises(Crash):
        await backend(own_node, data).anchor(digest, note_then_die)
    assert own_node.rpc("eth_getTransactionByHash", journal["tx_hash"]) is None  # never sent
    assert set(journal) == {"tx_hash", "raw_tx", "nonce", "from"}

    fresh = backend(own_node, data, key=KEYS[1])  # recover must not need (or use) the key
    att = await fresh.recover(digest, journal)
    assert att is not None and att.data["tx_hash"] == journal["tx_hash"]
    assert tx_count(own_node) == 1 and tx_count(own_node, ADDRESSES[1]) == 0
    assert await fresh.recover(digest, journal) is not None  # idempotent: no second tx
    assert tx_count(own_node) == 1
    assert await fresh.recover(digest, {}) is None  # crashed before signing: nothing landed
    await fresh.close()


async def test_a_reorg_that_drops_the_transaction_queues_the_job_again(own_node, tmp_path):
    evm = backend(own_node, tmp_path / "data")
    stack = Stack(tmp_path, lambda target: evm, confirmations=2)
    snapshot = own_node.rpc("evm_snapshot")
    await stack.engine.run_once()
    [(path, receipt)] = stack.all_receipts()
    own_node.rpc("evm_revert", snapshot)  # the block holding our transaction is gone
    own_node.mine(3)
    assert own_node.rpc("eth_getTransactionByHash", receipt.attestation["tx_hash"]) is None

    counts = await stack.tracker.check_once()
    assert counts["dropped"] == 1
    assert stack.requeued == [JobKey("alpha", "fast")]
    warnings = [
        e for e in stack.of(LogRecord) if e.msg.startswith("transaction dropped by a reorg")
    ]
    assert warnings and warnings[0].fields["tx_hash"] == receipt.attestation["tx_hash"]
    assert load_receipt(path).status == "pending"  # never rewritten except to confirmed
    assert (await stack.tracker.check_once())["dropped"] == 0  # reported once

    await stack.engine.run_once()  # due now: anchored again in a new transaction
    newest = [r for p, r in stack.all_receipts() if p != path]
    assert (
        len(newest) == 1
        and newest[0].attestation["tx_hash"] != receipt.attestation["tx_hash"]
    )
    assert tx_count(own_node) == 1
    await evm.close()


# --------------------------------------------------------------------------- a real process


def write_config(tmp: Path, g: Ganache) -> Path:
    write_batch(tmp / "batches" / "evm", "000001", root(42))
    from tests.integration.ganache import free_port

    text = f"""\
scheduler:
  tick: 0.2
  data_dir: {tmp / "data"}
http:
  listen: "127.0.0.1:{free_port()}"
targets:
  eip155:
    default:
      rpcUrl: {g.url}
      chainId: 1337
      keyEnv: VMSH_TEST_EVM_KEY
      confirmations: 2
namespaces:
  "demo:evm":
    source: {tmp / "batches" / "evm"}
    cadence:
      fast:
        target: "{TARGET}"
        every: "1h"
"""
    path = tmp / "config.yaml"
    path.write_text(text)
    return path


def start_scheduler(config: Path, tmp: Path, **env: str) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k != "VMSH_TEST_CRASH_AFTER_SEND"}
    full.update(VMSH_TEST_EVM_KEY=KEYS[0], **env)
    (tmp / "logs").mkdir(exist_ok=True)
    log = tmp / "logs" / f"scheduler-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*CLI, "--no-ui", "--config", str(config), "--data-dir", str(tmp / "data")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full,
        )
    proc.log_path = log  # type: ignore[attr-defined]
    return proc


def wait_for(predicate, what: str, timeout: float = 30.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"scheduler exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def journal_tx(tmp: Path) -> str | None:
    for path in (tmp / "data" / "journal").glob("*.json"):
        try:
            return json.loads(path.read_text())["notes"].get("tx_hash")
        except (OSError, ValueError, KeyError):
            return None
    return None


def receipt_files(tmp: Path) -> list[Path]:
    return sorted((tmp / "data" / "receipts").rglob("*.json"))


def stop_scheduler(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(20)


def assert_exactly_once(tmp: Path, g: Ganache, tx_hash: str, restarted: subprocess.Popen) -> None:
    assert tx_count(g) == 1, "exactly one transaction from the signer"
    senders = [
        tx["hash"]
        for n in range(1, g.block_number() + 1)
        for tx in g.rpc("eth_getBlockByNumber", hex(n), True)["transactions"]
    ]
    assert senders == [tx_hash]
    [path] = receipt_files(tmp)
    receipt = json.loads(path.read_text())
    assert receipt["attestation"]["tx_hash"] == tx_hash
    assert receipt["status"] in ("pending", "confirmed")
    assert list((tmp / "data" / "journal").glob("*.json")) == []
    log = restarted.log_path.read_text()  # type: ignore[attr-defined]  # set by start()
    assert "interrupted anchor recovered from the journal" in log, log
    assert_no_key_anywhere(tmp / "data")
    assert_no_key_anywhere(tmp / "logs")


def test_kill_9_between_send_and_receipt_resolves_to_one_transaction_and_one_receipt(
    own_node, tmp_path
):
    config = write_config(tmp_path, own_node)
    own_node.rpc("miner_stop")  # the transaction stays in the pool: the process waits for it
    proc = start_scheduler(config, tmp_path)
    try:
        tx_hash = wait_for(lambda: journal_tx(tmp_path), "the signed tx in the journal", proc=proc)
        wait_for(
            lambda: own_node.rpc("eth_getTransactionByHash", tx_hash),
            "the node to have the tx",
            proc=proc,
        )
        assert receipt_files(tmp_path) == []
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    own_node.rpc("miner_start")
    own_node.mine(1)
    proc = start_scheduler(config, tmp_path)
    try:
        wait_for(lambda: receipt_files(tmp_path), "the recovered receipt", proc=proc)
        time.sleep(1.0)  # a few ticks: nothing more may be sent
    finally:
        assert stop_scheduler(proc) == 0
        assert_exactly_once(tmp_path, own_node, tx_hash, proc)

    # `vmsh-scheduler verify` checks the receipt on the node, without the signing key.
    own_node.mine(2)
    [path] = receipt_files(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "VMSH_TEST_EVM_KEY"}
    cmd = [*CLI, "verify", "--config", str(config), "--data-dir", str(tmp_path / "data")]
    ok = subprocess.run([*cmd, str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("OK "), ok.stdout + ok.stderr
    receipt = json.loads(path.read_text())
    receipt["batch"]["root"] = receipt["anchored_root"] = root(43)
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(receipt))
    bad = subprocess.run([*cmd, str(forged)], capture_output=True, text=True, env=env, timeout=60)
    # the anchored leaf binds the root: a forged root is caught before the chain is asked
    assert bad.returncode == 1 and "is not the leaf of namespace" in bad.stdout, bad.stdout + bad.stderr


def test_crash_right_after_send_test_hook_resolves_to_one_transaction_and_one_receipt(
    own_node, tmp_path
):
    config = write_config(tmp_path, own_node)
    proc = start_scheduler(config, tmp_path, VMSH_TEST_CRASH_AFTER_SEND="1")
    assert proc.wait(30) == 137
    tx_hash = journal_tx(tmp_path)
    assert tx_hash and own_node.rpc("eth_getTransactionReceipt", tx_hash) is not None
    assert receipt_files(tmp_path) == []
    proc = start_scheduler(config, tmp_path)
    try:
        wait_for(lambda: receipt_files(tmp_path), "the recovered receipt", proc=proc)
        time.sleep(1.0)
    finally:
        assert stop_scheduler(proc) == 0
    assert_exactly_once(tmp_path, own_node, tx_hash, proc)


# --------------------------------------------------------------------------- pieces


def test_the_hand_made_abi_encoding_matches_eth_abi():
    from eth_abi import encode
    from eth_utils import keccak

    root_, batch = bytes(range(32)), bytes(range(32, 64))
    for memo, persist in ((MEMO, True), ("", False), ("x" * 70, True)):
        expected = keccak(text="anchor(bytes32,bytes32,string,bool)")[:4] + encode(
            ["bytes32", "bytes32", "string", "bool"], [root_, batch, memo, persist]
        )
        from core.anchors.evm.abi import encode_anchor_call

        assert encode_anchor_call(root_, batch, memo, persist) == expected
        assert decode_anchor_call(expected) == (root_, batch, memo, persist)


async def test_the_tracker_loop_confirms_on_its_interval(node, tmp_path):
    evm = backend(node, tmp_path / "data", confirmations=2)
    stack = Stack(tmp_path, lambda target: evm, confirmations=2)
    await stack.engine.run_once()
    task = asyncio.create_task(stack.tracker.run())
    try:
        await asyncio.sleep(0.3)  # first round: depth 1 of 2
        assert stack.of(ReceiptConfirmed) == []
        node.mine(1)
        stack.clock.advance(5.0)
        for _ in range(100):
            if stack.of(ReceiptConfirmed):
                break
            await asyncio.sleep(0.05)
        assert len(stack.of(ReceiptConfirmed)) == 1
    finally:
        stack.tracker.stop()
        await asyncio.wait_for(task, 5)
    await evm.close()
