"""`vmsh-scheduler export` writes, beside the receipts, what an auditor needs (issue 23,
items 3 and 5): the certificates (`.trust/`) and, with `--format tsr`, each RFC 3161 token
as a DER `.tsr` that stock `openssl ts -verify -token_in` checks directly.

Real receipts (the engine against the embedded TSA of two data dirs, as two replicas have,
and an OpenSSL TSA over HTTP), a real config file, the real command line and openssl.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main
from core.anchors.rfc3161 import Rfc3161Target
from tests.integration.tsa_servers import OpenSSLTSA
from tests.unit.test_verify_cli import anchor

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSSLTSA]:
    server = OpenSSLTSA(tmp_path_factory.mktemp("openssl-tsa"))
    yield server
    server.stop()


@pytest.fixture
def store(tsa: OpenSSLTSA, tmp_path: Path) -> dict[str, Path]:
    """A data dir holding local: receipts of its own TSA and of another replica's (as a
    shared store holds them), and rfc3161: receipts; a config naming it."""
    settings = {"rfc3161:tsa": Rfc3161Target(url=tsa.url(), trust_bundle=tsa.pki.path("root.pem"))}
    data = anchor(tmp_path / "a", {"mine": "local:dev", "rfc": "rfc3161:tsa"}, settings)
    other = anchor(tmp_path / "b", {"theirs": "local:dev"}, {})
    shutil.copytree(other / "receipts" / "theirs", data / "receipts" / "theirs")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""\
scheduler: {{data_dir: "{data}"}}
targets:
  rfc3161:
    tsa: {{url: "{tsa.url()}", trustBundle: "{tsa.pki.path('root.pem')}"}}
"""
    )
    return {"data": data, "other": other, "config": config}


def test_export_writes_the_certificates_a_verifier_needs_beside_the_receipts(store, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "export"
    assert main(["export", "--out", str(out), "--config", str(store["config"])]) == 0
    said = capsys.readouterr().out
    trust = out / ".trust"
    written = sorted(p.name for p in trust.iterdir())
    assert len(written) == 3 and sum(n.startswith("local-tsa-") for n in written) == 2, written
    assert "another data dir's embedded TSA: compare the fingerprint" in said
    assert f"verify --trust-bundle {trust} {out}" in said
    receipts = sorted(out.glob("*/*.json"))
    assert {p.parent.name for p in receipts} == {"mine", "rfc", "theirs"}
    # An auditor with the export only: every receipt verifies, no config, no data dir.
    empty = tmp_path / "auditor"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert main(["verify", "--trust-bundle", str(trust), str(out)]) == 0
    assert capsys.readouterr().out.count("OK ") == 3


def test_export_format_tsr_writes_tokens_openssl_verifies_directly(store, tsa, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "export"
    assert main(["export", "--out", str(out), "--format", "tsr", "--config", str(store["config"])]) == 0
    assert "wrote 3 RFC 3161 token(s)" in capsys.readouterr().out
    cases = [
        (next((out / "rfc").glob("*.json")), tsa.pki.path("root.pem")),
        (next((out / "mine").glob("*.json")), store["data"] / "tsa" / "local-tsa.pem"),
        (next((out / "theirs").glob("*.json")), store["other"] / "tsa" / "local-tsa.pem"),
    ]
    for receipt, ca in cases:
        tsr = receipt.with_suffix(".tsr")
        digest = json.loads(receipt.read_text())["anchored_root"].split(":")[1]
        cmd = ["openssl", "ts", "-verify", "-in", str(tsr), "-token_in", "-digest", digest, "-CAfile", str(ca)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and "Verification: OK" in done.stdout, done.stdout + done.stderr
        wrong = subprocess.run([*cmd[:6], "00" * 32, *cmd[7:]], capture_output=True, text=True, timeout=30)
        assert wrong.returncode != 0
    # verify reads no .tsr and no hidden folder: the receipts only.
    assert main(["verify", "--trust-bundle", str(out / ".trust"), str(out)]) == 0
