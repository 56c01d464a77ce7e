"""`verify` and `verify --explain | sh` agree on every receipt of one corpus (issue 23).

The corpus is real: the engine anchors batches to the embedded `local:` TSA, to an OpenSSL
TSA over HTTP (tests/integration/tsa_servers.py) and to a ganache node
(tests/integration/ganache.py). Per scheme: a genuine receipt, each kind of tamper (the
namespace, the batch id, anchored_at, the root, the token), and for eip155 a receipt
whose transaction is 1 of the 3 blocks deep it asks for (PENDING) and one checked without
a node (CANNOT CHECK). Each file's outcome is asserted, and the two answers must agree
on it: the same exit code and the same first word.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main
from core.anchors.evm import Eip155Target
from core.anchors.rfc3161 import Rfc3161Target
from core.sources import write_batch
from tests.integration.ganache import KEYS, Ganache
from tests.integration.tsa_servers import OpenSSLTSA
from tests.unit.test_verify_cli import anchor, auditor, receipts_of  # noqa: F401 (auditor: a fixture)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

CLI = [sys.executable, "-m", "cli"]  # the `vmsh-scheduler` command, from this checkout
CODES = {"OK": 0, "FAIL": 1, "CANNOT": 3, "PENDING": 4}


def tampered(doc: dict, kind: str) -> dict:
    doc = json.loads(json.dumps(doc))
    if kind == "namespace":
        doc["namespace"] = "someone-else"
    elif kind == "batch id":
        doc["batch"]["id"] = "999999"
    elif kind == "anchored_at":
        doc["anchored_at"] = "1999-01-01T00:00:00.000Z"
    elif kind == "root":
        doc["batch"]["root"] = "sha256:" + "77" * 32
    elif kind == "token":
        att = doc["attestation"]
        if "token" in att:  # one byte of the signature (the token's end) changed
            raw = bytearray(base64.b64decode(att["token"]))
            raw[-5] ^= 0x01
            att["token"] = base64.b64encode(bytes(raw)).decode()
        else:  # another transaction
            att["tx_hash"] = "0x" + "ab" * 32
    return doc


REDUNDANT = "2 of local:dev,rfc3161:openssl,eip155:1337"


def redundant_files(
    red: Path, young: Path, out: Path, rpc: list[str], tsa: OpenSSLTSA
) -> list[tuple[Path, str, list[str]]]:
    """Version 3 receipts (redundant anchoring, 2 of 3 targets; `red` and `young` their data
    dirs): genuine; one attestation's token tampered; too few attestations left; min
    lowered; PENDING (one of the two final); CANNOT CHECK (only one can be checked here)."""
    local = ["--trust-bundle", str(red / "tsa" / "local-tsa.pem")]
    every = [*local, "--trust-bundle", str(tsa.pki.path("root.pem")), *rpc]
    doc = json.loads(receipts_of(red, "red")[0].read_text())
    assert [a["target"] for a in doc["attestations"]] == REDUNDANT.split(" of ")[1].split(",")
    forged = json.loads(json.dumps(doc))
    forged["attestations"][1] = tampered({"attestation": forged["attestations"][1]["attestation"]}, "token") | {
        k: v for k, v in forged["attestations"][1].items() if k != "attestation"
    }
    cases = {
        "genuine": (doc, "OK", every),
        "one-token": (forged, "FAIL", every),
        "too-few": (doc | {"attestations": doc["attestations"][:1]}, "FAIL", every),
        "min-lowered": (doc | {"min": 1, "target": "1 of " + REDUNDANT.split(" of ")[1]}, "FAIL", every),
        "namespace": (tampered(doc, "namespace"), "FAIL", every),
        "cannot": (doc, "CANNOT", rpc),  # no trust bundle: only the node's attestation can be checked here
        "pending": (json.loads(receipts_of(young, "redyoung")[0].read_text()), "PENDING", [
            "--trust-bundle", str(young / "tsa" / "local-tsa.pem"), *rpc,
        ]),
    }
    files = []
    for name, (body, expected, flags) in cases.items():
        path = out / f"redundant-{name}.json"
        path.write_text(json.dumps(body))
        files.append((path, expected, flags))
    return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[tuple[Path, str, list[str]]], Path]]:
    """[(receipt file, expected outcome, verify's trust flags)], and the folder."""
    tmp = tmp_path_factory.mktemp("corpus")
    tsa = OpenSSLTSA(tmp / "tsa")
    node = Ganache(tmp).start()
    try:
        evm = {"rpcUrl": node.url, "chainId": 1337, "key": KEYS[0]}
        settings = {
            "rfc3161:openssl": Rfc3161Target(url=tsa.url(), trust_bundle=tsa.pki.path("root.pem")),
            "eip155:1337": Eip155Target.model_validate({**evm, "confirmations": 1}),
        }
        tsas = anchor(tmp / "tsas", {"solo": "local:dev", "rfc": "rfc3161:openssl"}, settings)
        agg = anchor(tmp / "agg", {"a": "local:dev", "b": "local:dev", "x": "rfc3161:openssl", "y": "rfc3161:openssl"}, settings)
        deep = anchor(tmp / "deep", {"chain": "eip155:1337"}, settings, confirmations=1)
        red = anchor(tmp / "red", {"red": REDUNDANT}, settings, confirmations=1)
        red_young = anchor(tmp / "redyoung", {"redyoung": "2 of local:dev,eip155:1337"}, settings, confirmations=3)
        young = anchor(tmp / "young", {"young": "eip155:1337"}, settings, confirmations=3)  # 1 of 3 deep: last
        rpc = ["--rpc-url", f"eip155:1337={node.url}"]
        genuine = {
            "local": (receipts_of(tsas, "solo")[0], ["--trust-bundle", str(tsas / "tsa" / "local-tsa.pem")]),
            "local-agg": (receipts_of(agg, "b")[0], ["--trust-bundle", str(agg / "tsa" / "local-tsa.pem")]),
            "rfc3161": (receipts_of(tsas, "rfc")[0], ["--trust-bundle", str(tsa.pki.path("root.pem"))]),
            "rfc3161-agg": (receipts_of(agg, "y")[0], ["--trust-bundle", str(tsa.pki.path("root.pem"))]),
            "eip155": (receipts_of(deep, "chain")[0], rpc),
        }
        out = tmp / "files"
        out.mkdir()
        files: list[tuple[Path, str, list[str]]] = []
        for name, (src, flags) in genuine.items():
            doc = json.loads(src.read_text())
            for kind in ("genuine", "namespace", "batch id", "anchored_at", "root", "token"):
                path = out / f"{name}-{kind.replace(' ', '-')}.json"
                path.write_text(json.dumps(doc if kind == "genuine" else tampered(doc, kind)))
                files.append((path, "OK" if kind == "genuine" else "FAIL", flags))
        pending = out / "eip155-pending.json"
        pending.write_text(receipts_of(young, "young")[0].read_text())
        files.append((pending, "PENDING", rpc))
        files.append((out / "eip155-genuine.json", "CANNOT", []))  # no node to ask
        btc = out / "btc-unknown.json"  # a scheme this build has no checker for
        btc.write_text(json.dumps(json.loads(genuine["local"][0].read_text()) | {"target": "btc:main"}))
        files.append((btc, "CANNOT", []))
        files += redundant_files(red, red_young, out, rpc, tsa)
        yield files, out
    finally:
        node.stop()
        tsa.stop()


def test_verify_and_explain_agree_on_every_receipt(corpus, auditor, capsys):  # noqa: F811
    files, _ = corpus
    seen = []
    for path, expected, flags in files:
        code = main(["verify", str(path), *flags])
        line = capsys.readouterr().out.strip()
        assert main(["verify", "--explain", str(path), *flags]) == 0
        script = capsys.readouterr().out
        done = subprocess.run(["sh"], input=script, capture_output=True, text=True, timeout=60, cwd=auditor)
        last = (done.stdout.strip().splitlines() or [""])[-1]
        said = last.split(" ")[0] if last.split(" ")[0] in CODES else "FAIL"  # a failed stock tool: FAIL
        seen.append((path.name, line.split(" ")[0], code, said, done.returncode))
        assert (line.split(" ")[0], code) == (expected, CODES[expected]), f"{path.name}: {line}"
        assert done.returncode == CODES[expected], f"{path.name}: {line}\n{done.stdout}{done.stderr}"
        if "anchored_at" in path.name:  # the stock tools catch it by the attested time too
            assert "anchored_at: FAIL 1999-01-01T00:00:00.000Z attested" in done.stdout, done.stdout
        if done.returncode in (0, 4, 3):  # these end with their word; a FAIL with the tool's output
            assert said == expected, f"{path.name}: {done.stdout}"
        if expected == "OK":  # the same words: what is vouched for, and by which targets
            assert last.split(" existed at ")[1].split(" ")[1] in line, f"{path.name}: {last} / {line}"
        if path.name == "redundant-genuine.json":
            assert line.endswith(f"(3 of 3: local:dev, rfc3161:openssl, eip155:1337): {path}"), line
    assert len(seen) == 40
    # several at once: the worst outcome, the same exit code (CANNOT CHECK over PENDING over OK)
    some = [str(p) for p, _, _ in files if p.name in ("eip155-pending.json", "btc-unknown.json", "local-genuine.json")]
    flags = [*files[0][2], *next(f for p, _, f in files if p.name == "eip155-pending.json")]
    assert main(["verify", *some, *flags]) == 3
    capsys.readouterr()
    assert main(["verify", "--explain", *some, *flags]) == 0
    done = subprocess.run(["sh"], input=capsys.readouterr().out, capture_output=True, text=True, timeout=60, cwd=auditor)
    assert done.returncode == 3 and [w for w in ("OK", "PENDING", "CANNOT") if f"\n{w} " in "\n" + done.stdout] == [
        "OK", "PENDING", "CANNOT"
    ], done.stdout
    # ... and a FAIL among them outweighs all
    assert main(["verify", *some, str(files[1][0]), *flags]) == 1
    capsys.readouterr()
    assert main(["verify", "--explain", *some, str(files[1][0]), *flags]) == 0
    done = subprocess.run(["sh"], input=capsys.readouterr().out, capture_output=True, text=True, timeout=60, cwd=auditor)
    assert done.returncode == 1, done.stdout


def test_verify_says_what_it_vouches_for_and_what_is_pending(corpus, auditor, capsys):  # noqa: F811
    files, out = corpus
    doc = json.loads((out / "rfc3161-genuine.json").read_text())
    flags = next(f for p, _, f in files if p.name == "rfc3161-genuine.json")
    assert main(["verify", str(out / "rfc3161-genuine.json"), *flags]) == 0
    line = capsys.readouterr().out
    want = f"OK rfc {doc['batch']['id']} {doc['batch']['root']} existed at "
    assert line.startswith(want) and f"(rfc3161:openssl): {out / 'rfc3161-genuine.json'}" in line
    when = line[len(want):].split(" ")[0]
    assert abs(time.time() - time.mktime(time.strptime(when[:19], "%Y-%m-%dT%H:%M:%S")) + time.timezone) < 3600
    pending = next(f for p, _, f in files if p.name == "eip155-pending.json")
    assert main(["verify", "--json", str(out / "eip155-pending.json"), *pending]) == 4
    record = json.loads(capsys.readouterr().out)
    assert record["outcome"] == "pending" and "1 of 3 blocks deep" in record["reason"]
    assert main(["verify", str(out / "eip155-anchored_at.json"), *pending]) == 1
    assert "anchored_at 1999-01-01T00:00:00.000Z is" in capsys.readouterr().out


def test_ctl_and_the_control_api_give_verify_s_outcome(tmp_path, auditor):  # noqa: F811
    """A running scheduler (local: and eip155 on ganache, 3 blocks required): for its
    receipts and tampered copies, `ctl verify` (POST /v1/verify, what the dashboard's `v`
    asks) answers what `verify` and `verify --explain | sh` answer, exit code and word."""
    from tests.integration.ganache import free_port

    node = Ganache(tmp_path).start()
    for ns in ("chain", "dev", "red"):
        write_batch(tmp_path / "batches" / ns, "000001", "sha256:" + f"{len(ns):064x}")
    config = tmp_path / "config.yaml"
    config.write_text(f"""\
scheduler:
  tick: 0.2
  data_dir: {tmp_path / "data"}
http:
  listen: "127.0.0.1:{free_port()}"
targets:
  local:
    dev: {{}}
  eip155:
    default:
      rpcUrl: {node.url}
      chainId: 1337
      keyEnv: VMSH_TEST_EVM_KEY
      confirmations: 3
namespaces:
  chain:
    source: {tmp_path / "batches" / "chain"}
    cadence:
      fast: {{target: "eip155:1337", every: "1h"}}
  dev:
    source: {tmp_path / "batches" / "dev"}
    cadence:
      fast: {{target: "local:dev", every: "1h"}}
  red:
    source: {tmp_path / "batches" / "red"}
    cadence:
      fast: {{targets: ["local:dev", "eip155:1337"], min: 2, every: "1h"}}
""")
    env = {**os.environ, "VMSH_TEST_EVM_KEY": KEYS[0]}
    log = (tmp_path / "scheduler.log").open("w")
    proc = subprocess.Popen([*CLI, "--no-ui", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while len(list((tmp_path / "data" / "receipts").rglob("*.json"))) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.1)
        files = sorted((tmp_path / "data" / "receipts").rglob("*.json"))
        for src in list(files):
            for kind in ("namespace", "anchored_at"):
                bad = src.with_name(f"tampered-{kind}-{src.name}")
                bad.write_text(json.dumps(tampered(json.loads(src.read_text()), kind)))
                files.append(bad)
        seen: dict[str, set[tuple[str, int]]] = {}
        for path in files:
            flags = ["--config", str(config)]
            plain = subprocess.run([*CLI, "verify", *flags, str(path)], capture_output=True, text=True, env=env, timeout=60)
            script = subprocess.run([*CLI, "verify", "--explain", *flags, str(path)], capture_output=True, text=True, env=env, timeout=60)
            shell = subprocess.run(["sh"], input=script.stdout, capture_output=True, text=True, timeout=60)
            ctl = subprocess.run([*CLI, "ctl", *flags, "verify", str(path)], capture_output=True, text=True, env=env, timeout=60)
            words = {plain.stdout.split(" ")[0], ctl.stdout.split(" ")[0]}
            assert len(words) == 1, plain.stdout + ctl.stdout
            assert plain.returncode == ctl.returncode == shell.returncode, plain.stdout + ctl.stdout + shell.stdout
            kind = "tampered" if path.name.startswith("tampered") else "genuine"
            seen.setdefault(f"{kind}:{json.loads(path.read_text())['target']}", set()).add((words.pop(), ctl.returncode))
        assert seen == {
            "genuine:eip155:1337": {("PENDING", 4)},  # 1 of 3 blocks: genuine, not final
            "genuine:local:dev": {("OK", 0)},
            "tampered:eip155:1337": {("FAIL", 1)},
            "tampered:local:dev": {("FAIL", 1)},
            # redundant (version 3): local:dev final, the transaction 1 of 3 blocks deep
            "genuine:2 of local:dev,eip155:1337": {("PENDING", 4)},
            "tampered:2 of local:dev,eip155:1337": {("FAIL", 1)},
        }
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        node.stop()


def test_the_documented_bytes_reproduce_the_anchored_root(corpus, auditor):  # noqa: F811
    """docs/receipts.md's stock-tool lines, run as they are written, on a genuine receipt."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "receipts.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    files, out = corpus
    for name in ("local-genuine.json", "rfc3161-genuine.json"):
        path = out / name
        flags = next(f for p, _, f in files if p.name == name)
        script = block.replace("RECEIPT", str(path)).replace("tsa-ca.pem", flags[1])
        done = subprocess.run(["sh", "-e"], input=script, capture_output=True, text=True, timeout=60, cwd=auditor)
        assert done.returncode == 0, done.stdout + done.stderr
        doc = json.loads(path.read_text())
        assert done.stdout.splitlines()[0] == doc["anchored_root"][7:]
        assert "Verification: OK" in done.stdout and "Time stamp:" in done.stdout
