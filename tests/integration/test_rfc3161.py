"""`rfc3161:` targets against real time-stamp authorities over HTTP on 127.0.0.1.

Three TSAs (tests/integration/tsa_servers.py), started once for the module:
an OpenSSL TSA whose replies carry a chain in a certificate SET that is not DER-sorted,
the same TSA with the certificate left out (the trust bundle supplies the signer), and
certomancer's TSA service. The engine is a real Scheduler on a FakeClock set to the wall
clock (the TSAs stamp real time), driven one pass at a time: nothing waits for a schedule.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import json
import random
import re
import time
from pathlib import Path

import pytest

from core.anchors.base import VerificationFailed
from core.anchors.registry import Backends
from core.anchors.rfc3161 import Rfc3161Target
from core.anchors.rfc3161.backend import RFC3161Backend
from core.anchors.schemes import SCHEMES
from core.backoff import BackoffPolicy
from core.clock import FakeClock
from core.engine import Scheduler
from core.errors import AuthError, NetworkError, ValidationError
from core.events import AnchorFailed, AnchorStarted, EventBus, ReceiptWritten
from core.jobs import JobKey, JobSpec, safe_name
from core.receipts import (
    Receipt,
    ReceiptInvalid,
    bound_leaf,
    load_receipt,
    root_text,
    verify_receipt,
)
from core.sources import write_batch
from core.store.files.journal import IntentJournal
from core.store.files.receipts import ReceiptStore
from core.store.files.state import StateStore
from core.verify import ReadOnlyVerifiers, verify_files
from tests.integration.tsa_servers import CertomancerTSA, OpenSSLTSA, free_port, pki

BEARER = "tok-3161-do-not-log"
BASIC_USER, BASIC_PASSWORD = "anchor", "pw-3161-do-not-log"
BASIC_HEADER = "Basic " + base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()


def root(n: int) -> str:
    return "sha256:" + hashlib.sha256(f"batch {n} {time.time_ns()}".encode()).hexdigest()


# --- servers, once per module ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def openssl_tsa(tmp_path_factory):
    server = OpenSSLTSA(
        tmp_path_factory.mktemp("openssl-tsa"),
        expected_auth=frozenset({f"Bearer {BEARER}", BASIC_HEADER}),
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def certomancer_tsa(tmp_path_factory):
    server = CertomancerTSA(tmp_path_factory.mktemp("certomancer-tsa"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def https_tsa(tmp_path_factory):
    work = tmp_path_factory.mktemp("https-tsa")
    tls_root = pki.make_root("TLS Test Root")
    (work / "tls-ca.pem").write_bytes(tls_root.pem)
    server = OpenSSLTSA(work, tls_cert=pki.make_tls_server(tls_root, "127.0.0.1"))
    server.tls_ca = work / "tls-ca.pem"  # type: ignore[attr-defined]  # what this fixture's tests trust
    yield server
    server.stop()


@pytest.fixture(scope="module")
def targets(openssl_tsa, certomancer_tsa, https_tsa, tmp_path_factory):
    """Every rfc3161 target the tests use, by name: target id -> settings."""
    o = openssl_tsa
    bundle = str(o.pki.path("bundle.pem"))
    secrets_dir = tmp_path_factory.mktemp("secrets")
    (secrets_dir / "password").write_text(BASIC_PASSWORD + "\n")
    (secrets_dir / "wrong-token").write_text("not-the-token\n")

    def t(path: str, **kw) -> Rfc3161Target:
        kw.setdefault("trust_bundle", bundle)
        return Rfc3161Target(url=o.url(path), **kw)

    table = {
        "openssl": t("/tsa"),
        "certless": t("/certless", trust_bundle=str(o.pki.path("bundle-full.pem"))),
        "certomancer": Rfc3161Target(
            url=certomancer_tsa.url(), trust_bundle=str(certomancer_tsa.bundle)
        ),
        "sha512-policy": t("/tsa", hash="sha512", policy_oid=pki.OTHER_POLICIES[0]),
        "bearer": t("/auth", auth={"type": "bearer", "token_env": "VMSH_TEST_TSA_TOKEN"}),
        "basic": t(
            "/auth",
            auth={
                "type": "basic",
                "username": BASIC_USER,
                "password_file": str(secrets_dir / "password"),
            },
        ),
        "https": Rfc3161Target(
            url=https_tsa.url("/tsa"),
            trust_bundle=str(https_tsa.pki.path("bundle.pem")),
            ca_bundle=str(https_tsa.tls_ca),
        ),
        # failures
        "down": Rfc3161Target(url=f"http://127.0.0.1:{free_port()}/tsa", trust_bundle=bundle),
        # A resolver that hangs instead of failing fast still gives a network error (timeout).
        "dns": Rfc3161Target(
            url="http://tsa.vmsh-test.invalid/tsa", trust_bundle=bundle, timeout=2.0
        ),
        "slow": t("/slow", timeout=0.5),
        "http500": t("/500"),
        "http401": t(
            "/auth", auth={"type": "bearer", "token_file": str(secrets_dir / "wrong-token")}
        ),
        "http403": t("/403"),
        "http404": t("/404"),
        "garbage": t("/garbage"),
        "other-digest": t("/other-digest"),
        "other-nonce": t("/other-nonce"),
        "untrusted": t("/untrusted"),
        "unaccepted-policy": t("/tsa", policy_oid="1.3.6.1.4.1.55555.9.9"),
        "https-no-ca": Rfc3161Target(
            url=https_tsa.url("/tsa"), trust_bundle=str(https_tsa.pki.path("bundle.pem"))
        ),
        "no-trust-bundle": Rfc3161Target(url=o.url("/tsa")),
    }
    return {f"rfc3161:{name}": settings for name, settings in table.items()}


@pytest.fixture(autouse=True)
def bearer_env(monkeypatch):
    monkeypatch.setenv("VMSH_TEST_TSA_TOKEN", BEARER)


# --- the engine, as tests/unit/test_engine.py drives it -----------------------------------------


class Rig:
    """A real Scheduler on the real backend registry; namespaces map to targets."""

    def __init__(self, tmp: Path, targets: dict[str, Rfc3161Target], jobs: dict[str, str]):
        self.tmp = tmp
        self.clock = FakeClock(start=time.time())  # the TSAs stamp real time
        self.bus = EventBus()
        self.events: list = []
        self.bus.subscribe(self.events.append)
        self.targets = targets
        self.backends = Backends(self.settings_for, tmp / "data", self.clock)
        self.receipts = ReceiptStore(tmp / "data" / "receipts")
        self.roots: dict[str, str] = {}
        self.specs = []
        for n, (ns, target) in enumerate(jobs.items()):
            self.roots[ns] = root(n)
            write_batch(tmp / "batches" / safe_name(ns), f"{n:06d}", self.roots[ns])
            self.specs.append(
                JobSpec(JobKey(ns, "fast"), target, 60, tmp / "batches" / safe_name(ns))
            )

    def settings_for(self, target: str):
        return self.targets.get(target)

    def scheduler(self) -> Scheduler:
        return Scheduler(
            jobs=self.specs,
            clock=self.clock,
            bus=self.bus,
            backend_for=self.backends,
            state_store=StateStore(self.tmp / "data" / "state" / "scheduler.json"),
            journal=IntentJournal(self.tmp / "data" / "journal"),
            receipts=self.receipts,
            policy=BackoffPolicy(base=5.0, max_level=7, jitter=0.0, rng=random.Random(1)),
        )

    async def run_once(self) -> None:
        s = self.scheduler()
        await s.run_once()
        await self.backends.close()

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def receipt_paths(self, ns: str) -> list[Path]:
        return sorted((self.tmp / "data" / "receipts" / safe_name(ns)).glob("*.json"))


async def anchor_direct(settings: Rfc3161Target, digest: bytes, clock=None):
    backend = RFC3161Backend("rfc3161:direct", settings, clock or FakeClock(start=time.time()))
    return await backend.anchor(digest, lambda facts: None)


# --- interoperability: the three TSAs -------------------------------------------------------------

TSAS = ["openssl", "certless", "certomancer"]


def test_openssl_reply_certificate_set_is_not_der_sorted(openssl_tsa):
    """The OpenSSL TSA really exercises the DER-sort fix: its SET comes unsorted."""
    from core.anchors.tsp import build_request, new_nonce

    reply = openssl_tsa.reply(build_request(bytes(32), nonce=new_nonce()))
    members = pki.token_certificates(pki.token_of(reply))
    assert len(members) == 3  # TSA, intermediate, root
    assert not pki.der_set_is_sorted(members)


@pytest.mark.parametrize("tsa", TSAS)
async def test_single_job_anchors_and_the_receipt_verifies(
    tsa, targets, tmp_path, openssl_tsa, certomancer_tsa
):
    rig = Rig(tmp_path, targets, {"ns": f"rfc3161:{tsa}"})
    await rig.run_once()
    assert not rig.of(AnchorFailed), [e.message for e in rig.of(AnchorFailed)]
    [path] = rig.receipt_paths("ns")
    receipt = load_receipt(path)
    # a group of one anchors its leaf: the root bound to its namespace and batch id
    leaf = bound_leaf("ns", receipt.batch.id, rig.roots["ns"])
    assert receipt.batch.root == rig.roots["ns"] and receipt.anchored_root == root_text(leaf) and receipt.proof == ()
    att = receipt.attestation
    assert att["scheme"] == "rfc3161" and att["hash"] == "sha256"
    assert set(att) >= {"token", "gen_time", "serial", "policy", "tsa", "nonce", "tsa_cert_sha256"}
    tsa_der = certomancer_tsa.tsa_der if tsa == "certomancer" else openssl_tsa.pki.tsa.der
    assert att["tsa_cert_sha256"] == hashlib.sha256(tsa_der).hexdigest()
    token = base64.b64decode(att["token"])
    if tsa == "certless":
        assert pki.token_certificates(token) == []
    await verify_receipt(receipt, rig.backends)


@pytest.mark.parametrize("tsa", TSAS)
async def test_three_namespaces_on_one_target_make_one_call(tsa, targets, tmp_path, openssl_tsa):
    rig = Rig(
        tmp_path, targets, {"a": f"rfc3161:{tsa}", "b": f"rfc3161:{tsa}", "c": f"rfc3161:{tsa}"}
    )
    before = len(openssl_tsa.requests)
    await rig.run_once()
    [started] = rig.of(AnchorStarted)
    assert len(started.jobs) == 3
    if tsa != "certomancer":
        assert len(openssl_tsa.requests) == before + 1
    receipts = [load_receipt(p) for ns in "abc" for p in rig.receipt_paths(ns)]
    assert len(receipts) == 3
    assert len({r.anchored_root for r in receipts}) == 1
    assert {r.attestation["token"] for r in receipts} == {receipts[0].attestation["token"]}
    for r in receipts:
        assert r.tree_size == 3 and len(r.proof) >= 1
        await verify_receipt(r, rig.backends)


async def test_sha512_imprint_and_a_requested_policy(targets, tmp_path, openssl_tsa):
    rig = Rig(tmp_path, targets, {"ns": "rfc3161:sha512-policy"})
    await rig.run_once()
    [path] = rig.receipt_paths("ns")
    receipt = load_receipt(path)
    assert receipt.attestation["hash"] == "sha512"
    assert receipt.attestation["policy"] == pki.OTHER_POLICIES[0]
    fields = pki.query_fields(openssl_tsa.requests[-1][2])
    assert fields["hash"] == "sha512" and fields["policy"] == pki.OTHER_POLICIES[0]
    assert fields["cert_req"] and fields["nonce"]
    await verify_receipt(receipt, rig.backends)


@pytest.mark.parametrize("name", ["bearer", "basic"])
async def test_credentials_are_sent_and_kept_out_of_receipts_and_logs(
    name, targets, tmp_path, openssl_tsa
):
    rig = Rig(tmp_path, targets, {"ns": f"rfc3161:{name}"})
    await rig.run_once()
    [path] = rig.receipt_paths("ns")
    text = path.read_text()
    assert openssl_tsa.requests[-1][1]["Authorization"] in (f"Bearer {BEARER}", BASIC_HEADER)
    assert openssl_tsa.requests[-1][1]["Content-Type"] == "application/timestamp-query"
    dump = text + repr(rig.events)
    for secret in (BEARER, BASIC_PASSWORD, BASIC_HEADER.split()[1]):
        assert secret not in dump


async def test_credentials_are_read_at_each_call(targets, monkeypatch):
    settings = targets["rfc3161:bearer"]
    backend = RFC3161Backend("rfc3161:bearer", settings, FakeClock(start=time.time()))
    monkeypatch.setenv("VMSH_TEST_TSA_TOKEN", "rotated-away")
    with pytest.raises(AuthError, match="HTTP 401") as refused:
        await backend.anchor(hashlib.sha256(b"rotate").digest(), lambda f: None)
    assert "rotated-away" not in str(refused.value)
    monkeypatch.delenv("VMSH_TEST_TSA_TOKEN")
    with pytest.raises(AuthError, match="environment variable VMSH_TEST_TSA_TOKEN is not set"):
        await backend.anchor(hashlib.sha256(b"rotate").digest(), lambda f: None)
    monkeypatch.setenv("VMSH_TEST_TSA_TOKEN", BEARER)  # the same backend, no rebuild
    att = await backend.anchor(hashlib.sha256(b"rotate").digest(), lambda f: None)
    assert BEARER not in json.dumps(att.data)


async def test_https_with_a_custom_ca_bundle(targets):
    att = await anchor_direct(targets["rfc3161:https"], hashlib.sha256(b"tls").digest())
    assert att.data["scheme"] == "rfc3161"


async def test_replayed_reply_fails_the_nonce_check(openssl_tsa, targets):
    settings = targets["rfc3161:openssl"].model_copy(update={"url": openssl_tsa.url("/replay")})
    digest = hashlib.sha256(f"replay {time.time_ns()}".encode()).digest()
    first = await anchor_direct(settings, digest)
    with pytest.raises(
        ValidationError, match=r"nonce check failed: expected \d+, got " + first.data["nonce"]
    ):
        await anchor_direct(settings, digest)


async def test_gen_time_outside_the_allowed_skew_is_refused(targets):
    clock = FakeClock(start=time.time() + 3600)
    with pytest.raises(ValidationError, match=r"clock skew check failed: .*expected within ±300s"):
        await anchor_direct(targets["rfc3161:openssl"], hashlib.sha256(b"skew").digest(), clock)


async def test_no_trust_bundle_means_no_request(targets, openssl_tsa):
    before = len(openssl_tsa.requests)
    with pytest.raises(ValidationError, match="no trust_bundle configured"):
        await anchor_direct(targets["rfc3161:no-trust-bundle"], bytes(32))
    assert len(openssl_tsa.requests) == before


def test_registry_needs_settings_for_an_rfc3161_target(tmp_path):
    backends = Backends(lambda target: None, tmp_path, FakeClock())
    with pytest.raises(ValidationError, match=r"no settings for rfc3161:tsa"):
        backends("rfc3161:tsa")


# --- failures: right kind, no receipt, the local namespace keeps anchoring ------------------------

FAILURES = [
    ("down", NetworkError, r"cannot connect"),
    ("dns", NetworkError, r"cannot connect|timed out"),
    ("slow", NetworkError, r"timed out after 0.5s"),
    ("http500", NetworkError, r"HTTP 500"),
    ("http401", AuthError, r"HTTP 401"),
    ("http403", AuthError, r"HTTP 403"),
    ("http404", ValidationError, r"HTTP 404 .*expected 200"),
    ("garbage", ValidationError, r"parse check failed: not a DER TimeStampResp.*text/html"),
    (
        "other-digest",
        ValidationError,
        r"imprint check failed: expected sha256:[0-9a-f]{64}, got sha256:",
    ),
    ("other-nonce", ValidationError, r"nonce check failed: expected \d+, got \d+"),
    (
        "untrusted",
        ValidationError,
        r"chain check failed: the signer certificate CN=Untrusted TSA.* does not chain to the trust bundle \(CN=OpenSSL Root CA",
    ),
    ("unaccepted-policy", ValidationError, r"status check failed: expected granted, got rejection"),
    ("https-no-ca", ValidationError, r"TLS certificate check failed"),
]


@pytest.mark.parametrize(("name", "error", "message"), FAILURES, ids=[f[0] for f in FAILURES])
async def test_failure_kind_no_receipt_and_other_namespaces_keep_anchoring(
    name, error, message, targets, tmp_path
):
    rig = Rig(tmp_path, targets, {"bad": f"rfc3161:{name}", "good": "local:dev"})
    started = time.monotonic()
    await rig.run_once()
    assert time.monotonic() - started < 5
    [failed] = rig.of(AnchorFailed)
    assert str(failed.job) == "bad/fast"
    assert failed.kind == str(error.kind), failed.message
    assert re.search(message, failed.message), failed.message
    assert rig.receipt_paths("bad") == []
    assert [str(e.job) for e in rig.of(ReceiptWritten)] == ["good/fast"]
    [good] = rig.receipt_paths("good")
    await verify_receipt(load_receipt(good), rig.backends)
    # The same failure, straight from the backend, is typed (not just classified by text).
    with pytest.raises(error):
        await anchor_direct(targets[f"rfc3161:{name}"], hashlib.sha256(name.encode()).digest())
    for secret in (BEARER, "not-the-token"):
        assert secret not in failed.message


# --- done: a receipt that vmsh-scheduler verify and openssl ts -verify both accept ---------------


async def test_openssl_receipt_passes_vmsh_verify_and_openssl_ts_verify(
    targets, tmp_path, openssl_tsa
):
    rig = Rig(tmp_path, targets, {"ns": "rfc3161:openssl"})
    await rig.run_once()
    [path] = rig.receipt_paths("ns")
    receipt = load_receipt(path)

    out = io.StringIO()
    assert await verify_files([path], out, settings_for=rig.settings_for) == 0, out.getvalue()
    assert out.getvalue().startswith("OK ")

    token_file = tmp_path / "token.der"
    token_file.write_bytes(base64.b64decode(receipt.attestation["token"]))
    digest_hex = receipt.anchored_root.removeprefix("sha256:")
    proc = pki.openssl_ts_verify(digest_hex, token_file, openssl_tsa.pki.path("root.pem"))
    assert proc.returncode == 0 and "Verification: OK" in proc.stdout, proc.stdout + proc.stderr

    # Both refuse what they should: another digest, a doctored field, a foreign trust bundle.
    proc = pki.openssl_ts_verify("00" * 32, token_file, openssl_tsa.pki.path("root.pem"))
    assert proc.returncode != 0
    doctored = json.loads(path.read_text())
    doctored["attestation"]["serial"] = "999999"
    with pytest.raises(ReceiptInvalid, match="serial in the receipt"):
        await verify_receipt(Receipt.from_json(doctored), rig.backends)
    foreign = {
        t: s.model_copy(update={"trust_bundle": openssl_tsa.untrusted_pki.path("bundle.pem")})
        for t, s in targets.items()
    }
    out = io.StringIO()
    assert await verify_files([path], out, settings_for=foreign.get) == 1
    assert "chain check failed" in out.getvalue()


async def test_verify_without_a_trust_bundle_fails_cleanly(targets):
    backend = RFC3161Backend("rfc3161:x", targets["rfc3161:no-trust-bundle"], FakeClock())
    with pytest.raises(VerificationFailed, match="no trust_bundle configured"):
        await backend.verify({"scheme": "rfc3161", "token": ""}, bytes(32))


async def test_concurrent_anchors_on_one_backend(targets):
    """Two groups in flight on one target (a later pass while one is running) are independent."""
    backend = RFC3161Backend(
        "rfc3161:openssl", targets["rfc3161:openssl"], FakeClock(start=time.time())
    )
    digests = [hashlib.sha256(bytes([i])).digest() for i in range(4)]
    atts = await asyncio.gather(*(backend.anchor(d, lambda f: None) for d in digests))
    for att, d in zip(atts, digests, strict=True):
        await backend.verify(att.data, d)
    assert len({a.data["nonce"] for a in atts}) == 4


# --- what a URL may carry never leaves it: only scheme://host[:port] is shown ----------------------

API_KEY = "k3y-in-the-path-do-not-log"


def _with_userinfo(url: str, userinfo: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{userinfo}@{rest}"


@pytest.mark.parametrize(
    "url",
    [
        lambda o: o.url(f"/404/{API_KEY}?apikey={API_KEY}"),  # an HTTP error
        lambda o: f"http://127.0.0.1:{free_port()}/v1/{API_KEY}",  # a transport error
        lambda o: _with_userinfo(o.url(f"/404/{API_KEY}"), f"anchor:{API_KEY}"),
    ],
    ids=["http-404", "refused", "userinfo"],
)
async def test_a_key_in_the_url_reaches_no_message_log_or_state(url, openssl_tsa, tmp_path):
    settings = Rfc3161Target(url=url(openssl_tsa), trust_bundle=str(openssl_tsa.pki.path("bundle.pem")))
    rig = Rig(tmp_path, {"rfc3161:keyed": settings}, {"ns": "rfc3161:keyed"})
    await rig.run_once()
    [failed] = rig.of(AnchorFailed)
    assert f"http://127.0.0.1:{urlsplit_port(settings.url)}" in failed.message
    state = (tmp_path / "data" / "state" / "scheduler.json").read_text()
    backend = RFC3161Backend("rfc3161:keyed", settings, FakeClock(start=time.time()))
    shown = SCHEMES["rfc3161"].describe(settings)  # check-config's detail for the target
    dump = failed.message + repr(rig.events) + state + shown + backend.url
    assert API_KEY not in dump
    assert backend.url == f"http://127.0.0.1:{urlsplit_port(settings.url)}" and shown == "127.0.0.1"


def urlsplit_port(url: str) -> int | None:
    from urllib.parse import urlsplit

    return urlsplit(url).port


async def test_a_user_password_in_the_url_is_sent_as_basic_auth(openssl_tsa):
    settings = Rfc3161Target(
        url=_with_userinfo(openssl_tsa.url("/auth"), f"{BASIC_USER}:{BASIC_PASSWORD}"),
        trust_bundle=str(openssl_tsa.pki.path("bundle.pem")),
    )
    att = await anchor_direct(settings, hashlib.sha256(b"userinfo").digest())
    assert openssl_tsa.requests[-1][1]["Authorization"] == BASIC_HEADER
    assert BASIC_PASSWORD not in json.dumps(att.data)


@pytest.mark.parametrize(
    ("userinfo", "auth", "said"),
    [
        (None, None, "no credentials sent (no auth configured, no user:password in the url)"),
        ("anchor:wrong-password", None, "sent basic auth from the url's user:password"),
        (
            "anchor:wrong-password",
            {"type": "bearer", "token_env": "VMSH_TEST_TSA_WRONG"},
            "sent a bearer token (auth.type bearer, token from env VMSH_TEST_TSA_WRONG); "
            "the url's user:password is not used",
        ),
    ],
    ids=["nothing", "userinfo", "configured-and-userinfo"],
)
async def test_a_401_says_what_was_sent(userinfo, auth, said, openssl_tsa, monkeypatch):
    monkeypatch.setenv("VMSH_TEST_TSA_WRONG", "not-the-token")
    url = openssl_tsa.url("/auth")
    settings = Rfc3161Target(
        url=_with_userinfo(url, userinfo) if userinfo else url,
        trust_bundle=str(openssl_tsa.pki.path("bundle.pem")),
        auth=auth,
    )
    with pytest.raises(AuthError) as refused:
        await anchor_direct(settings, hashlib.sha256(b"401").digest())
    origin = url.removesuffix("/auth")
    assert str(refused.value) == f"rfc3161:direct: HTTP 401 Unauthorized from {origin}: {said}"
    assert "wrong-password" not in str(refused.value) and "not-the-token" not in str(refused.value)


# --- policies: a cadence's policyOID reaches the TSA, and only jobs sharing one aggregate --------

POLICY_A, POLICY_B = pki.OTHER_POLICIES  # both served by the OpenSSL TSA (`other_policies`)


def policy_config(tmp: Path, openssl_tsa, path: str = "/tsa"):
    """A config file as a user writes it: two namespaces, cadences under two policies, one TSA
    target without a policy of its own."""
    from core.config import load_config

    for ns in ("a", "b"):
        write_batch(tmp / "batches" / ns, "000001", root(ord(ns)))
    (tmp / "config.yaml").write_text(
        f"""\
