"""core/anchors/tsp.py against real OpenSSL TSA replies (`openssl ts -reply`).

The PKI/TSA helpers at the top are small on purpose: they are meant to move to a shared
tests/pki.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms
from asn1crypto import core as asn1core
from asn1crypto import tsp as asn1tsp
from asn1crypto import x509 as asn1x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.anchors import tsp
from core.errors import ErrorKind, ValidationError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

DIGEST = hashlib.sha256(b"vaultmesh batch root").digest()
POLICY = "1.2.3.4.1"
OTHER_POLICY = "1.2.3.4.5"


# --- reusable helpers: a test PKI and an OpenSSL TSA ---------------------------------------


def make_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    *,
    ca: bool,
    eku_critical: bool = True,
) -> x509.Certificate:
    """A CA certificate, or (ca=False) a TSA certificate with a timeStamping EKU."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=365 * 40))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if ca:
        ku = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(ku, critical=True)
    else:
        ku = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
        builder = builder.add_extension(ku, critical=True).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=eku_critical
        )
    if issuer is not None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]  # an EC key
        builder = builder.add_extension(aki, critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Pki:
    root: x509.Certificate
    intermediate: x509.Certificate
    tsa: x509.Certificate
    tsa_key: ec.EllipticCurvePrivateKey


def make_pki(prefix: str = "Test", *, eku_critical: bool = True) -> Pki:
    """Root CA -> intermediate CA -> TSA certificate (critical timeStamping EKU)."""
    rk, ik, tk = make_key(), make_key(), make_key()
    root = make_cert(f"{prefix} Root CA", rk, ca=True)
    inter = make_cert(f"{prefix} Intermediate CA", ik, root, rk, ca=True)
    tsa_cert = make_cert(f"{prefix} TSA", tk, inter, ik, ca=False, eku_critical=eku_critical)
    return Pki(root, inter, tsa_cert, tk)


def write_openssl_tsa(directory: Path, pki: Pki, *, chain: bool = True) -> Path:
    """An `openssl ts -reply` configuration; chain=True adds a `certs =` line (intermediate
    and root), which makes OpenSSL emit a certificate SET that is not DER-sorted."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tsa.pem").write_bytes(pem(pki.tsa))
    (directory / "tsa.key").write_bytes(key_pem(pki.tsa_key))
    (directory / "chain.pem").write_bytes(pem(pki.intermediate) + pem(pki.root))
    (directory / "serial").write_text("01\n")
    certs_line = "certs = $dir/chain.pem\n" if chain else ""
    config = directory / "tsa.cnf"
    config.write_text(
        "[ tsa ]\n"
        "default_tsa = tsa_config1\n"
        "[ tsa_config1 ]\n"
        f"dir = {directory}\n"
        "serial = $dir/serial\n"
        "crypto_device = builtin\n"
        "signer_cert = $dir/tsa.pem\n"
        f"{certs_line}"
        "signer_key = $dir/tsa.key\n"
        "signer_digest = sha256\n"
        f"default_policy = {POLICY}\n"
        f"other_policies = {OTHER_POLICY}\n"
        "digests = sha256, sha384, sha512\n"
        "accuracy = secs:1\n"
        "ordering = yes\n"
        "tsa_name = yes\n"
        "ess_cert_id_chain = no\n"
        "ess_cert_id_alg = sha256\n"
    )
    return config


def openssl_reply(config: Path, query: bytes) -> bytes:
    """Run `openssl ts -reply` on a DER TimeStampReq and return the DER TimeStampResp."""
    qfile = config.parent / "query.tsq"
    rfile = config.parent / "reply.tsr"
    qfile.write_bytes(query)
    subprocess.run(
        ["openssl", "ts", "-reply", "-config", str(config), "-queryfile", str(qfile)]
        + ["-out", str(rfile)],
        check=True,
        capture_output=True,
    )
    return rfile.read_bytes()


def openssl_query(directory: Path, digest: bytes, *, cert: bool, policy: str) -> bytes:
    """A TimeStampReq made by `openssl ts -query` (OpenSSL 3 spells the policy -tspolicy)."""
    out = directory / "openssl-query.tsq"
    args = ["openssl", "ts", "-query", "-digest", digest.hex(), "-sha256"]
    args += ["-tspolicy", policy, "-out", str(out)] + (["-cert"] if cert else [])
    subprocess.run(args, check=True, capture_output=True)
    return out.read_bytes()


def openssl_verify_token(directory: Path, token: bytes, digest: bytes, ca: bytes) -> None:
    (directory / "token.der").write_bytes(token)
    (directory / "ca.pem").write_bytes(ca)
    done = subprocess.run(
        ["openssl", "ts", "-verify", "-digest", digest.hex(), "-in", str(directory / "token.der")]
        + ["-token_in", "-CAfile", str(directory / "ca.pem")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "Verification: OK" in done.stdout, done.stdout + done.stderr


def nonce_of(reply: bytes) -> int:
    token = asn1tsp.TimeStampResp.load(reply)["time_stamp_token"]
    return asn1tsp.TSTInfo.load(token["content"]["encap_content_info"]["content"].contents)[
        "nonce"
    ].native


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def chain_reply(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    """A reply from an OpenSSL TSA whose config has a `certs =` chain line."""
    directory = tmp_path_factory.mktemp("tsa-chain")
    config = write_openssl_tsa(directory, pki, chain=True)
    nonce = tsp.new_nonce()
    query = tsp.build_request(DIGEST, nonce=nonce, policy_oid=POLICY, cert_req=True)
    return openssl_reply(config, query), nonce


def check(reply: bytes, pki: Pki, **overrides) -> tsp.TokenInfo:
    args: dict[str, Any] = dict(
        digest=DIGEST,
        policy_oid=POLICY,
        trust_roots=[pki.root],
        now=time.time(),
        max_clock_skew=300.0,
    )
    args.update(overrides)
    if "nonce" not in args:
        args["nonce"] = nonce_of(reply)
    return tsp.verify_response(reply, **args)


# --- build_request ------------------------------------------------------------------------


def test_build_request_imprint_is_the_digest_itself_for_sha256() -> None:
    req = asn1tsp.TimeStampReq.load(tsp.build_request(DIGEST, nonce=42, policy_oid=POLICY))
    assert req["message_imprint"]["hash_algorithm"]["algorithm"].native == "sha256"
    assert req["message_imprint"]["hashed_message"].native == DIGEST
    assert req["nonce"].native == 42
    assert req["req_policy"].dotted == POLICY
    assert req["cert_req"].native is True


def test_build_request_sha512_hashes_the_32_byte_value() -> None:
    req = asn1tsp.TimeStampReq.load(tsp.build_request(DIGEST, hash_name="sha512", nonce=1))
    assert req["message_imprint"]["hashed_message"].native == hashlib.sha512(DIGEST).digest()
    assert req["req_policy"].native is None


def test_build_request_parses_with_openssl(tmp_path: Path) -> None:
    path = tmp_path / "q.tsq"
    path.write_bytes(tsp.build_request(DIGEST, nonce=7, policy_oid=POLICY))
    out = subprocess.run(
        ["openssl", "ts", "-query", "-in", str(path), "-text"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "Nonce: 0x07" in out.stdout and "Certificate required: yes" in out.stdout


# --- real OpenSSL TSA replies ----------------------------------------------------------------


def test_openssl_reply_with_unsorted_chain_is_rejected_by_rfc3161_client_as_is(
    chain_reply: tuple[bytes, int],
) -> None:
    """The interop problem this module works around (openssl issue 13142)."""
    from rfc3161_client import decode_timestamp_response

    with pytest.raises(ValueError, match="InvalidSetOrdering"):
        decode_timestamp_response(chain_reply[0])


def test_openssl_reply_with_chain_verifies(
    pki: Pki, chain_reply: tuple[bytes, int], tmp_path: Path
) -> None:
    reply, nonce = chain_reply
    info = check(reply, pki, nonce=nonce)
    assert info.policy == POLICY
    assert info.hash_name == "sha256"
    assert info.nonce == nonce
    assert info.tsa_name == "CN=Test TSA"
    assert (
        info.signer_cert_sha256
        == hashlib.sha256(pki.tsa.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    assert abs(info.gen_time.timestamp() - time.time()) < 300
    # The token is kept as the TSA sent it; stock OpenSSL still accepts it.
    assert info.token_der == asn1tsp.TimeStampResp.load(reply)["time_stamp_token"].dump()
    openssl_verify_token(tmp_path, info.token_der, DIGEST, pem(pki.root))

    att = tsp.token_attestation(info, nonce)
    assert att["scheme"] == "rfc3161" and att["nonce"] == str(nonce)
    assert att["serial"] == str(info.serial) and att["hash"] == "sha256"
    assert att["gen_time"].endswith("Z") and att["policy"] == POLICY
    assert base64.b64decode(att["token"]) == info.token_der
    again = tsp.verify_attestation(att, digest=DIGEST, trust_roots=[pki.root], policy_oid=POLICY)
    assert again.serial == info.serial


def test_normalize_sorts_the_set_and_keeps_signed_content(
    chain_reply: tuple[bytes, int],
) -> None:
    token = asn1tsp.TimeStampResp.load(chain_reply[0])["time_stamp_token"].dump()
    fixed, signer = tsp.normalize_token(token)
    before = cms.ContentInfo.load(token)["content"]
    after = cms.ContentInfo.load(fixed)["content"]
    encodings = [c.dump() for c in after["certificates"]]
    assert encodings == sorted(encodings)
    assert [c.dump() for c in before["certificates"]] != encodings  # OpenSSL's order differs
    assert after["encap_content_info"].dump() == before["encap_content_info"].dump()
    assert after["signer_infos"].dump() == before["signer_infos"].dump()
    assert signer is not None and signer.subject.native["common_name"] == "Test TSA"


def test_offline_token_recheck(pki: Pki, chain_reply: tuple[bytes, int]) -> None:
    reply, nonce = chain_reply
    token = check(reply, pki).token_der
    info = tsp.verify_token(token, digest=DIGEST, trust_roots=[pki.root], nonce=nonce)
    assert info.nonce == nonce
    with pytest.raises(ValidationError, match="nonce check failed"):
        tsp.verify_token(token, digest=DIGEST, trust_roots=[pki.root], nonce=nonce + 1)
    # No skew check offline: a token from long ago is still good.
    assert tsp.verify_token(token, digest=DIGEST, trust_roots=[pki.root]).serial == info.serial


def test_openssl_reply_without_certificates_needs_the_signer_cert(pki: Pki, tmp_path: Path) -> None:
    config = write_openssl_tsa(tmp_path, pki, chain=False)
    query = openssl_query(tmp_path, DIGEST, cert=False, policy=POLICY)
    reply = openssl_reply(config, query)
    token = cms.ContentInfo.load(asn1tsp.TimeStampResp.load(reply)["time_stamp_token"].dump())
    assert isinstance(token["content"]["certificates"], type(cms.SignedData()["certificates"]))
    with pytest.raises(ValidationError, match="signer certificate check failed") as err:
        check(reply, pki)
    assert "embeds no certificate" in str(err.value)
    info = check(reply, pki, signer_certs=[pki.tsa], intermediates=[pki.intermediate])
    assert (
        info.signer_cert_sha256
        == hashlib.sha256(pki.tsa.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    # Without the intermediate the path cannot be built.
    with pytest.raises(ValidationError, match="chain check failed"):
        check(reply, pki, signer_certs=[pki.tsa])


def test_openssl_query_with_cert_and_policy(pki: Pki, tmp_path: Path) -> None:
    config = write_openssl_tsa(tmp_path, pki, chain=True)
    reply = openssl_reply(config, openssl_query(tmp_path, DIGEST, cert=True, policy=OTHER_POLICY))
    assert check(reply, pki, policy_oid=OTHER_POLICY).policy == OTHER_POLICY


def test_sha512_imprint(pki: Pki, tmp_path: Path) -> None:
    config = write_openssl_tsa(tmp_path, pki, chain=True)
    nonce = tsp.new_nonce()
    reply = openssl_reply(config, tsp.build_request(DIGEST, hash_name="sha512", nonce=nonce))
    info = check(reply, pki, nonce=nonce, hash_name="sha512")
    assert info.hash_name == "sha512"
    with pytest.raises(
        ValidationError, match="imprint check failed: hash algorithm expected sha256, got sha512"
    ):
        check(reply, pki, nonce=nonce, hash_name="sha256")


# --- each failed check names itself ---------------------------------------------------------


def test_wrong_nonce(pki: Pki, chain_reply: tuple[bytes, int]) -> None:
    reply, nonce = chain_reply
    with pytest.raises(
        ValidationError, match=f"nonce check failed: expected {nonce + 1}, got {nonce}"
    ):
        check(reply, pki, nonce=nonce + 1)


def test_wrong_digest(pki: Pki, chain_reply: tuple[bytes, int]) -> None:
    other = hashlib.sha256(b"another root").digest()
    with pytest.raises(ValidationError, match="imprint check failed") as err:
        check(chain_reply[0], pki, digest=other)
    assert other.hex() in str(err.value) and DIGEST.hex() in str(err.value)
    assert err.value.kind is ErrorKind.VALIDATION


def test_untrusted_ca(pki: Pki, chain_reply: tuple[bytes, int]) -> None:
    stranger = make_pki("Stranger")
    with pytest.raises(ValidationError, match="chain check failed") as err:
        check(chain_reply[0], pki, trust_roots=[stranger.root])
    assert "Stranger Root CA" in str(err.value)


def test_policy_mismatch(pki: Pki, chain_reply: tuple[bytes, int]) -> None:
    with pytest.raises(ValidationError, match=f"policy check failed: expected 1.9.9, got {POLICY}"):
        check(chain_reply[0], pki, policy_oid="1.9.9")


def test_clock_skew(pki: Pki, chain_reply: tuple[bytes, int]) -> None:
    with pytest.raises(ValidationError, match="clock skew check failed") as err:
        check(chain_reply[0], pki, now=time.time() + 3600, max_clock_skew=60)
    assert "within ±60s" in str(err.value)


def test_rejection_status(pki: Pki, tmp_path: Path) -> None:
    config = write_openssl_tsa(tmp_path, pki, chain=True)
    reply = openssl_reply(config, tsp.build_request(DIGEST, nonce=5, policy_oid="1.9.9"))
    with pytest.raises(
        ValidationError, match="status check failed: expected granted, got rejection"
    ):
        check(reply, pki, nonce=5)


def test_garbage_reply(pki: Pki) -> None:
    with pytest.raises(ValidationError, match="parse check failed"):
        check(b"<html>502</html>", pki, nonce=1)


def test_tampered_signature(pki: Pki, chain_reply: tuple[bytes, int]) -> None:
    resp = asn1tsp.TimeStampResp.load(chain_reply[0])
    token = cms.ContentInfo.load(resp["time_stamp_token"].dump())
    si = token["content"]["signer_infos"][0]
    sig = bytearray(si["signature"].native)
    sig[-1] ^= 0x01
    si["signature"] = bytes(sig)
    with pytest.raises(ValidationError, match="signature check failed"):
        tsp.verify_token(token.dump(), digest=DIGEST, trust_roots=[pki.root])


def test_attestation_fields_must_match_token(pki: Pki, chain_reply: tuple[bytes, int]) -> None:
    reply, nonce = chain_reply
    att = tsp.token_attestation(check(reply, pki), nonce)
    att["serial"] = "999999"
    with pytest.raises(ValidationError, match="attestation check failed: serial"):
        tsp.verify_attestation(att, digest=DIGEST, trust_roots=[pki.root])


# --- real-world token quirks: accepted when every check passes, rejected otherwise ----------


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + content


def _signed_data(token: bytes, *, certificates: bytes | None = None, signer_infos: bytes | None = None) -> bytes:
    """The token with its certificates field and/or SignerInfos replaced by raw bytes (built
    by hand: asn1crypto would re-sort a SET it encodes, which is the point of these tokens)."""
    ci = cms.ContentInfo.load(token)
    sd = ci["content"]
    body = (
        sd["version"].dump()
        + sd["digest_algorithms"].dump()
        + sd["encap_content_info"].dump()
        + (sd["certificates"].dump() if certificates is None else certificates)
        + (sd["signer_infos"].dump() if signer_infos is None else signer_infos)
    )
    return _tlv(0x30, ci["content_type"].dump() + _tlv(0xA0, _tlv(0x30, body)))


def unsorted_attributes_token(token: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The signed attributes sent in reverse DER order and signed in that order, as a major
    commercial TSA's 2018 responder did."""
    si = cms.ContentInfo.load(token)["content"]["signer_infos"][0]
    attrs = sorted((a.dump() for a in si["signed_attrs"]), reverse=True)
    body = b"".join(attrs)
    signature = key.sign(_tlv(0x31, body), ec.ECDSA(hashes.SHA256()))
    signer_info = _tlv(
        0x30,
        si["version"].dump() + si["sid"].dump() + si["digest_algorithm"].dump()
        + _tlv(0xA0, body) + si["signature_algorithm"].dump() + _tlv(0x04, signature),
    )
    return _signed_data(token, signer_infos=_tlv(0x31, signer_info))


def attribute_certificate_token(token: bytes) -> bytes:
    """An AttributeCertificateV2 among the certificates, as a platform vendor's TSA sent in 2025."""
    names = asn1x509.GeneralNames(
        [asn1x509.GeneralName(name="directory_name", value=asn1x509.Name.build({"common_name": "TSA role"}))]
    )
    moment = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    info = cms.AttributeCertificateInfoV2(
        {
            "version": "v2",
            "holder": {"entity_name": names},
            "issuer": cms.AttCertIssuer(name="v2_form", value={"issuer_name": names}),
            "signature": {"algorithm": "sha256_ecdsa"},
            "serial_number": 7,
            "att_cert_validity_period": {
                "not_before_time": asn1core.GeneralizedTime(moment),
                "not_after_time": asn1core.GeneralizedTime(moment.replace(year=2060)),
            },
            "attributes": [
                {"type": "role", "values": [{"role_name": {"uniform_resource_identifier": "urn:tsa"}}]}
            ],
        }
    )
    attr_cert = cms.CertificateChoices(
        name="v2_attr_cert",
        value=cms.AttributeCertificateV2(
            {"ac_info": info, "signature_algorithm": {"algorithm": "sha256_ecdsa"}, "signature": b"\x30\x00"}
        ),
    )
    members = [c.dump() for c in cms.ContentInfo.load(token)["content"]["certificates"]]
    return _signed_data(token, certificates=_tlv(0xA0, b"".join([*members, attr_cert.dump()])))


def flip_last_signature_byte(token: bytes) -> bytes:
    """A signature that no longer verifies, everything else (and the quirk) kept as sent."""
    raw = bytearray(token)
    si = cms.ContentInfo.load(token)["content"]["signer_infos"][0]
    sig = si["signature"].contents
    at = bytes(raw).rindex(sig)
    raw[at + len(sig) - 1] ^= 0x01
    return bytes(raw)


@pytest.fixture(scope="module")
def quirky(pki: Pki, chain_reply: tuple[bytes, int]) -> dict[str, bytes]:
    token = asn1tsp.TimeStampResp.load(chain_reply[0])["time_stamp_token"].dump()
    return {
        "unsorted attributes": unsorted_attributes_token(token, pki.tsa_key),
        "attribute certificate": attribute_certificate_token(token),
    }


@pytest.mark.parametrize("quirk", ["unsorted attributes", "attribute certificate"])
def test_a_quirky_token_is_accepted_when_every_check_passes(
    quirk: str, quirky: dict[str, bytes], pki: Pki, chain_reply: tuple[bytes, int], tmp_path: Path
) -> None:
    token, nonce = quirky[quirk], chain_reply[1]
    sd = cms.ContentInfo.load(token)["content"]
    if quirk == "unsorted attributes":
        attrs = [a.dump() for a in sd["signer_infos"][0]["signed_attrs"]]
        assert attrs != sorted(attrs)  # really not DER SET order
        openssl_verify_token(tmp_path, token, DIGEST, pem(pki.root))  # OpenSSL accepts it
    else:
        assert "v2_attr_cert" in [c.name for c in sd["certificates"]]
    info = tsp.verify_token(
        token, digest=DIGEST, trust_roots=[pki.root], nonce=nonce, policy_oid=POLICY
    )
    assert info.token_der == token  # kept as the TSA sent it
    assert info.tsa_name == "CN=Test TSA" and info.nonce == nonce
    att = tsp.token_attestation(info, nonce)
    assert tsp.verify_attestation(att, digest=DIGEST, trust_roots=[pki.root]).serial == info.serial


@pytest.mark.parametrize("quirk", ["unsorted attributes", "attribute certificate"])
def test_a_quirky_token_is_rejected_when_a_check_fails(
    quirk: str, quirky: dict[str, bytes], pki: Pki, chain_reply: tuple[bytes, int]
) -> None:
    token, nonce = quirky[quirk], chain_reply[1]
    with pytest.raises(ValidationError, match="signature check failed"):
        tsp.verify_token(flip_last_signature_byte(token), digest=DIGEST, trust_roots=[pki.root])
    with pytest.raises(ValidationError, match="imprint check failed"):
        tsp.verify_token(token, digest=hashlib.sha256(b"other").digest(), trust_roots=[pki.root])
    with pytest.raises(ValidationError, match="nonce check failed"):
        tsp.verify_token(token, digest=DIGEST, trust_roots=[pki.root], nonce=nonce + 1)
    with pytest.raises(ValidationError, match="policy check failed"):
        tsp.verify_token(token, digest=DIGEST, trust_roots=[pki.root], policy_oid=OTHER_POLICY)
    stranger = make_pki("Stranger")
    with pytest.raises(ValidationError, match="chain check failed") as err:
        tsp.verify_token(token, digest=DIGEST, trust_roots=[stranger.root])
    assert "does not chain to the trust bundle (CN=Stranger Root CA)" in str(err.value)



@pytest.mark.parametrize(
    "library_text, sentence",
    [
        (
            'Error while verifying certificates: Unable to verify pkcs7 signature: ErrorStack([Error '
            '{ code: 276824181, library: "PKCS7 routines", function: "PKCS7_verify", reason: '
            '"certificate verify error", file: "crypto/pkcs7/pk7_smime.c", line: 297, data: '
            '"Verify error: self-signed certificate in certificate chain" }])',
            "Verify error: self-signed certificate in certificate chain",
        ),
        (
            'ASN.1 parse error: ParseError { kind: ExtraData, location: ["TimeStampToken::content", '
            '"SignedData::certificates", 3, "CertificateChoices::AttributeCertificateV2"] }',
            "ExtraData in CertificateChoices::AttributeCertificateV2",
        ),
        ("Nonce mismatch", "Nonce mismatch"),
    ],
)
def test_library_errors_become_their_readable_part(library_text: str, sentence: str) -> None:
    assert tsp._openssl_reason(library_text) == sentence


@pytest.mark.parametrize(
    "text",
    [
        "20260101000000Z", "20260101000000.25Z", "20261231235959.999999Z", "20240229120000.5Z",
        "20260101000000.500Z", "20260101000000+0100", "202601010000Z", "20260101000000.1234567Z",
    ],
)
def test_gen_time_reads_as_asn1crypto_reads_it(text: str) -> None:
    """A TSTInfo's genTime in its DER form is read without asn1crypto's general parser, and
    gives what that parser gives; any other form is left to it."""
    value = asn1core.GeneralizedTime.load(asn1core.GeneralizedTime(contents=text.encode()).dump())

    assert tsp._generalized_time(value) == value.native.astimezone(dt.UTC)


@pytest.mark.parametrize("text", ["20261301000000Z", "20260230000000Z", "20260101246000Z"])
def test_a_gen_time_that_is_no_date_is_refused_as_asn1crypto_refuses_it(text: str) -> None:
    value = asn1core.GeneralizedTime.load(asn1core.GeneralizedTime(contents=text.encode()).dump())
    with pytest.raises(ValueError):
        value.native  # noqa: B018
    with pytest.raises(ValueError):
        tsp._generalized_time(value)
