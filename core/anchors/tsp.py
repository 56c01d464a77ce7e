"""RFC 3161 building blocks shared by the embedded TSA (`local`) and real TSAs (`rfc3161`).

No HTTP here: build a TimeStampReq, verify a TimeStampResp (or a stored TimeStampToken) and
turn a verified token into a receipt attestation.

What is time-stamped. The scheduler anchors a 32-byte SHA-256 value (a batch root or an RFC
6962 tree hash). With `hash_name="sha256"` (the default) that value *is* the message imprint
(hashAlgorithm sha256, hashedMessage = digest), so a receipt checks with stock tools:
`openssl ts -verify -digest <hex> -in token.der -token_in -CAfile ca.pem`. With sha384 or
sha512 the 32-byte value is not an output of that hash, so the imprint is
`SHA-512(digest)` (resp. SHA-384), i.e. the TSA time-stamps the 32 raw bytes as a message:
`openssl ts -verify -data <file holding the 32 raw bytes> ...`.

Verification runs every check explicitly so that the error names the check that failed and
what was expected: imprint, nonce, policy, the signature over the signed attributes as sent,
the ESS signing certificate, a critical timeStamping EKU, and the certificate path to the
trust roots at gen_time (cryptography's X.509 path builder). A token that rfc3161-client's
strict parser accepts is then handed to its verifier (OpenSSL) as a second opinion. Error
messages are sentences: a library's internal error dump never reaches them.

Interoperability fixes (the signed content is never touched; the CMS signature covers the
signed attributes, which bind the TSTInfo digest, not the certificate SET):

* OpenSSL TSAs configured with a `certs =` chain emit a `certificates` SET that is not
  DER-sorted (openssl issue 13142); rfc3161-client's strict DER parser rejects it. We
  re-encode the SET with its members sorted by their DER encoding before verifying.
* A token may embed no certificate (the request said certReq false, or the TSA never
  includes one). The signer is then looked up, by the SignerInfo's sid, among the configured
  signer certificates and the trust roots, and is added to the SET for the verifier.
* Some TSAs put an attribute certificate (or another non-X.509 choice) among the
  certificates. It plays no part in the proof and strict parsers reject it: normalization
  leaves it out.
* Some TSAs send the signed attributes in an order that is not the DER SET order, and sign
  them in that order. The signature covers those bytes as sent, so they cannot be sorted:
  our checks verify over the original encoding (as OpenSSL does), and the strict second
  opinion, which cannot parse such a token, is skipped for it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asn1crypto import cms
from asn1crypto import core as asn1core
from asn1crypto import tsp as asn1tsp
from asn1crypto import x509 as asn1x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from rfc3161_client import VerificationError, VerifierBuilder, decode_timestamp_response
from rfc3161_client.tsp import SignedData, TimeStampResponse, TimeStampTokenInfo

from core.errors import ValidationError

__all__ = [
    "HASHES",
    "TokenInfo",
    "build_request",
    "policy_oid_problem",
    "imprint_for",
    "load_certs",
    "new_nonce",
    "normalize_token",
    "token_attestation",
    "verify_attestation",
    "verify_response",
    "verify_token",
    "wrap_token",
]

# name -> (OID, hashlib name, output size)
HASHES: dict[str, tuple[str, str, int]] = {
    "sha256": ("2.16.840.1.101.3.4.2.1", "sha256", 32),
    "sha384": ("2.16.840.1.101.3.4.2.2", "sha384", 48),
    "sha512": ("2.16.840.1.101.3.4.2.3", "sha512", 64),
}
_HASH_BY_OID = {oid: name for name, (oid, _, _) in HASHES.items()}
_ID_CT_TSTINFO = "1.2.840.113549.1.9.16.1.4"


class _TimeStampResp(asn1core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    """TimeStampResp as RFC 3161 defines it: the token is absent from rejections
    (asn1crypto's own class makes it mandatory)."""

    _fields = [
        ("status", asn1tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


def _absent(value: object) -> bool:
    """An omitted optional field (cheap: `.native` would parse whole certificates)."""
    return isinstance(value, asn1core.Void)


def _fail(check: str, detail: str) -> ValidationError:
    return ValidationError(f"RFC 3161 {check} check failed: {detail}")


def new_nonce() -> int:
    """A random positive 64-bit nonce."""
    return secrets.randbits(63) | (1 << 62)


_OID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")


def policy_oid_problem(text: str) -> str | None:
    """Why `text` cannot be a TSA policy OID (a phrase), or None when it can (dotted decimal, X.660:
    first arc 0, 1 or 2; under 0 and 1 the second arc is below 40)."""
    if not _OID_RE.fullmatch(text):
        return "not an object identifier (expected dotted numbers, e.g. 1.3.6.1.4.1.4146.2.3)"
    first, second = (int(arc) for arc in text.split(".")[:2])
    if first > 2 or (first < 2 and second >= 40):
        return "not an object identifier (X.660: the first arc is 0, 1 or 2, and under 0 or 1 the second is below 40)"
    return None


def imprint_for(digest: bytes, hash_name: str = "sha256") -> bytes:
    """The hashedMessage for an anchored 32-byte digest (see the module doc)."""
    if hash_name not in HASHES:
        raise ValueError(f"unsupported hash {hash_name!r}; use one of {sorted(HASHES)}")
    if len(digest) != 32:
        raise ValueError(f"the anchored digest must be 32 bytes, got {len(digest)}")
    if hash_name == "sha256":
        return bytes(digest)
    return hashlib.new(HASHES[hash_name][1], digest).digest()


def build_request(
    digest: bytes,
    *,
    hash_name: str = "sha256",
    nonce: int,
    policy_oid: str | None = None,
    cert_req: bool = True,
) -> bytes:
    """DER TimeStampReq for `digest` (32 bytes; imprint per `imprint_for`)."""
    if nonce <= 0:
        raise ValueError("nonce must be a positive integer")
    req: dict[str, Any] = {
        "version": "v1",
        "message_imprint": {
            "hash_algorithm": {"algorithm": hash_name},
            "hashed_message": imprint_for(digest, hash_name),
        },
        "nonce": nonce,
        "cert_req": cert_req,
    }
    if policy_oid:
        req["req_policy"] = policy_oid
    der: bytes = asn1tsp.TimeStampReq(req).dump()  # asn1crypto is untyped
    return der


@dataclass(frozen=True)
class TokenInfo:
    gen_time: datetime  # UTC
    serial: int
    policy: str  # dotted OID
    tsa_name: str | None
    hash_name: str
    nonce: int | None
    signer_cert_sha256: str  # hex fingerprint of the signer's certificate (DER)
    token_der: bytes  # the TimeStampToken (ContentInfo) as the TSA sent it


def _iso_z(moment: datetime) -> str:
    """ISO 8601 UTC with a Z, as precise as the token (seconds, milliseconds or micro)."""
    us = moment.microsecond
    spec = "seconds" if us == 0 else "milliseconds" if us % 1000 == 0 else "microseconds"
    return moment.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def token_attestation(info: TokenInfo, nonce: int | None = None) -> dict[str, Any]:
    """The receipt attestation for a verified token."""
    nonce = info.nonce if nonce is None else nonce
    return {
        "scheme": "rfc3161",
        "token": base64.b64encode(info.token_der).decode("ascii"),
        "gen_time": _iso_z(info.gen_time),
        "serial": str(info.serial),
        "policy": info.policy,
        "tsa": info.tsa_name,
        "hash": info.hash_name,
        "nonce": None if nonce is None else str(nonce),
        "tsa_cert_sha256": info.signer_cert_sha256,
    }


# --- token plumbing -----------------------------------------------------------------------


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _certificate(der: bytes) -> x509.Certificate:
    """The certificate of these DER bytes (loaded once: a TSA sends the same every time)."""
    cert: x509.Certificate = _remembered(("x509", der), lambda: x509.load_der_x509_certificate(der))
    return cert


_GRANTED = asn1tsp.PKIStatusInfo({"status": "granted"}).dump()


def wrap_token(token_der: bytes) -> bytes:
    """A granted TimeStampResp around a stored TimeStampToken (for the offline re-check)."""
    return _granted(cms.ContentInfo.load(token_der).dump())  # as sent (parsed, never re-encoded)


def _granted(token: bytes) -> bytes:
    """A granted TimeStampResp around the encoding of a parsed token."""
    der: bytes = asn1core.Sequence(contents=_GRANTED + token).dump()
    return der


_known: dict[tuple[object, ...], Any] = {}


def _remembered(key: tuple[object, ...], compute: Callable[[], Any]) -> Any:
    """compute()'s value for `key` (the DER it reads), computed once: the replies of one TSA
    bring the same certificate, ESS attribute and TSA name every time, and what is computed
    here is a function of those bytes alone. A failing check raises and is not remembered."""
    try:
        return _known[key]
    except KeyError:
        pass
    value = compute()
    _keep(key, value)
    return value


def _keep(key: tuple[object, ...], value: Any) -> None:
    if len(_known) >= 1024:
        _known.clear()
    _known[key] = value


def signer_matches(sid: cms.SignerIdentifier, cert: asn1x509.Certificate) -> bool:
    same: bool = _remembered(("sid", sid.dump(), cert.dump()), lambda: _signer_matches(sid, cert))
    return same


def _signer_matches(sid: cms.SignerIdentifier, cert: asn1x509.Certificate) -> bool:
    if sid.name == "issuer_and_serial_number":
        ias = sid.chosen
        same: bool = (
            ias["issuer"].dump() == cert.issuer.dump()
            and ias["serial_number"].native == cert.serial_number
        )
        return same
    same = cert.key_identifier == sid.chosen.native  # subject_key_identifier
    return same


def normalize_token(
    token_der: bytes, extra_certs: Iterable[x509.Certificate] = ()
) -> tuple[bytes, asn1x509.Certificate | None]:
    """Re-encode the SignedData certificate SET DER-sorted, X.509 certificates only, adding
    `extra_certs` that are not there yet (supplied signer/intermediates). Returns the token and the signer's certificate
    (matched by sid among embedded and extra certificates, None if absent).

    Only the unsigned `certificates` field changes; the encapsulated TSTInfo and the
    SignerInfos are asserted byte-identical. A token already so is returned as sent.
    """
    normalized = _normalize(cms.ContentInfo.load(token_der), token_der, extra_certs)
    signer = None if normalized.signer_der is None else asn1x509.Certificate.load(normalized.signer_der)
    return normalized.token_der, signer


@dataclass(frozen=True)
class _Normalized:
    token_der: bytes  # the token with its certificate SET normalized
    signer_der: bytes | None  # the signer's certificate as the token or the caller gave it
    certificates: list[bytes]  # that SET's members (X.509 certificates), DER-sorted


@dataclass(frozen=True)
class _SetPlan:
    """What normalization makes of one certificate SET (a function of its bytes, the sid's
    and the extra certificates' alone: the replies of one TSA bring the same every time)."""

    signer_der: bytes | None
    certificates: list[bytes]  # the normalized SET's members, DER-sorted
    as_sent: bool  # the SET as sent is that already


def _normalize(
    ci: cms.ContentInfo, token_der: bytes, extra_certs: Iterable[x509.Certificate]
) -> _Normalized:
    """normalize_token over the already parsed token `ci` (whose encoding is `token_der`),
    which is only read: a token that needs a new SET is re-encoded from a fresh parse."""
    if ci["content_type"].native != "signed_data":
        raise _fail("token", f"content type is {ci['content_type'].native}, expected signed_data")
    sd = ci["content"]
    extra = tuple(extra_certs)
    sids = [si["sid"] for si in sd["signer_infos"]]
    key = ("set", sd["certificates"].dump(), sids[0].dump() if sids else None, *extra)
    plan: _SetPlan = _remembered(key, lambda: _set_plan(sd, sids, extra))
    if plan.as_sent:  # already normalized: the token as sent, never re-encoded
        return _Normalized(token_der, plan.signer_der, plan.certificates)
    return _Normalized(
        _with_certificates(token_der, plan.certificates), plan.signer_der, plan.certificates
    )


def _set_plan(
    sd: cms.SignedData, sids: list[cms.SignerIdentifier], extra_certs: Iterable[x509.Certificate]
) -> _SetPlan:
    members: dict[bytes, cms.CertificateChoices] = {}
    sent: list[bytes] = []  # the SET's members as sent, attribute certificates included
    if not _absent(sd["certificates"]):
        for choice in sd["certificates"]:
            sent.append(choice.dump())
            if choice.name == "certificate":  # attribute and other certificates prove nothing here
                members[sent[-1]] = choice
    for cert in extra_certs:
        choice = cms.CertificateChoices(
            name="certificate", value=asn1x509.Certificate.load(_der(cert))
        )
        members.setdefault(choice.dump(), choice)
    signer = None
    for choice in members.values():
        if sids and signer_matches(sids[0], choice.chosen):
            signer = choice.chosen.dump()
            break
    ordered = sorted(members)
    return _SetPlan(signer, ordered, sent == ordered)


def _with_certificates(token_der: bytes, certificates: list[bytes]) -> bytes:
    """The token with its certificate SET replaced by `certificates` (in that order; absent
    when empty), its signed content asserted unchanged."""
    ci = cms.ContentInfo.load(token_der)
    sd = ci["content"]
    signed_before = (sd["encap_content_info"].dump(), sd["signer_infos"].dump())
    if certificates:
        sd["certificates"] = cms.CertificateSet(
            [cms.CertificateChoices.load(der) for der in certificates]
        )
    elif not _absent(sd["certificates"]):
        sd["certificates"] = None  # it held only attribute certificates
    out: bytes = ci.dump()
    check = cms.ContentInfo.load(out)["content"]
    if (check["encap_content_info"].dump(), check["signer_infos"].dump()) != signed_before:
        raise AssertionError("normalize_token changed signed content")  # never expected
    return out


# --- checks ---------------------------------------------------------------------------------


def _hash_for_sig(digest_oid_name: str) -> hashes.HashAlgorithm:
    try:
        return {
            "sha1": hashes.SHA1(),
            "sha224": hashes.SHA224(),
            "sha256": hashes.SHA256(),
            "sha384": hashes.SHA384(),
            "sha512": hashes.SHA512(),
        }[digest_oid_name]
    except KeyError:
        raise _fail("signature", f"unsupported digest algorithm {digest_oid_name}") from None


def _check_signature(sd: cms.SignedData, signer: x509.Certificate, signer_der: bytes) -> list[bytes]:
    """The signed attributes and the signature over them; returns the attributes' encodings
    as sent (in the order sent)."""
    infos = list(sd["signer_infos"])
    if len(infos) != 1:
        raise _fail("signature", f"expected exactly one SignerInfo, got {len(infos)}")
    si = infos[0]
    signed_attrs = si["signed_attrs"]
    if _absent(signed_attrs) or len(signed_attrs) == 0:
        raise _fail("signature", "SignerInfo has no signed attributes (RFC 3161 requires them)")
    # The bytes as sent, taken before a check reads into an attribute: asn1crypto marks a
    # value it filled a default into (an ESSCertIDv2's hash algorithm) as changed and then
    # re-encodes it (SETs sorted) on every dump, slower and no longer what was signed.
    to_verify = b"\x31" + signed_attrs.dump()[1:]  # [0] IMPLICIT -> SET OF for the signature
    as_sent = [a.dump() for a in signed_attrs]
    econtent = sd["encap_content_info"]["content"].contents  # the TSTInfo DER octets
    digest_name = si["digest_algorithm"]["algorithm"].native
    h = _hash_for_sig(digest_name)
    attrs = {a["type"].native: a["values"] for a in signed_attrs}
    _check_content_attrs(attrs, digest_name, econtent)
    _check_signature_value(si, _remembered(("key", signer_der), signer.public_key), to_verify, h)
    ess = [attrs[name].dump() if name in attrs else None for name in ("signing_certificate_v2", "signing_certificate")]
    _remembered(("ess", signer_der, *ess), lambda: _check_ess(attrs, signer))
    return as_sent


def _check_content_attrs(attrs: dict[str, Any], digest_name: str, econtent: bytes) -> None:
    """The signed contentType is id-ct-TSTInfo and the messageDigest that of the TSTInfo."""
    ctype = attrs.get("content_type")
    if ctype is None or ctype[0].native != "tst_info":
        got = None if ctype is None else ctype[0].native
        raise _fail("signature", f"signed contentType expected id-ct-TSTInfo, got {got}")
    md = attrs.get("message_digest")
    want_md = hashlib.new(digest_name, econtent).digest()
    if md is None or md[0].native != want_md:
        got = None if md is None else md[0].native.hex()
        raise _fail(
            "signature",
            f"messageDigest attribute does not match the TSTInfo: expected {want_md.hex()}, got {got}",
        )


def _check_signature_value(si: cms.SignerInfo, key: Any, to_verify: bytes, h: hashes.HashAlgorithm) -> None:
    """The SignerInfo's signature over the signed attributes, with the signer's public key."""
    sig = si["signature"].native
    algo = si["signature_algorithm"]
    algo_name = algo["algorithm"].native
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, to_verify, ec.ECDSA(h))
        elif isinstance(key, rsa.RSAPublicKey):
            if algo_name == "rsassa_pss":
                params = algo["parameters"]
                pss_hash = _hash_for_sig(params["hash_algorithm"]["algorithm"].native)
                mgf_hash = _hash_for_sig(
                    params["mask_gen_algorithm"]["parameters"]["algorithm"].native
                )
                pad = padding.PSS(padding.MGF1(mgf_hash), params["salt_length"].native)
                key.verify(sig, to_verify, pad, pss_hash)
            else:
                key.verify(sig, to_verify, padding.PKCS1v15(), h)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(sig, to_verify)
        else:
            raise TypeError(f"{type(key).__name__} signer keys are not supported")
    except InvalidSignature:
        raise _fail(
            "signature", f"the {algo_name} signature does not verify with the signer's key"
        ) from None
    except (TypeError, ValueError) as exc:
        raise _fail("signature", f"cannot verify a {algo_name} signature: {exc}") from None


def _check_ess(attrs: dict[str, Any], signer: x509.Certificate) -> None:
    """ESS: the signed attributes must name the signer's certificate (RFC 3161 / 5816)."""
    cert_der = _der(signer)
    v2 = attrs.get("signing_certificate_v2")
    v1 = attrs.get("signing_certificate")
    if v2 is not None:
        ids = v2[0]["certs"]
        if not ids:
            raise _fail("signer certificate", "empty signingCertificateV2")
        first = ids[0]
        hname = first["hash_algorithm"]["algorithm"].native
        want = hashlib.new(hname, cert_der).digest()
        if first["cert_hash"].native != want:
            raise _fail(
                "signer certificate",
                f"signingCertificateV2 names {first['cert_hash'].native.hex()}, "
                f"the signer's certificate {hname} is {want.hex()}",
            )
    elif v1 is not None:
        ids = v1[0]["certs"]
        want = hashlib.sha1(cert_der).digest()
        if not ids or ids[0]["cert_hash"].native != want:
            raise _fail(
                "signer certificate", "signingCertificate does not name the signer's certificate"
            )
    else:
        raise _fail("signer certificate", "no signingCertificate(V2) signed attribute")


def _check_eku(cert: x509.Certificate) -> None:
    try:
        ext = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        raise _fail(
            "EKU",
            f"signer {cert.subject.rfc4514_string()} has no extendedKeyUsage; expected a critical timeStamping EKU",
        ) from None
    if ExtendedKeyUsageOID.TIME_STAMPING not in ext.value:
        raise _fail("EKU", f"signer {cert.subject.rfc4514_string()} EKU lacks timeStamping")
    if not ext.critical:
        raise _fail(
            "EKU", f"signer {cert.subject.rfc4514_string()} timeStamping EKU is not critical"
        )


def _who(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number}"


def _ca_eku(policy: Any, cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    """A CA that restricts its EKU must allow time-stamping (OpenSSL's timestampsign purpose)."""
    if eku is not None and not {
        ExtendedKeyUsageOID.TIME_STAMPING,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    } & set(eku):
        raise ValueError(f"the CA {_who(cert)} restricts its EKU and does not allow time-stamping")


def _ca_key_usage(policy: Any, cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    """A CA without keyUsage may sign certificates (RFC 5280 4.2.1.3, as OpenSSL reads it);
    one with keyUsage must assert keyCertSign."""
    if usage is not None and not usage.key_cert_sign:
        raise ValueError(f"the CA {_who(cert)} has a keyUsage without keyCertSign")


def _ca_basic_constraints(policy: Any, cert: x509.Certificate, bc: x509.BasicConstraints) -> None:
    """basicConstraints, critical or not (OpenSSL does not look at the flag), must say cA."""
    if not bc.ca:
        raise ValueError(f"{_who(cert)} issues certificates but its basicConstraints cA is false")


def chain_policy() -> Any:
    """The CA extension policy of the chain check: cryptography's Web PKI rules (key sizes,
    signature algorithms, name constraints, path length, basicConstraints present, no
    unknown critical extension) relaxed where OpenSSL accepts what real TSAs ship:
    basicConstraints not marked critical, a CA without keyUsage, an EKU on a CA that allows
    time-stamping. What stays refused is listed in the README."""
    from cryptography.x509 import verification as xv

    return (
        xv.ExtensionPolicy.webpki_defaults_ca()
        .require_present(x509.BasicConstraints, xv.Criticality.AGNOSTIC, _ca_basic_constraints)
        .may_be_present(x509.KeyUsage, xv.Criticality.AGNOSTIC, _ca_key_usage)
        .may_be_present(x509.ExtendedKeyUsage, xv.Criticality.AGNOSTIC, _ca_eku)
    )


def _check_chain(
    signer: x509.Certificate,
    untrusted: Sequence[x509.Certificate],
    trust_roots: Sequence[x509.Certificate],
    gen_time: datetime,
) -> x509.Certificate:
    """The signer chains to one of `trust_roots`, every certificate valid at gen_time;
    returns the trust root the path ends at.

    cryptography's path builder with chain_policy for the CAs; the signer's own
    extensions are checked by _check_eku.
    """
    from cryptography.x509 import verification as xv

    if _self_signed(signer) and signer not in trust_roots:
        # Its own anchor (the embedded TSA's certificate): another of the same name (another
        # replica's) is no issuer of it, however the path builder words that.
        raise _fail(
            "chain",
            f"the signer certificate {_who(signer)} is self-signed and is not in the trust "
            f"bundle (SHA-256 fingerprint {hashlib.sha256(_der(signer)).hexdigest()}); pass "
            "that certificate (a cluster's local: receipts: every replica's "
            "<data_dir>/tsa/local-tsa.pem)",
        )
    found = ("path", signer, *untrusted, None, *trust_roots)
    known: _Path | None = _known.get(found)
    if known is not None and known.valid_from <= gen_time <= known.valid_to:
        return known.anchor  # the path built before for these certificates, all valid at gen_time
    store, ca_policy, ee_policy = _remembered(
        ("store", *trust_roots),
        lambda: (xv.Store(list(trust_roots)), chain_policy(), xv.ExtensionPolicy.permit_all()),
    )
    verifier = (
        xv.PolicyBuilder()
        .store(store)
        .time(gen_time)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        # A self-signed certificate can only be an anchor: as an intermediate it loops.
        path = verifier.verify(signer, [c for c in untrusted if c != signer and not _self_signed(c)])
    except xv.VerificationError as exc:
        roots = "; ".join(_who(r) for r in trust_roots)
        when = gen_time.isoformat().replace("+00:00", "Z")
        text = str(exc)
        if "not valid at validation time" in text:
            late = [c for c in (signer, *untrusted, *trust_roots) if not _valid_at(c, gen_time)]
            names = ", ".join(
                f"{_who(c)} (valid {_day(c.not_valid_before_utc)} to {_day(c.not_valid_after_utc)})"
                for c in late
            ) or "a certificate on the path"
            raise _fail("chain", f"{names} was not valid at gen_time {when}") from None
        if "candidates exhausted" in text and "no interior errors" in text:
            raise _fail(
                "chain",
                f"the signer certificate {_who(signer)} (issued by "
                f"{signer.issuer.rfc4514_string()}) does not chain to the trust bundle ({roots})",
            ) from None
        reason = _path_reason(text)
        raise _fail(
            "chain",
            f"the path from the signer certificate {_who(signer)} to the trust bundle ({roots}) "
            f"is not acceptable: {reason}",
        ) from None
    chain = path.chain
    _keep(found, _Path(
        chain[-1], max(c.not_valid_before_utc for c in chain), min(c.not_valid_after_utc for c in chain)
    ))
    return chain[-1]


@dataclass(frozen=True)
class _Path:
    """A path the builder found from a signer to a trust root: where it ends, and when all of
    its certificates are valid. It holds at any gen_time in that window: the builder's
    other rules (signatures, extensions, name constraints) do not depend on the time."""

    anchor: x509.Certificate
    valid_from: datetime
    valid_to: datetime


_ALGORITHM_WORDS = {"Rsa": "RSA", "Ecdsa": "ECDSA", "Dsa": "DSA", "With": "with", "Sha1": "SHA-1", "Md5": "MD5"}


def _path_reason(text: str) -> str:
    """The path builder's reason as a sentence (a forbidden algorithm is a Rust dump)."""
    reason = re.sub(r"\s*\(encountered processing <.*", "", text)
    reason = reason.removeprefix("validation failed: ").removeprefix("candidates exhausted: ")
    reason = re.sub(r"^.*Python extension validator failed: \w+: ", "", reason)  # our own sentence
    algorithm = re.search(r"Forbidden signature algorithm: .*?params: (\w+)", reason)
    if algorithm:
        words = re.findall(r"[A-Z][a-z]*\d*", algorithm.group(1))  # RsaWithSha1, EcdsaWithSha1
        name = " ".join(_ALGORITHM_WORDS.get(w, w) for w in words)
        return (
            f"a certificate on the path is signed with {name}, which is refused "
            "(SHA-1 and MD5 signatures can be forged)"
        )
    return reason


def _self_signed(cert: x509.Certificate) -> bool:
    """Its subject is its issuer (known once per certificate: the names are built each time
    they are read)."""
    same: bool = _remembered(("self-signed", cert), lambda: cert.subject == cert.issuer)
    return same


def _valid_at(cert: x509.Certificate, moment: datetime) -> bool:
    return cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _openssl_reason(text: str) -> str:
    """The readable part of a library error ('Verify error: ...', 'InvalidSetOrdering in
    SignerInfo::authenticated_attributes'), never the dump itself."""
    found = re.findall(r'data: "([^"]+)"', text) or re.findall(r'reason: "([^"]+)"', text)
    if found:
        return "; ".join(dict.fromkeys(found))
    kind = re.search(r"kind: (\w+)", text)
    if kind:  # an ASN.1 ParseError { kind, location: [...] }
        where = re.findall(r'"(\w+::\w+)"', text)
        return kind.group(1) + (f" in {where[-1]}" if where else "")
    return re.split(r":? ?(?:ErrorStack|ParseError)\b", text)[0][:200]


def _openssl_verifier(
    trust_roots: Sequence[x509.Certificate], anchor: x509.Certificate
) -> tuple[Any, list[x509.Certificate]]:
    """rfc3161-client's verifier for the second opinion and the roots it is given: of several
    roots of one name (the replicas' local TSAs), OpenSSL would try the first it finds and
    stop there, so it gets the one our path ends at (`anchor`). Built once per root set and
    anchor: the verifier keeps no state between checks."""
    roots = [r for r in trust_roots if r == anchor or r.subject != anchor.subject]
    builder = VerifierBuilder()
    seen: set[bytes] = set()
    for root in roots:
        der = _der(root)
        if der in seen:
            continue
        seen.add(der)
        builder = builder.add_root_certificate(root)
    return builder.build(), roots


def _second_opinion(
    token_der: bytes,
    imprint: bytes,
    verifier: Any,
    trust_roots: Sequence[x509.Certificate],
) -> None:
    """Signature and certificate path (at gen_time) again, by rfc3161-client / OpenSSL
    (`verifier`, of `_openssl_verifier`, holding `trust_roots`), on a granted reply around
    the token `token_der`."""
    try:
        resp = _ReadOnce(decode_timestamp_response(_granted(token_der)), token_der)
    except ValueError as exc:
        raise _fail(
            "parse", f"the token is not strict DER ({_openssl_reason(str(exc))})"
        ) from None
    try:
        verifier.verify(resp, imprint)
    except VerificationError as exc:
        text = str(exc)
        reason = _openssl_reason(text)
        if "signature" in text.lower() and "certificate verify" not in text.lower():
            raise _fail("signature", f"OpenSSL rejects the signature: {reason}") from None
        raise _fail(
            "chain",
            "OpenSSL does not accept the signer's path to the trust roots "
            f"({'; '.join(_who(r) for r in trust_roots)}): {reason}",
        ) from None


class _ReadOnce(TimeStampResponse):
    """A TimeStampResp of rfc3161-client whose parts are built once: its verifier reads
    `signed_data` five times and `tst_info` four times a check, and the library builds them
    from the bytes at each read (a third of the second opinion's time). What they hold is
    read-only: the sets a verifier takes from them are new at each read."""

    def __init__(self, resp: TimeStampResponse, token_der: bytes) -> None:
        self._resp = resp
        self._token_der = token_der  # the token `resp` was parsed from (the check's bytes)

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def status_string(self) -> list[str]:
        return self._resp.status_string

    @functools.cached_property
    def tst_info(self) -> TimeStampTokenInfo:
        return self._resp.tst_info

    @functools.cached_property
    def signed_data(self) -> SignedData:
        return _SignedDataOnce(self._resp.signed_data)

    def time_stamp_token(self) -> bytes:
        return self._token_der  # as parsed (the library would serialize its parse again)

    def as_bytes(self) -> bytes:
        return self._resp.as_bytes()


class _SignedDataOnce(SignedData):
    """rfc3161-client's SignedData with its certificates and SignerInfos built once (its
    verifier reads them five times a check); each read gets a set of its own, as from the
    library (the verifier takes a SignerInfo out of the set it is given)."""

    def __init__(self, sd: SignedData) -> None:
        self._sd = sd
        self._certificates = frozenset(sd.certificates)
        self._signer_infos = frozenset(sd.signer_infos)

    @property
    def version(self) -> int:
        return self._sd.version

    @property
    def digest_algorithms(self) -> set[x509.ObjectIdentifier]:
        return self._sd.digest_algorithms

    @property
    def certificates(self) -> set[bytes]:
        return set(self._certificates)

    @property
    def signer_infos(self) -> set[Any]:
        return set(self._signer_infos)


def _name_str(gn: asn1x509.GeneralName) -> str | None:
    if _absent(gn):
        return None
    if gn.name == "directory_name":
        parts = []
        for rdn in reversed(list(gn.chosen.chosen)):
            for atv in rdn:
                t = atv["type"]
                label = {
                    "common_name": "CN",
                    "organization_name": "O",
                    "organizational_unit_name": "OU",
                    "country_name": "C",
                    "locality_name": "L",
                    "state_or_province_name": "ST",
                }.get(t.native, t.dotted)
                val = str(atv["value"].native).replace(",", "\\,")
                parts.append(f"{label}={val}")
        return ",".join(parts)
    return f"{gn.name}:{gn.native}"


def verify_response(
    response_der: bytes,
    *,
    digest: bytes,
    nonce: int | None,
    policy_oid: str | None = None,
    trust_roots: Sequence[x509.Certificate],
    now: float | None = None,
    max_clock_skew: float | None = 300.0,
    hash_name: str | None = "sha256",
    signer_certs: Sequence[x509.Certificate] = (),
    intermediates: Sequence[x509.Certificate] = (),
    token_der: bytes | None = None,
) -> TokenInfo:
    """Check a TimeStampResp for `digest`; raise ValidationError naming the failed check.

    Checks: status granted; TSTInfo content type; imprint algorithm and value; nonce (when
    given); policy (when configured); signer certificate found (embedded, or among
    `signer_certs`/`trust_roots` when the token embeds none); signed attributes and
    signature; ESS signing certificate; critical timeStamping EKU; path to `trust_roots`
    at gen_time; gen_time within `max_clock_skew` seconds of `now` (skipped when either is
    None). `hash_name=None` accepts any supported imprint algorithm.
    """
    if not trust_roots:
        raise _fail("chain", "no trust roots configured")
    raw_token, token, tst, gen_time = _parse_response(response_der, token_der)
    sd = token["content"]
    got_hash, want = _check_imprint(tst, digest, hash_name)
    got_nonce = tst["nonce"].native
    if nonce is not None and got_nonce != nonce:
        raise _fail("nonce", f"expected {nonce}, got {got_nonce}")
    policy = tst["policy"].dotted
    if policy_oid and policy != policy_oid:
        raise _fail("policy", f"expected {policy_oid}, got {policy}")
    extra = [*intermediates, *_supplied_signer(sd, [*signer_certs, *trust_roots])]
    normalized = _normalize(token, raw_token, extra)
    assert normalized.signer_der is not None
    signer = _certificate(normalized.signer_der)
    _check_signed(sd, normalized, signer, intermediates, trust_roots, gen_time, want)
    _check_skew(gen_time, now, max_clock_skew)
    return TokenInfo(
        gen_time=gen_time,
        serial=tst["serial_number"].native,
        policy=policy,
        tsa_name=_remembered(("tsa", tst["tsa"].contents), lambda: _name_str(tst["tsa"])),  # as sent: its dump re-encodes
        hash_name=got_hash,
        nonce=got_nonce,
        signer_cert_sha256=hashlib.sha256(normalized.signer_der).hexdigest(),
        token_der=raw_token,
    )


def _parse_response(
    response_der: bytes, token_der: bytes | None
) -> tuple[bytes, cms.ContentInfo, asn1tsp.TSTInfo, datetime]:
    """A granted TimeStampResp's token (its DER, the token parsed, its TSTInfo, its gen_time
    in UTC), every field the checks read parsed now so that malformed content fails here.
    The one parse of the token: every check reads it (parsing again cost most of a check's
    time, issue 24)."""
    try:
        resp = _TimeStampResp.load(response_der, strict=True)
        status = resp["status"]["status"].native
    except (ValueError, TypeError) as exc:
        raise _fail("parse", f"not a DER TimeStampResp: {exc}") from None
    if status != "granted":
        texts = resp["status"]["status_string"].native or []
        fail_info = resp["status"]["fail_info"].native
        raise _fail(
            "status",
            f"expected granted, got {status}"
            + (f" ({'; '.join(texts)})" if texts else "")
            + (f" failInfo={sorted(fail_info)}" if fail_info else ""),
        )
    try:
        token = resp["time_stamp_token"]
        if _absent(token):
            raise _fail("token", "granted reply carries no TimeStampToken")
        raw_token = token_der if token_der is not None else token.dump()
        sd = token["content"]
        eci = sd["encap_content_info"]
        if eci["content_type"].dotted != _ID_CT_TSTINFO:
            raise _fail(
                "token", f"content type {eci['content_type'].dotted}, expected id-ct-TSTInfo"
            )
        tst = asn1tsp.TSTInfo.load(eci["content"].contents)
        _ = tst["policy"].dotted, tst["serial_number"].native, tst["nonce"].native
        imprint = tst["message_imprint"]
        _ = imprint["hash_algorithm"]["algorithm"].dotted, imprint["hashed_message"].native
        gen_time = _generalized_time(tst["gen_time"])
    except ValidationError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise _fail("parse", f"malformed TimeStampToken: {exc}") from None
    return raw_token, token, tst, gen_time


_DER_TIME = re.compile(rb"(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(?:\.(\d{0,5}[1-9]))?Z")


def _generalized_time(value: asn1core.GeneralizedTime) -> datetime:
    """A GeneralizedTime in UTC as asn1crypto reads it, its DER form (YYYYMMDDHHMMSS, a
    fraction of up to six digits, Z: RFC 3161 2.4.2) read without asn1crypto's general
    parser, which was a third of a TSTInfo's parse; any other form is left to that."""
    found = _DER_TIME.fullmatch(value.contents or b"")
    if found is None or found[1] == b"0000":  # year 0: asn1crypto's extended_datetime
        native: datetime = value.native
        return native.astimezone(UTC)
    fraction = found[7] or b""
    return datetime(
        int(found[1]), int(found[2]), int(found[3]), int(found[4]), int(found[5]), int(found[6]),
        int(fraction.ljust(6, b"0")), tzinfo=UTC,
    )


def _check_imprint(tst: asn1tsp.TSTInfo, digest: bytes, hash_name: str | None) -> tuple[str, bytes]:
    """The imprint's hash name and value, which must be those of `digest`."""
    mi = tst["message_imprint"]
    algo_oid = mi["hash_algorithm"]["algorithm"].dotted
    got_hash = _HASH_BY_OID.get(algo_oid)
    if got_hash is None:
        raise _fail("imprint", f"unsupported imprint hash algorithm {algo_oid}")
    if hash_name is not None and got_hash != hash_name:
        raise _fail("imprint", f"hash algorithm expected {hash_name}, got {got_hash}")
    want = imprint_for(digest, got_hash)
    got = mi["hashed_message"].native
    if got != want:
        raise _fail("imprint", f"expected {got_hash}:{want.hex()}, got {got_hash}:{got.hex()}")
    return got_hash, want


def _supplied_signer(sd: cms.SignedData, supplied: list[x509.Certificate]) -> list[x509.Certificate]:
    """[] when the token embeds its signer's certificate, else [the supplied one that matches]."""
    sid = sd["signer_infos"][0]["sid"] if len(sd["signer_infos"]) else None
    if sid is None:
        raise _fail("signature", "the token has no SignerInfo")
    key = ("supplied", sd["certificates"].dump(), sid.dump(), *supplied)
    found: tuple[x509.Certificate, ...] = _remembered(key, lambda: tuple(_find_signer(sd, sid, supplied)))
    return list(found)


def _find_signer(
    sd: cms.SignedData, sid: cms.SignerIdentifier, supplied: list[x509.Certificate]
) -> list[x509.Certificate]:
    if not _absent(sd["certificates"]):
        for choice in sd["certificates"]:
            if choice.name == "certificate" and signer_matches(sid, choice.chosen):
                return []
    match = next(
        (c for c in supplied if signer_matches(sid, asn1x509.Certificate.load(_der(c)))),
        None,
    )
    if match is None:
        who = (
            f"issuer={_name_str(asn1x509.GeneralName(name='directory_name', value=sid.chosen['issuer']))} "
            f"serial={sid.chosen['serial_number'].native}"
            if sid.name == "issuer_and_serial_number"
            else f"subjectKeyIdentifier={sid.chosen.native.hex()}"
        )
        raise _fail(
            "signer certificate",
            f"the token embeds no certificate for its signer ({who}) and no configured "
            "signer certificate or trust root matches",
        )
    return [match]


def _check_signed(
    sd: cms.SignedData,
    normalized: _Normalized,
    signer: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trust_roots: Sequence[x509.Certificate],
    gen_time: datetime,
    want: bytes,
) -> None:
    """Signature, EKU and path to `trust_roots` at gen_time, and OpenSSL's second opinion
    on the normalized token when a strict parser can read it. `sd` is the token as sent,
    whose signed content normalization keeps byte for byte."""
    signer_der = normalized.signer_der  # the certificate as the token or the caller gave it
    assert signer_der is not None
    attrs = _check_signature(sd, signer, signer_der)
    _remembered(("eku", signer_der), lambda: _check_eku(signer))
    untrusted = [_certificate(der) for der in normalized.certificates]
    anchor = _check_chain(signer, untrusted + list(intermediates), trust_roots, gen_time)
    if attrs == sorted(attrs):  # in DER SET order, else no strict parser reads it (module doc)
        # Of several roots of one name (the replicas' local TSAs), OpenSSL would try the
        # first it finds and stop there: it gets the one our path ends at.
        given = tuple(trust_roots)
        verifier, roots = _remembered(
            ("openssl", anchor, *given), lambda: _openssl_verifier(given, anchor)
        )
        _second_opinion(cms.ContentInfo.load(normalized.token_der).dump(), want, verifier, roots)


def _check_skew(gen_time: datetime, now: float | None, max_clock_skew: float | None) -> None:
    if now is None or max_clock_skew is None:
        return
    skew = gen_time.timestamp() - now
    if abs(skew) > max_clock_skew:
        ours = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
        raise _fail(
            "clock skew",
            f"gen_time {gen_time.isoformat().replace('+00:00', 'Z')} is {skew:+.1f}s from our "
            f"clock {ours}; expected within ±{max_clock_skew:g}s",
        )


def verify_token(
    token_der: bytes,
    *,
    digest: bytes,
    trust_roots: Sequence[x509.Certificate],
    policy_oid: str | None = None,
    nonce: int | None = None,
    hash_name: str | None = None,
    signer_certs: Sequence[x509.Certificate] = (),
    intermediates: Sequence[x509.Certificate] = (),
) -> TokenInfo:
    """The offline re-check of a stored TimeStampToken (no clock-skew check)."""
    try:
        wrapped = wrap_token(token_der)
    except (ValueError, TypeError) as exc:
        raise _fail("parse", f"not a DER TimeStampToken: {exc}") from None
    return verify_response(
        wrapped,
        digest=digest,
        nonce=nonce,
        policy_oid=policy_oid,
        trust_roots=trust_roots,
        now=None,
        max_clock_skew=None,
        hash_name=hash_name,
        signer_certs=signer_certs,
        intermediates=intermediates,
        token_der=token_der,
    )


def verify_attestation(
    attestation: dict[str, Any],
    *,
    digest: bytes,
    trust_roots: Sequence[x509.Certificate],
    policy_oid: str | None = None,
    signer_certs: Sequence[x509.Certificate] = (),
    intermediates: Sequence[x509.Certificate] = (),
) -> TokenInfo:
    """Re-check a receipt attestation: the token (with the stored nonce) and that every field
    the receipt states agrees with the token."""
    if attestation.get("scheme") != "rfc3161":
        raise _fail("attestation", f"scheme expected rfc3161, got {attestation.get('scheme')!r}")
    try:
        token_der = base64.b64decode(attestation["token"], validate=True)
    except (KeyError, ValueError, TypeError) as exc:
        raise _fail("attestation", f"token is missing or not base64: {exc}") from None
    nonce_text = attestation.get("nonce")
    try:
        nonce = int(nonce_text) if nonce_text is not None else None
    except (TypeError, ValueError):
        raise _fail("attestation", f"nonce {nonce_text!r} is not an integer") from None
    info = verify_token(
        token_der,
        digest=digest,
        trust_roots=trust_roots,
        policy_oid=policy_oid,
        nonce=nonce,
        hash_name=attestation.get("hash"),
        signer_certs=signer_certs,
        intermediates=intermediates,
    )
    stated = token_attestation(info, nonce)
    for key in ("gen_time", "serial", "policy", "tsa", "hash", "tsa_cert_sha256"):
        if key in attestation and attestation[key] != stated[key]:
            raise _fail(
                "attestation",
                f"{key} in the receipt is {attestation[key]!r}, the token says {stated[key]!r}",
            )
    return info


def load_certs(pem_or_der: bytes) -> list[x509.Certificate]:
    """All certificates of a PEM bundle (or a single DER certificate)."""
    if b"-----BEGIN" in pem_or_der:
        return x509.load_pem_x509_certificates(pem_or_der)
    return [x509.load_der_x509_certificate(pem_or_der)]
