"""Finding a receipt by root or batch id (issue 23, item 5): `verify --root` / `--batch` over
a folder or the store, `ctl receipt ROOT` and `GET /v1/receipts?root=` on a running
scheduler's control socket. Real receipts, a real headless scheduler process, its socket.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from cli.main import main
from tests.integration.test_control import ctl, headless, serving, sock_path, stop
from tests.integration.test_headless import receipts, wait_for
from tests.unit.test_verify_cli import anchor, ok_line, receipts_of


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A data dir: one receipt for `solo`, and a group of three (one call, one tree) for
    `a`, `b`, `c`; all on the embedded TSA."""
    tmp = tmp_path_factory.mktemp("store")
    data = anchor(tmp / "solo", {"solo": "local:dev"}, {})
    group = anchor(tmp / "group", {"a": "local:dev", "b": "local:dev", "c": "local:dev"}, {})
    return {"solo": data, "group": group}


def doc(path: Path) -> dict:
    return json.loads(path.read_text())


def test_verify_root_over_a_folder_checks_only_the_receipts_of_that_root(store, capsys):
    b = receipts_of(store["group"], "b")[0]
    folder = store["group"] / "receipts"
    assert main(["verify", "--root", doc(b)["batch"]["root"], str(folder)]) == 0
    assert ok_line(capsys.readouterr().out, b)
    # The group's anchored tree hash names all three receipts it covers.
    assert main(["verify", "--root", doc(b)["anchored_root"], str(folder)]) == 0
    assert sorted(line.rpartition(": ")[2] for line in capsys.readouterr().out.splitlines()) == sorted(
        str(receipts_of(store["group"], ns)[0]) for ns in ("a", "b", "c")
    )
    # By batch id, and a root nobody anchored: FAIL naming what was looked for, exit 1.
    assert main(["verify", "--batch", doc(b)["batch"]["id"], str(receipts_of(store["group"], "b")[0].parent)]) == 0
    assert ok_line(capsys.readouterr().out, b)
    nobody = "sha256:" + "ee" * 32
    assert main(["verify", "--root", nobody, str(folder)]) == 1
    assert capsys.readouterr().out == f"FAIL {nobody}: no receipt of it in {folder}\n"
    assert main(["verify", "--root", "sha256:nothex", str(folder)]) == 2
    assert "is not a root" in capsys.readouterr().err
    # --explain explains only that root's receipt (and none: exit 1, saying so).
    assert main(["verify", "--explain", "--root", doc(b)["batch"]["root"], str(folder)]) == 0
    script = capsys.readouterr().out
    assert script.count("openssl ts -verify") == 1 and str(b) in script
    assert main(["verify", "--explain", "--root", nobody, str(folder)]) == 1
    assert "no receipt of" in capsys.readouterr().err


def test_verify_root_without_files_looks_in_the_store(store, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solo = receipts_of(store["solo"], "solo")[0]
    assert main(["verify", "--root", doc(solo)["batch"]["root"], "--data-dir", str(store["solo"])]) == 0
    assert ok_line(capsys.readouterr().out, solo)
    assert main(["verify", "--root", "sha256:" + "ee" * 32, "--data-dir", str(store["group"])]) == 1
    assert "no receipt of it in the store" in capsys.readouterr().out
    assert main(["verify"]) == 2


def test_ctl_receipt_and_the_control_api_find_a_receipt_by_root(tmp_path):
    config, proc = headless(tmp_path, ["alpha", "beta"], every="1h")
    try:
        wait_for(lambda: serving(tmp_path) and len(receipts(tmp_path)) >= 2)
        beta = next(r for r in receipts(tmp_path) if r["namespace"] == "beta")
        root = beta["batch"]["root"]
        got = ctl(config, "receipt", root)
        assert got.returncode == 0, got.stderr
        assert "beta/fast" in got.stdout and beta["batch"]["id"] in got.stdout and "alpha" not in got.stdout
        as_json = [json.loads(line) for line in ctl(config, "receipt", root, "--json").stdout.splitlines()]
        assert [item["receipt"] for item in as_json] == [beta]
        none = ctl(config, "receipt", "sha256:" + "ee" * 32)
        assert none.returncode == 1 and "no receipt of sha256:" in none.stderr
        transport = httpx.HTTPTransport(uds=str(sock_path(tmp_path)))
        with httpx.Client(transport=transport, base_url="http://scheduler") as client:
            reply = client.get("/v1/receipts", params={"root": root})
            assert reply.status_code == 200
            assert [item["receipt"] for item in reply.json()["receipts"]] == [beta]
            assert client.get("/v1/receipts", params={"batch": beta["batch"]["id"]}).status_code == 200
            bad = client.get("/v1/receipts", params={"root": "nope"})
            assert bad.status_code == 400 and "is not a root" in bad.json()["error"]
            assert client.post("/v1/receipts", params={"root": root}).status_code == 405
    finally:
        stop(proc)


