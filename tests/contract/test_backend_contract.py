"""The backend contract: the same cases, once per target scheme, on a real backend.

As APScheduler 4 runs its data-store suite once per store, every case below runs against
`local` (the embedded TSA), `rfc3161` (an OpenSSL TSA over HTTP on 127.0.0.1,
tests/integration/tsa_servers.py), `eip155` (a ganache node, tests/integration/ganache.py)
and `btc` (a bcoin regtest node that mines whenever its mempool holds a transaction,
tests/integration/bcoin.py). Each backend is built the way the scheduler builds it:
through its scheme's `build` in the one table, core/anchors/schemes.py.

What core.anchors.base.Backend promises, and every backend must keep:

- anchoring a digest gives an attestation that verify() accepts for that digest;
- the same attestation fails verify() for any other digest (VerificationFailed);
- verify() writes nothing, and a read-only verifier built from public inputs only (a CA
  file, a node URL, the data dir holding the certificate: core/verify.py) accepts it;
- recover() of an intent that never reached the outside world is None, and recover() with
  what anchor() journalled is None or an attestation that verifies;
- a policy the backend does not serve is refused before anything is anchored
  (ValidationError), and a stated policy the proof does not carry fails verify();
- check-config's one-line description shows a host at most, never a path or a secret.

Adding a scheme: one `_<scheme>` rig function below and its line in RIGS.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core.anchors.base import Attestation, Backend, VerificationFailed
from core.anchors.schemes import SCHEMES
from core.anchors.spec import SchemeSpec
from core.clock import FakeClock
from core.errors import ValidationError
from core.verify import ReadOnlyVerifiers
from tests.integration.bcoin import BURN, SEGWIT_HEIGHT, Bcoin
from tests.integration.ganache import KEYS, Ganache
from tests.integration.tsa_servers import OpenSSLTSA

UNSERVED_POLICY = "1.3.6.1.4.1.55555.9.9"  # served by none of the backends below


@dataclass
class Rig:
    """One backend under test and the public inputs a third party would verify it with."""

    target: str
    settings: Any
    data_dir: Path
    verify_inputs: dict[str, Any]  # ReadOnlyVerifiers keyword arguments: no secret among them
    secrets: tuple[str, ...] = ()  # must appear in no description
    required: int | None = None  # the depth a receipt would ask for (chains)
    backends: list[Backend] = field(default_factory=list)

    @property
    def spec(self) -> SchemeSpec:
        return SCHEMES[self.target.partition(":")[0]]

    def build(self) -> Backend:
        clock = FakeClock(start=time.time())  # a real TSA stamps real time (max clock skew)
        backend = self.spec.build(self.target, self.settings, self.data_dir, clock, None)  # type: ignore[misc]
        self.backends.append(backend)
        return backend


def _local(request: pytest.FixtureRequest, tmp: Path) -> Rig:
    settings = SCHEMES["local"].settings.model_validate({})
    data = tmp / "data"
    return Rig("local:dev", settings, data, {"data_dir": data})


def _rfc3161(request: pytest.FixtureRequest, tmp: Path) -> Rig:
    tsa: OpenSSLTSA = request.getfixturevalue("openssl_tsa")
    bundle = tsa.pki.path("bundle.pem")
    settings = SCHEMES["rfc3161"].settings.model_validate({"url": tsa.url("/tsa"), "trustBundle": str(bundle)})
    return Rig("rfc3161:openssl", settings, tmp / "data", {"trust_bundles": [bundle]})


def _eip155(request: pytest.FixtureRequest, tmp: Path) -> Rig:
    node: Ganache = request.getfixturevalue("ganache_node")
    target = f"eip155:{node.chain_id}"
    settings = SCHEMES["eip155"].settings.model_validate(
        {"rpcUrl": node.url, "chainId": node.chain_id, "key": KEYS[0], "confirmations": 1}
    )
    return Rig(target, settings, tmp / "data", {"rpc_urls": {target: node.url}}, (KEYS[0],), required=1)


def _btc(request: pytest.FixtureRequest, tmp: Path) -> Rig:
    node: Bcoin = request.getfixturevalue("bcoin_node")
    settings = node.funded()  # a fresh key and coin: each rig starts its own chain of anchors
    assert settings.key is not None
    secrets = (settings.key.get_secret_value(), "vmsh-test-api-key")
    return Rig("btc:regtest", settings, tmp / "data", {"rpc_urls": {"btc:regtest": node.url}}, secrets, required=1)


# One line per scheme that has a backend (test_every_buildable_scheme_runs_the_contract).
RIGS: dict[str, Callable[[pytest.FixtureRequest, Path], Rig]] = {
    "local": _local,
    "rfc3161": _rfc3161,
    "eip155": _eip155,
    "btc": _btc,
}


@pytest.fixture(scope="module")
def openssl_tsa(tmp_path_factory):
    server = OpenSSLTSA(tmp_path_factory.mktemp("openssl-tsa"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ganache_node(tmp_path_factory):
    node = Ganache(tmp_path_factory.mktemp("ganache")).start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def bcoin_node(tmp_path_factory):
    node = Bcoin(tmp_path_factory.mktemp("bcoin")).start()
    node.mine(SEGWIT_HEIGHT + 1, BURN)
    node.start_miner()
    yield node
    node.stop()


@pytest.fixture(params=list(RIGS))
async def rig(request, tmp_path):
    made = RIGS[request.param](request, tmp_path)
    yield made
    for backend in made.backends:
        await backend.close()


def digest_of(n: int) -> bytes:
    return os.urandom(31) + bytes([n])


def noop(facts: dict[str, Any]) -> None:
    return None


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below `folder` with its size and mtime: what a write would change."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.stat()
        out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


# --------------------------------------------------------------------------- the contract


async def test_an_anchored_digest_verifies_and_another_digest_fails(rig: Rig) -> None:
    backend = rig.build()
    assert backend.target == rig.target
    digest = digest_of(1)
    att = await backend.anchor(digest, noop)
    assert isinstance(att, Attestation) and att.status in ("confirmed", "pending")
    await backend.verify(att.data, digest, required=rig.required)
    tampered = bytes([digest[0] ^ 0x01]) + digest[1:]
    with pytest.raises(VerificationFailed):
        await backend.verify(att.data, tampered, required=rig.required)


async def test_verify_writes_nothing_and_needs_only_public_inputs(rig: Rig, tmp_path: Path) -> None:
    digest = digest_of(2)
    att = await rig.build().anchor(digest, noop)
    before = tree(tmp_path)
    await rig.build().verify(att.data, digest, required=rig.required)  # a fresh backend, as after a restart
    # A third party: no config, no key, no password; the receipt would sit in the data dir.
    verifiers = ReadOnlyVerifiers(**rig.verify_inputs)
    try:
        verifier = verifiers.verifier(rig.target, rig.data_dir / "receipts" / "ns" / "r.json")
        await verifier.verify(att.data, digest, required=rig.required)
        with pytest.raises(VerificationFailed):
            await verifier.verify(att.data, digest_of(3), required=rig.required)
    finally:
        await verifiers.close()
    assert tree(tmp_path) == before


async def test_recover_of_a_fresh_intent_is_none_and_of_a_journalled_one_verifies(rig: Rig) -> None:
    backend = rig.build()
    assert await backend.recover(digest_of(4), {}) is None  # nothing reached the outside world
    digest = digest_of(5)
    notes: dict[str, Any] = {}
    att = await backend.anchor(digest, notes.update)
    got = await rig.build().recover(digest, notes)  # after a crash: a new process, the journal's notes
    assert got is None or isinstance(got, Attestation)
    if got is not None:
        await backend.verify(got.data, digest, required=rig.required)
        assert got.data.get("tx_hash", got.data.get("token")) == att.data.get("tx_hash", att.data.get("token"))


async def test_a_policy_the_backend_does_not_serve_is_refused(rig: Rig) -> None:
    backend = rig.build()
    with pytest.raises(ValidationError):
        await backend.anchor(digest_of(6), noop, policy=UNSERVED_POLICY)
    digest = digest_of(7)
    att = await backend.anchor(digest, noop)
    with pytest.raises(VerificationFailed):  # a receipt stating a policy its proof lacks
        await backend.verify(att.data, digest, required=rig.required, policy=UNSERVED_POLICY)


async def test_the_description_shows_no_path_or_secret(rig: Rig) -> None:
    shown = rig.spec.describe(rig.settings)
    assert "/" not in shown and all(secret not in shown for secret in rig.secrets)


@pytest.mark.parametrize(
    ("scheme", "entry", "shown"),
    [
        ("local", {}, ""),
        ("rfc3161", {"url": "https://u:KEY@tsa.example:8443/v1/KEY?apikey=KEY"}, "tsa.example"),
        ("eip155", {"rpcUrl": "https://rpc.example/v3/KEY", "chainId": 8453, "key": "0x" + "ab" * 32},
         "chainId 8453 via rpc.example"),
        ("btc", {"rpcUrl": "http://u:KEY@btc.example:8332/wallet/KEY", "network": "regtest"},
         "regtest via btc.example"),
        ("btc", {"rpcUrl": "u:KEY@btc.example:8332/wallet/KEY"}, "mainnet via btc.example:8332"),
    ],
)
def test_check_config_describes_a_target_by_host_only(scheme: str, entry: dict, shown: str) -> None:
    """The line check-config prints after each target (cli/check.py summary)."""
    got = SCHEMES[scheme].describe(SCHEMES[scheme].settings.model_validate(entry))
    assert got == shown and "KEY" not in got and "ab" * 32 not in got


# --------------------------------------------------------------------------- the table itself


def test_every_buildable_scheme_runs_the_contract() -> None:
    assert {name for name, spec in SCHEMES.items() if spec.build is not None} == set(RIGS)
