"""What the scheme table (core/anchors/schemes.py) decides, seen where a user meets it:
check-config's target lines, the start warning, the registry's refusals, verify."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from cli.check import summary
from core.anchors.base import CannotVerify
from core.anchors.registry import Backends
from core.anchors.schemes import SCHEMES
from core.anchors.spec import SchemeSpec
from core.clock import FakeClock
from core.config import load_config
from core.errors import ValidationError
from core.events import LogRecord
from core.model_types import Model
from core.runtime import Runtime
from core.verify import ReadOnlyVerifiers

CONFIG = """\
scheduler: {data_dir: data}
targets:
  rfc3161:
    tsa: {url: "https://user:KEY@tsa.example:8443/v1/KEY?apikey=KEY"}
  eip155:
    "8453": {rpcUrl: "https://rpc.example/v3/KEY", chainId: 8453, keyEnv: ANCHOR_KEY}
  btc:
    default: {rpcUrl: "http://u:KEY@btc.example:8332/wallet/KEY", network: regtest}
namespaces:
  a:
    cadence:
      fast: {target: "local:dev", every: "60s"}
      strong: {target: "rfc3161:tsa", every: "2*fast"}
  b:
    cadence:
      fast: {target: "eip155:8453", every: "60s"}
      strong: {target: "btc:mainnet", every: "2*fast"}
