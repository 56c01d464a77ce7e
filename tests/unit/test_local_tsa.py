"""The embedded development TSA `local:<name>`: real tokens, checked by us and by OpenSSL."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from core.anchors import tsp
from core.anchors.base import Attestation, VerificationFailed
from core.anchors.local import backend as local_mod
from core.anchors.local.backend import LOCAL_POLICY_OID, SUBJECT_CN, LocalTSA, key_label
from core.anchors.schemes import SCHEMES
from core.clock import FakeClock, iso_utc
from core.errors import ValidationError

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

ROOT = hashlib.sha256(b"batch root").digest()


def noop_note(_facts: dict) -> None:
    return None


def openssl_verify(
    tmp_path: Path, token_b64: str, digest: bytes, ca: Path
) -> subprocess.CompletedProcess:
    token = tmp_path / "token.der"
    token.write_bytes(base64.b64decode(token_b64))
    return subprocess.run(
        ["openssl", "ts", "-verify", "-digest", digest.hex(), "-in", str(token), "-token_in"]
        + ["-CAfile", str(ca)],
        capture_output=True,
        text=True,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_767_225_600.25)


@pytest.fixture
def tsa(tmp_path: Path, clock: FakeClock) -> LocalTSA:
    return LocalTSA(tmp_path / "data", "dev", clock)


async def test_anchor_confirmed_and_verifies(tsa: LocalTSA, clock: FakeClock) -> None:
    att = await tsa.anchor(ROOT, noop_note)
    assert isinstance(att, Attestation)
    assert att.status == "confirmed" and att.confirmations == 0
    data = att.data
    assert data["scheme"] == "rfc3161" and data["development"] is True
    assert data["gen_time"] == iso_utc(clock.now())  # 2026-01-01T00:00:00.250Z
    assert data["policy"] == LOCAL_POLICY_OID and data["hash"] == "sha256"
    label = key_label(tsa.certificate.public_key())  # type: ignore[arg-type]
    assert data["tsa"] == f"OU={label},CN=" + SUBJECT_CN.replace(",", "\\,")
    assert int(data["nonce"]) > 0 and int(data["serial"]) >= 1
    cert_der = tsa.certificate.public_bytes(serialization.Encoding.DER)
    assert data["tsa_cert_sha256"] == hashlib.sha256(cert_der).hexdigest()
    await tsa.verify(data, ROOT)
    assert tsa.target == "local:dev"
    assert SCHEMES["local"].development  # the runtime warns at start that it proves nothing
    assert await tsa.recover(ROOT, {}) is None
    await tsa.close()


@needs_openssl
async def test_openssl_ts_verify_accepts_the_token(tsa: LocalTSA, tmp_path: Path) -> None:
    att = await tsa.anchor(ROOT, noop_note)
    done = openssl_verify(tmp_path, att.data["token"], ROOT, tsa.cert_path)
    assert done.returncode == 0 and "Verification: OK" in done.stdout, done.stdout + done.stderr
    assert tsa.cert_path == tmp_path / "data" / "tsa" / "local-tsa.pem"
    # and OpenSSL says no for another digest
    other = hashlib.sha256(b"other").digest()
    assert openssl_verify(tmp_path, att.data["token"], other, tsa.cert_path).returncode != 0


@needs_openssl
async def test_openssl_reads_real_clock_tokens(tmp_path: Path) -> None:
    """With a real clock too (whole-second and fractional genTime both in DER form)."""
    from core.clock import SystemClock

    tsa = LocalTSA(tmp_path / "d", "sys", SystemClock())
    for _ in range(3):
        att = await tsa.anchor(ROOT, noop_note)
        assert openssl_verify(tmp_path, att.data["token"], ROOT, tsa.cert_path).returncode == 0


async def test_other_digest_fails_with_reason(tsa: LocalTSA) -> None:
    att = await tsa.anchor(ROOT, noop_note)
    other = hashlib.sha256(b"other").digest()
    with pytest.raises(VerificationFailed, match="imprint check failed") as err:
        await tsa.verify(att.data, other)
    assert other.hex() in str(err.value) and "local:dev" in str(err.value)


async def test_tampered_token_fails(tsa: LocalTSA) -> None:
    att = await tsa.anchor(ROOT, noop_note)
    raw = bytearray(base64.b64decode(att.data["token"]))
    # Flip one byte inside the TSTInfo's serial/genTime region: the messageDigest breaks.
    at = raw.find(b"\x18")  # the GeneralizedTime tag inside the TSTInfo
    raw[at + 5] ^= 0x01
    data = dict(att.data, token=base64.b64encode(bytes(raw)).decode())
    with pytest.raises(VerificationFailed, match="signature check failed"):
        await tsa.verify(data, ROOT)
    # a changed receipt field is caught too
    with pytest.raises(VerificationFailed, match="attestation check failed: gen_time"):
        await tsa.verify(dict(att.data, gen_time="2020-01-01T00:00:00Z"), ROOT)
    with pytest.raises(VerificationFailed, match="nonce check failed"):
        await tsa.verify(dict(att.data, nonce=str(int(att.data["nonce"]) + 1)), ROOT)
    with pytest.raises(VerificationFailed, match="token is missing or not base64"):
        await tsa.verify(dict(att.data, token="%%%"), ROOT)


async def test_key_file_mode_and_layout(tsa: LocalTSA, tmp_path: Path) -> None:
    await tsa.anchor(ROOT, noop_note)
    key = tmp_path / "data" / "tsa" / "local-tsa.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert b"PRIVATE KEY" in key.read_bytes()
    cert = x509.load_pem_x509_certificate(tsa.cert_path.read_bytes())
    label = key_label(cert.public_key())  # type: ignore[arg-type]
    assert cert.subject.rfc4514_string() == f"OU={label},CN=" + SUBJECT_CN.replace(",", "\\,")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]
    leftovers = [p.name for p in key.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


async def test_key_reused_across_instances_and_names(tmp_path: Path, clock: FakeClock) -> None:
    first = LocalTSA(tmp_path, "a", clock)
    att = await first.anchor(ROOT, noop_note)
    key_bytes = (tmp_path / "tsa" / "local-tsa.key").read_bytes()
    second = LocalTSA(tmp_path, "b", clock)  # another name, same data dir: same pair
    assert second.certificate == first.certificate
    await second.verify(att.data, ROOT)
    assert (tmp_path / "tsa" / "local-tsa.key").read_bytes() == key_bytes


async def test_serials_increase_across_restarts(tmp_path: Path, clock: FakeClock) -> None:
    serials = []
    for _restart in range(3):
        tsa = LocalTSA(tmp_path, "dev", clock)
        for _ in range(3):
            serials.append(int((await tsa.anchor(ROOT, noop_note)).data["serial"]))
            clock.advance(1)
    assert serials == sorted(serials) and len(set(serials)) == len(serials)
    # Two live instances on one data dir never hand out the same serial.
    a, b = LocalTSA(tmp_path, "a", clock), LocalTSA(tmp_path, "b", clock)
    more = [int((await t.anchor(ROOT, noop_note)).data["serial"]) for t in (a, b, a, b)]
    assert len(set(more + serials)) == len(more) + len(serials)
    assert min(more) > max(serials)


async def test_serial_block_exhaustion(tmp_path: Path, clock: FakeClock, monkeypatch) -> None:
    monkeypatch.setattr(local_mod, "SERIAL_BLOCK", 2)
    tsa = LocalTSA(tmp_path, "dev", clock)
    serials = [int((await tsa.anchor(ROOT, noop_note)).data["serial"]) for _ in range(5)]
    assert serials == [1, 2, 3, 4, 5]
    assert (tmp_path / "tsa" / "serial").read_text().strip() == "6"


async def test_first_anchors_write_their_files_off_the_loop(tmp_path: Path, clock: FakeClock, monkeypatch) -> None:
    """The first call of a data dir makes a key and writes three fsync'd files (0.1-0.2 s on
    a loaded disk): the engine's loop must not wait for the disk meanwhile (issue 24,
    /livez). Concurrent first calls still share one key and never share a serial."""
    monkeypatch.setattr(local_mod, "SERIAL_BLOCK", 3)
    synced_on: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced_on.append(threading.get_ident())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    tsa = LocalTSA(tmp_path, "dev", clock)
    atts = await asyncio.gather(*(tsa.anchor(ROOT, noop_note) for _ in range(10)))
    assert synced_on, "the key, certificate and serial files are fsync'd"
    assert threading.get_ident() not in synced_on
    serials = [int(att.data["serial"]) for att in atts]
    assert len(set(serials)) == 10
    assert len({att.data["tsa_cert_sha256"] for att in atts}) == 1  # one key, one certificate
    for att in atts:
        assert await tsa.verify(att.data, ROOT) is not None
    assert max(serials) < int((tmp_path / "tsa" / "serial").read_text())


async def test_gen_time_follows_the_injected_clock(tsa: LocalTSA, clock: FakeClock) -> None:
    clock.set(1_800_000_000.0)
    att = await tsa.anchor(ROOT, noop_note)
    assert att.data["gen_time"] == "2027-01-15T08:00:00Z"


async def test_a_token_from_before_its_certificate_is_refused_after_a_good_one(tsa: LocalTSA, clock: FakeClock) -> None:
    """The path to the trust root is checked at each token's gen_time: the path found for
    one token serves the next only while its certificates are valid then."""
    await tsa.anchor(ROOT, noop_note)
    clock.set(946_684_800.0 - 86_400)  # 1999-12-31, the certificate's notBefore a day later
    with pytest.raises(ValidationError, match=r"chain check failed: .* was not valid at gen_time 1999-12-31"):
        await tsa.anchor(ROOT, noop_note)
    clock.set(1_767_225_600.25)
    assert (await tsa.anchor(ROOT, noop_note)).data["gen_time"] == "2026-01-01T00:00:00.250Z"


async def test_unusable_key_clock_mismatch_is_a_validation_error(tmp_path: Path) -> None:
    """The local path runs the real verifier: a genTime far from `now` is refused."""

    class Jumpy(FakeClock):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def now(self) -> float:
            self.calls += 1
            return super().now() + (0 if self.calls % 2 else 3600)

    tsa = LocalTSA(tmp_path, "dev", Jumpy())
    with pytest.raises(ValidationError, match="clock skew check failed"):
        await tsa.anchor(ROOT, noop_note)


async def test_cert_regenerated_if_missing(tsa: LocalTSA, tmp_path: Path, clock: FakeClock) -> None:
    att = await tsa.anchor(ROOT, noop_note)
    tsa.cert_path.unlink()
    fresh = LocalTSA(tmp_path / "data", "dev", clock)
    new_cert = fresh.certificate  # a new certificate for the same key
    assert new_cert.public_key() == tsa.certificate.public_key()
    att2 = await fresh.anchor(ROOT, noop_note)
    await fresh.verify(att2.data, ROOT)
    # the old token names the old certificate (ESS) and embeds it: no longer trusted
    with pytest.raises(VerificationFailed):
        await fresh.verify(att.data, ROOT)


async def test_non_critical_eku_is_refused_by_the_verifier(tsa: LocalTSA) -> None:
    """A signer certificate whose timeStamping EKU is not critical fails the EKU check."""
    good = tsa.certificate  # creates the key
    key = serialization.load_pem_private_key(tsa.key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    weak = (
        x509.CertificateBuilder()
        .subject_name(good.subject)
        .issuer_name(good.issuer)
        .public_key(good.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(good.not_valid_before_utc)
        .not_valid_after(good.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=False)
        .sign(key, hashes.SHA256())
    )
    tsa.cert_path.write_bytes(weak.public_bytes(serialization.Encoding.PEM))
    weak_tsa = LocalTSA(tsa.key_path.parent.parent, "weak", FakeClock(1_767_225_600.0))
    with pytest.raises(ValidationError, match="EKU check failed: .* not critical"):
        await weak_tsa.anchor(ROOT, noop_note)


def test_rejects_bad_requests(tsa: LocalTSA) -> None:
    with pytest.raises(ValidationError, match="status check failed.*bad_data_format"):
        tsp.verify_response(
            tsa.respond(b"junk"), digest=ROOT, nonce=1, trust_roots=[tsa.certificate]
        )
    req = tsp.build_request(ROOT, nonce=3, policy_oid="1.2.3")
    with pytest.raises(ValidationError, match="unaccepted_policy"):
        tsp.verify_response(tsa.respond(req), digest=ROOT, nonce=3, trust_roots=[tsa.certificate])


def test_without_cert_req_the_trust_root_supplies_the_signer(tsa: LocalTSA) -> None:
    req = tsp.build_request(ROOT, nonce=9, cert_req=False)
    info = tsp.verify_response(
        tsa.respond(req),
        digest=ROOT,
        nonce=9,
        trust_roots=[tsa.certificate],
        policy_oid=LOCAL_POLICY_OID,
    )
    assert info.serial >= 1


async def test_anchor_latency(tsa: LocalTSA) -> None:
    await tsa.anchor(ROOT, noop_note)  # key generation, first serial block
    n = 50
    start = time.perf_counter()
    for _ in range(n):
        await tsa.anchor(ROOT, noop_note)
    per_anchor = (time.perf_counter() - start) / n
    print(f"local anchor(): {per_anchor * 1000:.2f} ms")
    assert per_anchor < 0.05  # in-process signing + full verification stays in-loop


def test_key_written_atomically_without_clobbering(tmp_path: Path) -> None:
    path = tmp_path / "k"
    assert local_mod._write_atomic(path, b"one", 0o600, clobber=False)
    assert not local_mod._write_atomic(path, b"two", 0o600, clobber=False)
    assert path.read_bytes() == b"one" and stat.S_IMODE(os.stat(path).st_mode) == 0o600


# --- policies: the TSA honours a requested policy it serves and refuses any other -----------------

SERVED = "1.3.6.1.4.1.55555.3161.7"


def token_policy(att: Attestation) -> str:
    """The policy in the signed TSTInfo of an attestation's token."""
    from asn1crypto import cms
    from asn1crypto import tsp as asn1tsp

    info = cms.ContentInfo.load(base64.b64decode(att.data["token"]))["content"]["encap_content_info"]
    return asn1tsp.TSTInfo.load(info["content"].contents)["policy"].dotted


