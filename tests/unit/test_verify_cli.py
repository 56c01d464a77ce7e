"""`vmsh-scheduler verify` as an auditor meets it: a receipt and a CA file, no config, no
secret, nothing written; OK / FAIL / CANNOT CHECK as 0 / 1 / 3; --json; --explain whose
commands run with stock tools.

The receipts are real: the engine anchors batches against the embedded `local:` TSA and an
OpenSSL TSA over HTTP on 127.0.0.1 (tests/integration/tsa_servers.py), as the other tests do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from cli.main import main
from core.anchors.evm.abi import ANCHOR_SELECTOR
from core.anchors.registry import Backends
from core.anchors.rfc3161 import Rfc3161Target
from core.backoff import BackoffPolicy
from core.clock import FakeClock
from core.engine import Scheduler
from core.events import EventBus
from core.jobs import JobKey, JobSpec, safe_name
from core.model_types import Model
from core.sources import write_batch
from core.store.files.journal import IntentJournal
from core.store.files.receipts import ReceiptStore
from core.store.files.state import StateStore
from tests.integration.tsa_servers import OpenSSLTSA

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "cli"]  # the `vmsh-scheduler` command, from this checkout


def root(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def anchor(tmp: Path, jobs: dict[str, str], settings: Mapping[str, Model], confirmations: int = 0) -> Path:
    """One engine pass over `jobs` ({namespace: target}), each job asking for
    `confirmations`; returns the data dir."""
    clock = FakeClock(start=time.time())  # real TSAs stamp real time
    data = tmp / "data"
    backends = Backends(settings.get, data, clock)
    specs = []
    for n, (ns, target) in enumerate(jobs.items(), start=1):
        write_batch(tmp / "batches" / safe_name(ns), f"{n:06d}", root(n))
        specs.append(
            JobSpec(JobKey(ns, "fast"), target, 60, tmp / "batches" / safe_name(ns), confirmations=confirmations)
        )

    async def run() -> None:
        scheduler = Scheduler(
            jobs=specs,
            clock=clock,
            bus=EventBus(),
            backend_for=backends,
            state_store=StateStore(data / "state" / "scheduler.json"),
            journal=IntentJournal(data / "journal"),
            receipts=ReceiptStore(data / "receipts"),
            policy=BackoffPolicy(base=5.0, max_level=7, jitter=0.0, rng=random.Random(1)),
        )
        await scheduler.run_once()
        await backends.close()

    asyncio.run(run())
    return data


def receipts_of(data: Path, ns: str) -> list[Path]:
    return sorted((data / "receipts" / safe_name(ns)).glob("*.json"))


@pytest.fixture(scope="module")
def tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSSLTSA]:
    server = OpenSSLTSA(tmp_path_factory.mktemp("openssl-tsa"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def world(tsa: OpenSSLTSA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real receipts: single and aggregated, from the local TSA and the OpenSSL TSA."""
    tmp = tmp_path_factory.mktemp("world")
    settings = {
        "rfc3161:openssl": Rfc3161Target(url=tsa.url(), trust_bundle=tsa.pki.path("root.pem"))
    }
    data = anchor(
        tmp,
        {"solo": "local:dev", "rfc": "rfc3161:openssl"},
        settings,
    )
    agg = anchor(
        tmp / "agg",
        {"a": "local:dev", "b": "local:dev", "c": "local:dev", "x": "rfc3161:openssl", "y": "rfc3161:openssl", "z": "rfc3161:openssl"},
        settings,
    )
    out = {
        "data": data,
        "local": receipts_of(data, "solo")[0],
        "rfc": receipts_of(data, "rfc")[0],
        "agg_data": agg,
        "local_agg": receipts_of(agg, "b")[0],
        "rfc_agg": receipts_of(agg, "y")[0],
        "ca": tsa.pki.path("root.pem"),
        "stranger_ca": tsa.untrusted_pki.path("root.pem"),
    }
    assert json.loads(out["local_agg"].read_text())["tree_size"] == 3
    assert json.loads(out["rfc_agg"].read_text())["tree_size"] == 3
    return out