"""


def loaded(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    return load_config(overrides={"config": str(path)}, env={}, cwd=tmp_path)


def test_check_config_names_each_target_by_its_entry_and_host_only(tmp_path):
    lines = summary(loaded(tmp_path)).splitlines()
    targets = lines[lines.index("targets (4):") + 1 : lines.index("targets (4):") + 5]
    assert targets == [
        "  btc:mainnet -> btc.default  regtest via btc.example",
        "  eip155:8453 -> eip155.8453  chainId 8453 via rpc.example",
        "  local:dev -> embedded",
        "  rfc3161:tsa -> rfc3161.tsa  tsa.example",
    ]
    assert "KEY" not in "\n".join(lines)


async def test_the_start_warns_once_per_development_target_and_for_no_other(tmp_path):
    runtime = Runtime(loaded(tmp_path), clock=FakeClock())
    logs: list[LogRecord] = []
    runtime.bus.subscribe(lambda e: logs.append(e) if isinstance(e, LogRecord) else None)
    runtime.announce()
    await asyncio.sleep(0)
    warned = [r for r in logs if "proves nothing to third parties" in r.msg]
    assert [(r.msg, r.fields.get("target")) for r in warned] == [
        ("target is the embedded development TSA: it proves nothing to third parties", "local:dev")
    ]


# A scheme known to the config but with no backend and no checker in this build.
UNBUILT = SchemeSpec(name="unbuilt", settings=Model, build=None)


def test_the_registry_refuses_a_scheme_without_a_backend_and_one_it_does_not_know(tmp_path, monkeypatch):
    monkeypatch.setitem(SCHEMES, "unbuilt", UNBUILT)
    backends = Backends(lambda target: None, tmp_path, FakeClock())
    with pytest.raises(ValidationError, match=r"unbuilt targets are not supported by this build yet \(unbuilt:x\)"):
        backends("unbuilt:x")
    with pytest.raises(ValidationError, match="unknown target scheme 'nope'"):
        backends("nope:x")
    with pytest.raises(ValidationError, match=r"no settings for rfc3161:tsa \(add targets.rfc3161.tsa"):
        backends("rfc3161:tsa")
    assert backends("local:dev").target == "local:dev"  # local needs no entry


async def test_verify_cannot_check_a_scheme_without_a_proof_and_refuses_an_unknown_one(tmp_path, monkeypatch):
    monkeypatch.setitem(SCHEMES, "unbuilt", UNBUILT)
    verifiers = ReadOnlyVerifiers()
    with pytest.raises(CannotVerify, match="this build cannot check unbuilt receipts"):
        verifiers.verifier("unbuilt:x", tmp_path / "r.json")
    with pytest.raises(ValidationError, match="unknown target scheme 'nope'"):
        verifiers.verifier("nope:x", tmp_path / "r.json")


# --------------------------------------------------------------------------- a scheme is its spec


class _Checker:
    def __init__(self, target: str, scope: object) -> None:
        self.target, self.scope, self.closed = target, scope, False
        self.seen: list[tuple[dict, bytes]] = []

    async def verify(self, attestation, digest, *, required=None, policy=None) -> None:
        self.seen.append((attestation, digest))

    async def close(self) -> None:
        self.closed = True


def test_verify_explain_and_rpc_urls_ask_the_schemes_spec_not_its_name(tmp_path, monkeypatch):
    """A scheme the core has never heard of works through its spec alone: verify builds its
    checker (one per scope), explain prints its steps, --rpc-url takes its form."""
    import hashlib
    import json
    import time

    from core.anchors.local import LocalTarget
    from core.anchors.spec import SchemeSpec
    from core.explain import explain
    from core.receipts import build_receipt
    from core.verify import check_one, parse_rpc_urls

    built: list[_Checker] = []

    def checker(target, inputs, receipt_path):
        built.append(_Checker(target, inputs.data_dir_for(receipt_path)))
        return built[-1]

    spec = SchemeSpec(
        name="fake",
        settings=LocalTarget,
        build=None,
        checker=checker,
        checker_scope=lambda inputs, path: inputs.data_dir_for(path),
        explain=lambda receipt, path, inputs: [f"echo fake step for {receipt.target}"],
        rpc_url_form="fake:<n>=<URL>",
    )
    monkeypatch.setitem(SCHEMES, "fake", spec)

    assert parse_rpc_urls(["fake:1=https://node"]) == {"fake:1": "https://node"}
    with pytest.raises(ValueError, match=r"expected eip155:<chain id>=<URL>, .* or fake:<n>=<URL>"):
        parse_rpc_urls(["fake:1=node"])

    digest = hashlib.sha256(b"x").digest()
    receipt = build_receipt(
        namespace="ns", cadence="fast", target="fake:1", batch_id="1",
        batch_root=digest, anchored_root=digest, proof=[], leaf_index=0, tree_size=1,
        attestation={"scheme": "fake"}, status="confirmed",
        confirmations_required=0, confirmations_observed=0, anchored_at=time.time(),
        version="test", config_hash="", receipt_version=1,  # its leaf: the root itself
    )
    paths: list[Path] = []
    for folder in ("one/receipts/ns", "one/receipts/ns", "two/receipts/ns"):
        path = tmp_path / folder / f"r{len(paths)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(receipt.to_json()))
        paths.append(path)

    async def run() -> list[str]:
        verifiers = ReadOnlyVerifiers()
        try:
            return [(await check_one(p, verifiers)).outcome.name for p in paths]
        finally:
            await verifiers.close()

    assert asyncio.run(run()) == ["OK", "OK", "OK"]
    assert [c.scope for c in built] == [tmp_path / "one", tmp_path / "two"]  # one per data dir
    assert all(c.closed for c in built) and len(built[0].seen) == 2
    script = explain(paths[0], receipt, ReadOnlyVerifiers())
    assert "echo fake step for fake:1" in script and "audit path" in script


def test_a_btc_target_anchors_once_it_has_a_node_and_a_key_and_says_what_it_lacks():
    refusal = SCHEMES["btc"].refusal
    settings = SCHEMES["btc"].settings

    def reason(entry: dict) -> str | None:
        return refusal("btc:mainnet", settings.model_validate(entry), "btc.default")

    assert reason({"rpcUrl": "http://u:p@127.0.0.1:8332/", "keyEnv": "BTC_KEY"}) is None
    assert reason({"rpcUrl": "http://u:p@127.0.0.1:8332/"}) == (
        "btc target btc:mainnet (btc.default) needs a signing key (key, keyEnv or keyFile) to anchor; "
        "its jobs are refused until then"
    )
    assert "needs an rpcUrl and a signing key" in (reason({"rpcUrl": ""}) or "")
    assert SCHEMES["btc"].build is not None and SCHEMES["btc"].checker is not None


def test_check_config_names_an_unusable_btc_key_file_without_quoting_it(tmp_path):
    from embit.base58 import encode_check

    file_problems = SCHEMES["btc"].file_problems
    settings = SCHEMES["btc"].settings
    secret = "c0ffee" * 10 + "abcd"
    good = tmp_path / "good"
    good.write_text(encode_check(b"\x5a" + bytes.fromhex(secret) + b"\x01") + "\n")  # a bcoin regtest WIF
    bad = tmp_path / "bad"
    bad.write_text(secret[:-2] + "zz\n")

    def problems(path):
        return file_problems(settings.model_validate({"rpcUrl": "http://h/", "keyFile": str(path)}), "btc:regtest")

    assert problems(good) == []
    [(field, problem)] = problems(bad)
    assert field == "key_file" and "not a valid secp256k1 private key" in problem and secret[:20] not in problem
    assert "cannot read key file" in problems(tmp_path / "missing")[0][1]