targets:
  rfc3161:
    tsa: {{url: "{openssl_tsa.url(path)}", trustBundle: "{openssl_tsa.pki.path('bundle.pem')}"}}
namespaces:
  a:
    source: batches/a
    cadence:
      fast: {{target: "rfc3161:tsa", every: "60s", policyOID: "{POLICY_A}"}}
      cold: {{target: "rfc3161:tsa", every: "1d", policyOID: "{POLICY_B}"}}
  b:
    source: batches/b
    cadence:
      fast: {{target: "rfc3161:tsa", every: "60s", policyOID: "{POLICY_A}"}}
"""
    )
    config = load_config(tmp / "config.yaml", env={}, cwd=tmp).config
    target = config.resolve_target("rfc3161:tsa")
    assert isinstance(target, Rfc3161Target)
    rig = Rig(tmp, {"rfc3161:tsa": target}, {})
    rig.specs = config.jobs()
    return rig


async def test_two_policies_on_one_target_send_two_requests_with_those_policies(
    tmp_path, openssl_tsa
):
    rig = policy_config(tmp_path, openssl_tsa)
    since = len(openssl_tsa.requests)
    await rig.run_once()
    assert not rig.of(AnchorFailed), [e.message for e in rig.of(AnchorFailed)]

    # What the TSA received, parsed from the DER queries: one request per policy.
    assert sorted(openssl_tsa.requested_policies(since)) == [POLICY_A, POLICY_B]
    calls = sorted((sorted(map(str, e.jobs)) for e in rig.of(AnchorStarted)), key=len)
    assert calls == [["a/cold"], ["a/fast", "b/fast"]]  # aggregated only within a policy

    receipts = {
        f"{r.namespace}/{r.cadence}": r
        for r in map(load_receipt, rig.receipt_paths("a") + rig.receipt_paths("b"))
    }
    assert {k: (r.policy, r.attestation["policy"], r.tree_size) for k, r in receipts.items()} == {
        "a/fast": (POLICY_A, POLICY_A, 2),
        "b/fast": (POLICY_A, POLICY_A, 2),
        "a/cold": (POLICY_B, POLICY_B, 1),
    }
    for receipt in receipts.values():
        await verify_receipt(receipt, rig.backends)

    # An auditor, with the receipts and the CA file only, gets OK; a receipt whose policy
    # was changed is FAIL: verify checks the receipt's policy against the token.
    paths = rig.receipt_paths("a") + rig.receipt_paths("b")
    out = io.StringIO()
    verifiers = ReadOnlyVerifiers(trust_bundles=[openssl_tsa.pki.path("root.pem")])
    assert await verify_files(paths, out, verifiers=verifiers) == 0, out.getvalue()
    cold = next(p for p in paths if load_receipt(p).cadence == "cold")
    assert "policy: OK" in run_explained(cold, verifiers, tmp_path).stdout
    doctored = dataclasses.replace(load_receipt(cold), policy=POLICY_A)
    cold.write_text(json.dumps(doctored.to_json()))
    out = io.StringIO()
    assert await verify_files([cold], out, verifiers=verifiers) == 1
    assert f"policy check failed: expected {POLICY_A}, got {POLICY_B}" in out.getvalue()
    # ... and so do the stock-tool commands of `verify --explain`
    done = run_explained(cold, verifiers, tmp_path)
    assert done.returncode != 0 and "policy: FAIL" in done.stdout, done.stdout + done.stderr


def run_explained(receipt_path: Path, verifiers, cwd: Path):
    """`verify --explain`'s script for one receipt, run with sh (openssl, python3)."""
    import subprocess

    from core.explain import explain_files

    out = io.StringIO()
    assert explain_files([receipt_path], out, verifiers) == 0
    return subprocess.run(["sh", "-c", out.getvalue()], cwd=cwd, capture_output=True, text=True, timeout=60)