@pytest.fixture
def auditor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder and an environment without any VMSH setting: no config."""
    cwd = tmp_path / "auditor"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in list(os.environ):
        if name.startswith("VMSH_") or name in ("EVM_ANCHOR_KEY", "TSA_URL"):
            monkeypatch.delenv(name)
    return cwd


def copy_receipt(src: Path, folder: Path) -> Path:
    """A receipt handed to someone else: outside any data dir."""
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / src.name
    dst.write_bytes(src.read_bytes())
    return dst


def tamper(src: Path, folder: Path, **changes) -> Path:
    doc = json.loads(src.read_text())
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / f"tampered-{src.name}"
    dst.write_text(json.dumps(doc))
    return dst


# --- the auditor's three outcomes ------------------------------------------------------------


def test_a_receipt_and_the_tsa_ca_file_are_enough(world, auditor, capsys):
    receipt = copy_receipt(world["rfc"], auditor / "handed-over")
    assert main(["verify", str(receipt), "--trust-bundle", str(world["ca"])]) == 0
    assert ok_line(capsys.readouterr().out, receipt)
    assert sorted(p.name for p in auditor.rglob("*")) == sorted(["handed-over", receipt.name])


def test_a_tampered_receipt_fails_with_exit_1(world, auditor, capsys):
    bad = tamper(world["rfc"], auditor, attestation__gen_time="2020-01-01T00:00:00Z")
    assert main(["verify", str(bad), "--trust-bundle", str(world["ca"])]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAIL {bad}: ") and "gen_time in the receipt" in out


def test_nothing_to_check_against_is_cannot_check_exit_3_saying_what_to_pass(
    world, auditor, capsys
):
    receipt = copy_receipt(world["rfc"], auditor / "in")
    local = copy_receipt(world["local"], auditor / "local")
    assert main(["verify", str(receipt)]) == 3
    out = capsys.readouterr().out
    assert out.startswith(f"CANNOT CHECK {receipt}: rfc3161:openssl: ")
    assert "pass --trust-bundle" in out
    # A local receipt outside its data dir: the certificate to pass is named, none is made.
    assert main(["verify", str(local)]) == 3
    assert "pass --trust-bundle with the local-tsa.pem" in capsys.readouterr().out
    assert not (auditor / "tsa").exists() and not (auditor / "local" / "tsa").exists()
    # A failure outweighs a receipt that cannot be checked.
    bad = tamper(world["local"], auditor, batch__root=root(99), anchored_root=root(99))
    assert main(["verify", str(receipt), str(bad), "--data-dir", str(world["data"])]) == 1


def test_an_untrusted_root_is_a_sentence_not_a_library_dump(world, auditor, capsys):
    receipt = copy_receipt(world["rfc"], auditor)
    assert main(["verify", str(receipt), "--trust-bundle", str(world["stranger_ca"])]) == 1
    out = capsys.readouterr().out
    assert "does not chain to the trust bundle (CN=Untrusted Root CA" in out
    for dump in ("ErrorStack", "Error {", "ParseError", "library:", "<Certificate("):
        assert dump not in out


def test_a_config_whose_signing_key_variable_is_unset_still_verifies(
    world, auditor, capsys, fixtures_dir
):
    """The VaultMesh anchors.yaml names ${EVM_ANCHOR_KEY}; verify never needs it."""
    anchors = (fixtures_dir / "anchors.yaml").read_text()
    assert "${EVM_ANCHOR_KEY}" in anchors
    config = auditor / "config.yaml"
    config.write_text(
        "targets:\n"
        "  eip155:\n"
        "    default:\n"
        "      rpcUrl: ${EVM_RPC:-http://127.0.0.1:1}\n"
        "      chainId: 8453\n"
        "      key: ${EVM_ANCHOR_KEY}\n"
        "  rfc3161:\n"
        "    default:\n"
        "      url: ${TSA_URL}\n"
        f"      trustBundle: {world['ca']}\n"
        "      auth: {type: basic, username: ops, password_env: TSA_PASSWORD}\n"
    )
    receipt = copy_receipt(world["rfc"], auditor / "in")
    assert main(["verify", "--config", str(config), str(receipt)]) == 0, capsys.readouterr()
    assert ok_line(capsys.readouterr().out, receipt)
    # check-config still refuses that config: leniency is verify's alone.
    assert main(["check-config", str(config)]) == 2
    assert "variable EVM_ANCHOR_KEY is not set" in capsys.readouterr().err


def listing(folder: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def test_verify_writes_nothing_in_a_folder_it_may_not_write(world, tmp_path):
    """A real process, run from a read-only folder, on an auditor's copy of a data dir: the
    receipts and the local TSA's certificate, not its key. Nothing appears or changes."""
    copy = tmp_path / "copy"
    shutil.copytree(world["data"] / "receipts", copy / "receipts")
    (copy / "tsa").mkdir()
    shutil.copy(world["data"] / "tsa" / "local-tsa.pem", copy / "tsa" / "local-tsa.pem")
    cwd = tmp_path / "readonly"
    cwd.mkdir()
    loose = copy_receipt(world["local"], tmp_path / "loose")
    before = {"copy": listing(copy), "cwd": listing(cwd), "loose": listing(loose.parent)}
    for folder in (cwd, copy, copy / "tsa", loose.parent):
        folder.chmod(0o555)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMSH_")}
    try:
        runs = [
            [*CLI, "verify", "--data-dir", str(copy), *map(str, sorted((copy / "receipts").rglob("*.json")))],
            [*CLI, "verify", str(copy / "receipts")],  # the data dir found from the path
            [*CLI, "verify", str(loose), "--trust-bundle", str(copy / "tsa" / "local-tsa.pem")],
        ]
        done = [
            subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
            for cmd in runs
        ]
        # The local receipt is OK each time; the RFC 3161 one has nothing to check against.
        for run in done[:2]:
            assert run.returncode == 3, run.stdout + run.stderr
            assert [line.split(" ")[0] for line in run.stdout.splitlines()] == ["CANNOT", "OK"]
        assert done[2].returncode == 0 and ok_line(done[2].stdout, loose), done[2].stdout
    finally:
        for folder in (cwd, copy, copy / "tsa", loose.parent):
            folder.chmod(0o755)
    assert {"copy": listing(copy), "cwd": listing(cwd), "loose": listing(loose.parent)} == before
    assert not (copy / "tsa" / "local-tsa.key").exists()