def local_backend_from_config(tmp_path: Path, clock: FakeClock):
    """`targets.local.dev.policies` as a user writes it, through the backend registry."""
    from core.anchors.registry import Backends
    from core.config import load_config

    (tmp_path / "config.yaml").write_text(
        "targets:\n"
        f"  local:\n    dev: {{policies: [\"{SERVED}\"]}}\n"
        "namespaces:\n"
        f"  a:\n    cadence:\n      fast: {{target: \"local:dev\", every: \"60s\", policyOID: \"{SERVED}\"}}\n"
    )
    config = load_config(tmp_path / "config.yaml", env={}, cwd=tmp_path).config
    [job] = config.jobs()
    return Backends(config.resolve_target, tmp_path / "data", clock)("local:dev"), job


@needs_openssl
async def test_local_tsa_issues_under_a_requested_policy_it_serves(
    tmp_path: Path, clock: FakeClock
) -> None:
    tsa, job = local_backend_from_config(tmp_path, clock)
    assert job.policy_oid == SERVED
    att = await tsa.anchor(ROOT, noop_note, policy=job.policy_oid)
    assert token_policy(att) == att.data["policy"] == SERVED
    await tsa.verify(att.data, ROOT, policy=SERVED)
    with pytest.raises(VerificationFailed, match=f"policy check failed: expected {LOCAL_POLICY_OID}"):
        await tsa.verify(att.data, ROOT)  # a receipt without a policy: the TSA's own
    proc = openssl_verify(tmp_path, att.data["token"], ROOT, tsa.cert_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    default = await tsa.anchor(ROOT, noop_note)  # nothing requested: the TSA's own policy
    assert token_policy(default) == LOCAL_POLICY_OID


async def test_local_tsa_refuses_a_policy_it_does_not_serve(tsa: LocalTSA) -> None:
    unserved = "1.3.6.1.4.1.55555.3161.8"
    with pytest.raises(ValidationError) as refused:
        await tsa.anchor(ROOT, noop_note, policy=unserved)
    text = str(refused.value)
    assert "status check failed: expected granted, got rejection" in text
    assert f"local:dev does not serve policy {unserved}; it serves {LOCAL_POLICY_OID}" in text
    assert "targets.local.dev.policies" in text and "unaccepted_policy" in text
    reply = tsa.respond(tsp.build_request(ROOT, nonce=tsp.new_nonce(), policy_oid=unserved))
    status = tsp._TimeStampResp.load(reply)["status"]
    assert status["status"].native == "rejection"
    assert status["fail_info"].native == {"unaccepted_policy"}


async def test_a_recovered_anchor_keeps_the_policy_it_was_requested_under(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The journal records the policy of each call: a receipt written at restart states the
    policy the token was requested under, even when a reload changed the job's since."""
    import dataclasses

    from core.engine import Scheduler
    from core.events import EventBus, ReceiptWritten
    from core.jobs import JobKey, JobSpec
    from core.receipts import bound_leaf, load_receipt, verify_receipt
    from core.sources import write_batch
    from core.store.files.journal import IntentJournal
    from core.store.files.receipts import ReceiptStore
    from core.store.files.state import StateStore

    tsa = LocalTSA(tmp_path / "data", "dev", clock, policies=[SERVED])
    seen_in_journal: list[list[dict]] = []
    journal = IntentJournal(tmp_path / "data" / "journal")

    class Journalled:  # the real TSA; notes what the journal holds while the call is out
        target = tsa.target

        async def anchor(self, digest, note, *, policy=None):
            seen_in_journal.append([e for i in journal.pending() for e in i.entries])
            return await tsa.anchor(digest, note, policy=policy)

        async def recover(self, digest, notes):
            return None

        async def verify(self, attestation, digest, *, required=None, policy=None):
            await tsa.verify(attestation, digest, policy=policy)

        async def close(self):
            return None

    write_batch(tmp_path / "batches", "000001", "sha256:" + ROOT.hex())
    spec = JobSpec(JobKey("a", "cold"), "local:dev", 60, tmp_path / "batches", policy_oid=SERVED)

    def scheduler(specs):
        bus = EventBus()
        events: list = []
        bus.subscribe(events.append)
        s = Scheduler(
            jobs=specs, clock=clock, bus=bus, backend_for=lambda t: Journalled(),
            state_store=StateStore(tmp_path / "data" / "state.json"), journal=journal,
            receipts=ReceiptStore(tmp_path / "data" / "receipts"),
        )
        return s, events

    s, events = scheduler([spec])
    await s.run_once()
    assert [e["policy"] for e in seen_in_journal[0]] == [SERVED]
    [written] = [e for e in events if isinstance(e, ReceiptWritten)]
    assert load_receipt(written.path).policy == SERVED

    # A crash after the answer for a new batch, then a restart whose config no longer
    # names a policy.
    later = hashlib.sha256(b"a later batch root").digest()
    write_batch(tmp_path / "batches", "000002", "sha256:" + later.hex())
    entries = [{**seen_in_journal[0][0], "batch": {"id": "000002", "root": "sha256:" + later.hex()}}]
    leaf = bound_leaf("a", "000002", later)  # what the engine anchors for a group of one
    attestation = await tsa.anchor(leaf, noop_note, policy=SERVED)
    intent = journal.open("local:dev", entries, leaf.hex(), clock.now())
    intent.attested(attestation.data, attestation.status, attestation.confirmations)
    s, events = scheduler([dataclasses.replace(spec, policy_oid=None)])
    await s.recover()
    [written] = [e for e in events if isinstance(e, ReceiptWritten)]
    receipt = load_receipt(written.path)
    assert receipt.batch.id == "000002" and receipt.policy == SERVED
    await verify_receipt(receipt, lambda t: Journalled())