async def test_a_tsa_answering_under_another_policy_is_refused(tmp_path, openssl_tsa):
    rig = policy_config(tmp_path, openssl_tsa, "/other-policy")
    since = len(openssl_tsa.requests)
    await rig.run_once()
    assert sorted(openssl_tsa.requested_policies(since)) == [POLICY_A, POLICY_B]
    failed = rig.of(AnchorFailed)
    assert {str(e.job) for e in failed} == {"a/fast", "b/fast", "a/cold"}
    assert all(e.kind == "validation" for e in failed)
    assert any(f"policy check failed: expected {POLICY_A}, got" in e.message for e in failed)
    assert rig.receipt_paths("a") == rig.receipt_paths("b") == []


async def test_the_cadence_policy_overrides_the_target_policy(targets, openssl_tsa):
    backend = RFC3161Backend("rfc3161:x", targets["rfc3161:sha512-policy"], FakeClock(start=time.time()))
    since = len(openssl_tsa.requests)
    digest = hashlib.sha256(b"override").digest()
    att = await backend.anchor(digest, lambda facts: None, policy=POLICY_B)
    assert openssl_tsa.requested_policies(since) == [POLICY_B] and att.data["policy"] == POLICY_B
    await backend.verify(att.data, digest, policy=POLICY_B)
    with pytest.raises(VerificationFailed, match=f"policy check failed: expected {POLICY_A}"):
        await backend.verify(att.data, digest, policy=POLICY_A)
    await backend.anchor(digest, lambda facts: None)  # none given: the target's own
    assert openssl_tsa.requested_policies(since)[1:] == [targets["rfc3161:sha512-policy"].policy_oid]