def test_verify_with_the_data_dir_keeps_the_local_tsa_files_byte_for_byte(world, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    (data / "tsa" / "local-tsa.key").unlink()  # a data dir whose key is elsewhere
    before = listing(data)
    assert main(["verify", "--data-dir", str(data), str(data / "receipts" / "solo")]) == 0
    assert capsys.readouterr().out.startswith("OK ")
    assert listing(data) == before


# --- --json -------------------------------------------------------------------------------------


def test_json_prints_one_object_per_receipt(world, auditor, capsys):
    ok = copy_receipt(world["rfc"], auditor / "in")
    bad = tamper(world["rfc"], auditor, attestation__serial="424242")
    local = copy_receipt(world["local"], auditor / "loose")
    code = main(["verify", "--json", str(ok), str(bad), str(local), "--trust-bundle", str(world["ca"])])
    assert code == 1
    captured = capsys.readouterr()
    objects = [json.loads(line) for line in captured.out.splitlines()]
    assert [(o["path"], o["outcome"], o["exit_code"]) for o in objects] == [
        (str(ok), "ok", 0),
        (str(bad), "fail", 1),
        (str(local), "fail", 1),  # a local token is not signed by the OpenSSL TSA's CA
    ]
    assert objects[0]["reason"] is None and objects[0]["target"] == "rfc3161:openssl"
    assert objects[0]["anchored_root"] == json.loads(ok.read_text())["anchored_root"]
    assert "serial in the receipt" in objects[1]["reason"]
    assert captured.err == "3 receipts: 1 OK, 2 failed\n"
    assert main(["verify", "--json", str(ok)]) == 3
    assert json.loads(capsys.readouterr().out)["outcome"] == "cannot_check"


# --- --explain: the commands run, with stock tools ------------------------------------------


def ok_line(out: str, path: object) -> bool:
    """verify's one line for a receipt that checks out: what it vouches for, then the file."""
    return out.startswith("OK ") and " existed at " in out and out.endswith(f": {path}\n") and out.count("\n") == 1


def run_script(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("which", ["local", "local_agg", "rfc", "rfc_agg"])
def test_explain_commands_succeed_on_a_real_receipt_and_fail_on_a_tampered_one(
    world, auditor, capsys, which
):
    receipt = copy_receipt(world[which], auditor / "in")
    ca = world["ca"] if which.startswith("rfc") else world["data" if which == "local" else "agg_data"] / "tsa" / "local-tsa.pem"
    assert main(["verify", "--explain", str(receipt), "--trust-bundle", str(ca)]) == 0
    script = capsys.readouterr().out
    assert "openssl ts -verify" in script
    done = run_script(script, auditor)
    assert done.returncode == 0, script + done.stdout + done.stderr
    assert "audit path: OK" in done.stdout and "Verification: OK" in done.stdout
    doc = json.loads(receipt.read_text())
    if doc["tree_size"] > 1:  # the audit path recomputation is what catches this one
        bad = tamper(receipt, auditor, batch__root=root(77))
    else:
        bad = tamper(receipt, auditor, batch__root=root(77), anchored_root=root(77))
    assert main(["verify", "--explain", str(bad), "--trust-bundle", str(ca)]) == 0
    done = run_script(capsys.readouterr().out, auditor)
    assert done.returncode != 0, done.stdout


class _FakeNode(BaseHTTPRequestHandler):
    """A JSON-RPC node that knows one transaction (the answers a real node gives)."""

    answers: dict[str, object] = {}

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        data = json.dumps(
            {"jsonrpc": "2.0", "id": body["id"], "result": self.answers.get(body["method"])}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def evm_receipt(auditor: Path) -> Iterator[tuple[Path, str]]:
    digest = hashlib.sha256(b"evm root").hexdigest()
    tx_hash, block_hash = "0x" + "ab" * 32, "0x" + "cd" * 32
    sender, contract = "0x" + "11" * 20, "0x" + "22" * 20
    calldata = "0x" + ANCHOR_SELECTOR.hex() + digest * 2 + f"{128:064x}" + f"{0:064x}" + f"{19:064x}" + b"vaultmesh-scheduler".hex().ljust(64, "0")
    _FakeNode.answers = {
        "eth_chainId": hex(8453),
        "eth_getTransactionByHash": {"hash": tx_hash, "from": sender, "to": contract, "input": calldata},
        "eth_getTransactionReceipt": {"status": "0x1", "blockHash": block_hash, "blockNumber": hex(100)},
        "eth_blockNumber": hex(111),
        "eth_getBlockByHash": {"hash": block_hash, "timestamp": hex(1767225590)},
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeNode)
    Thread(target=server.serve_forever, daemon=True).start()
    receipt = {
        "version": 1, "namespace": "dao", "cadence": "fast", "target": "eip155:8453",
        "batch": {"id": "1", "root": "sha256:" + digest}, "anchored_root": "sha256:" + digest,
        "proof": [], "leaf_index": 0, "tree_size": 1,
        "attestation": {"scheme": "eip155", "chain_id": 8453, "tx_hash": tx_hash, "block_number": 100,
                        "block_hash": block_hash, "from": sender, "contract": contract},
        "status": "confirmed", "confirmations": {"required": 12, "observed": 12},
        "anchored_at": "2026-01-01T00:00:00.000Z", "scheduler": {"version": "t", "config_hash": ""},
    }
    path = auditor / "evm.json"
    path.write_text(json.dumps(receipt))
    try:
        yield path, f"http://127.0.0.1:{server.server_address[1]}/rpc"
    finally:
        server.shutdown()
        server.server_close()


def test_eip155_needs_only_an_rpc_url_and_explains_the_json_rpc_calls(evm_receipt, auditor, capsys):
    path, url = evm_receipt
    assert main(["verify", str(path)]) == 3
    assert "pass --rpc-url eip155:8453=URL" in capsys.readouterr().out
    assert main(["verify", str(path), "--rpc-url", f"eip155:8453={url}"]) == 0
    assert ok_line(capsys.readouterr().out, path)
    assert main(["verify", "--explain", str(path), "--rpc-url", f"eip155:8453={url}"]) == 0
    script = capsys.readouterr().out
    assert "eth_getTransactionByHash" in script and ANCHOR_SELECTOR.hex() in script
    if shutil.which("curl"):
        done = run_script(script, auditor)
        assert done.returncode == 0, script + done.stdout + done.stderr
        assert "transaction: OK depth 12 required 12" in done.stdout
    assert main(["verify", str(path), "--rpc-url", "8453=http://x"]) == 2
    assert "expected eip155:<chain id>=<URL>" in capsys.readouterr().err


@pytest.mark.parametrize("quirk", ["unsorted attributes", "attribute certificate"])
def test_a_receipt_with_a_real_world_token_quirk_verifies_and_explains(quirk, auditor, capsys):
    """Tokens as some production TSAs send them: verify says OK, and the --explain commands
    (openssl ts, or openssl cms for a token openssl ts cannot parse) agree."""
    from asn1crypto import tsp as asn1tsp

    from core.anchors import tsp as tsp_module
    from core.receipts import build_receipt
    from tests.unit.test_tsp import (
        DIGEST,
        attribute_certificate_token,
        make_pki,
        openssl_reply,
        pem,
        unsorted_attributes_token,
        write_openssl_tsa,
    )

    pki = make_pki("Quirk")
    nonce = tsp_module.new_nonce()
    config = write_openssl_tsa(auditor / "tsa", pki)
    reply = openssl_reply(config, tsp_module.build_request(DIGEST, nonce=nonce))
    plain = asn1tsp.TimeStampResp.load(reply)["time_stamp_token"].dump()
    quirky = (
        unsorted_attributes_token(plain, pki.tsa_key)
        if quirk == "unsorted attributes"
        else attribute_certificate_token(plain)
    )
    info = tsp_module.verify_token(quirky, digest=DIGEST, trust_roots=[pki.root], nonce=nonce)
    receipt = build_receipt(
        namespace="dao", cadence="fast", target="rfc3161:vendor", batch_id="1",
        batch_root=DIGEST, anchored_root=DIGEST, proof=[], leaf_index=0, tree_size=1,
        attestation=tsp_module.token_attestation(info, nonce), status="confirmed",
        confirmations_required=0, confirmations_observed=0, anchored_at=time.time(),
        version="test", config_hash="", receipt_version=1,  # the token is over DIGEST itself
    )
    path = auditor / "quirky.json"
    path.write_text(json.dumps(receipt.to_json()))
    ca = auditor / "ca.pem"
    ca.write_bytes(pem(pki.root))
    assert main(["verify", str(path), "--trust-bundle", str(ca)]) == 0
    assert ok_line(capsys.readouterr().out, path)
    assert main(["verify", "--explain", str(path), "--trust-bundle", str(ca)]) == 0
    script = capsys.readouterr().out
    assert ("openssl cms -verify" in script) == (quirk == "attribute certificate")
    done = run_script(script, auditor)
    assert done.returncode == 0, script + done.stdout + done.stderr
    assert ("imprint: OK" if quirk == "attribute certificate" else "Verification: OK") in done.stdout
    other = "sha256:" + hashlib.sha256(b"another root").hexdigest()
    bad = tamper(path, auditor, batch__root=other, anchored_root=other)
    assert main(["verify", str(bad), "--trust-bundle", str(ca)]) == 1
    assert "imprint check failed" in capsys.readouterr().out
    assert main(["verify", "--explain", str(bad), "--trust-bundle", str(ca)]) == 0
    assert run_script(capsys.readouterr().out, auditor).returncode != 0


def test_a_vaultmesh_checkout_verifies_with_none_of_its_variables_set(
    world, auditor, capsys, fixtures_dir, monkeypatch
):
    """VMSH_ROOT's own anchors.yaml names ${EVM_CHAIN_ID}, ${EVM_ANCHOR_KEY}, ${TSA_URL}...;
    with none set, verify still uses its rfc3161 trustBundle (the eip155 entry, unusable
    without its variables, is left out)."""
    vm = auditor / "vaultmesh"
    (vm / "vmsh" / "config").mkdir(parents=True)
    for name in ("anchors.yaml", "namespaces.yaml"):
        shutil.copy(fixtures_dir / name, vm / "vmsh" / "config" / name)
    (vm / "services" / "anchors" / "certs").mkdir(parents=True)
    shutil.copy(world["ca"], vm / "services" / "anchors" / "certs" / "tsa-bundle.pem")
    for name in ("EVM_RPC", "EVM_CHAIN_ID", "EVM_CONTRACT", "BTC_RPC", "TSA_POLICY_OID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VMSH_ROOT", str(vm))
    receipt = copy_receipt(world["rfc"], auditor / "in")
    assert main(["verify", str(receipt)]) == 0, capsys.readouterr()
    assert ok_line(capsys.readouterr().out, receipt)
