"""`local:<name>`: the embedded RFC 3161 time-stamp authority, for development only.

It issues real TimeStampTokens (CMS SignedData over a TSTInfo, signed attributes
contentType, messageDigest and signingCertificateV2, the certificate embedded) that pass
our verifier and `openssl ts -verify`, but the key lives next to the scheduler's data: a
token from it proves nothing to anybody else. It is labelled as a development target
everywhere (its entry in core/anchors/local/scheme.py, the certificate's CN, the attestation's
`development`).

Files, shared by every `local:<name>` target of a data dir (one CA file to hand to
`openssl ts -verify`; its subject names the key, `OU=key <16 hex>`, so the certificates of
several data dirs, a cluster's replicas, can share one CAfile; a certificate made before
that has the CN only, and `verify --explain` picks the one a token needs):

    <data_dir>/tsa/local-tsa.key   EC P-256 private key, PKCS#8 PEM, mode 0600,
                                   created atomically (temp file + link, never clobbered)
    <data_dir>/tsa/local-tsa.pem   self-signed certificate (critical EKU timeStamping)
    <data_dir>/tsa/serial          high-water mark of reserved serial numbers

Check a receipt's token by hand:

    openssl ts -verify -digest <anchored_root hex> -in token.der -token_in \\
        -CAfile <data_dir>/tsa/local-tsa.pem

Serial numbers increase across restarts: the TSA reserves blocks of SERIAL_BLOCK numbers
by raising the high-water mark in `serial` (under an flock, written atomically) before it
issues any of them, so a crash skips numbers but never reuses one. genTime comes from the
injected clock, so tests on a FakeClock get deterministic times. Anchoring goes through the
same path as a real TSA: build_request -> issue the reply -> verify_response. `anchor`
makes the key, the certificate and each serial block on a thread (their fsyncs must not
hold the engine's loop); `respond` and `certificate`, synchronous, make them in place.

If the key is deleted a new key and certificate are generated; receipts signed by the old
key then no longer verify against the new certificate (keep the old PEM to check them).

Policies: the TSA issues its tokens under LOCAL_POLICY_OID unless the request names another
policy (`reqPolicy`, from a cadence's `policyOID`) among the ones it serves: its own and
those listed in `targets.local.<name>.policies`. A request for any other policy is
rejected (PKIFailureInfo unacceptedPolicy), as a real TSA does.

Verifying writes nothing: `verify()` and `verify_local_token()` read the existing
certificate (or the one handed in) and never create a key, a certificate or a folder; a
missing certificate is CannotVerify, naming the file to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asn1crypto import core as asn1core
from asn1crypto import tsp as asn1tsp
from asn1crypto import x509 as asn1x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.anchors.base import (
    Attestation,
    CannotVerify,
    JournalNote,
    VerificationFailed,
)
from core.anchors.tsp import (
    HASHES,
    build_request,
    load_certs,
    new_nonce,
    token_attestation,
    verify_attestation,
    verify_response,
)
from core.clock import Clock
from core.errors import ValidationError

__all__ = [
    "LOCAL_POLICY_OID",
    "LocalTSA",
    "SUBJECT_CN",
    "certificate_path",
    "key_label",
    "read_certificates",
    "verify_local_token",
]

SUBJECT_CN = "VaultMesh local TSA (development only, not a trust anchor)"
# 2.999 is the ITU-T/ISO "example" arc (X.660): a policy that promises nothing.
LOCAL_POLICY_OID = "2.999.3161.1"
KEY_NAME = "local-tsa.key"
CERT_NAME = "local-tsa.pem"
SERIAL_NAME = "serial"
SERIAL_BLOCK = 1000
_NOT_BEFORE = datetime(2000, 1, 1, tzinfo=UTC)
_NOT_AFTER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # RFC 5280 4.1.2.5: no expiry

# One lock per serial file for the instances of one process; flock covers other processes.
_serial_locks: dict[Path, threading.Lock] = {}
_serial_locks_guard = threading.Lock()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int, *, clobber: bool) -> bool:
    """Write `data` to `path` via a temp file in the same folder (fsync, then rename or link).

    With clobber=False an existing file wins (returns False) so that two processes racing to
    create the key end up with the same one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.write(fd, data)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        if clobber:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return True


def certificate_path(data_dir: Path | str) -> Path:
    """Where a data dir's local TSA certificate is (the CA file for its receipts)."""
    return Path(data_dir) / "tsa" / CERT_NAME


def read_certificates(path: Path, target: str) -> list[x509.Certificate]:
    """The certificates of an existing PEM file, read only; CannotVerify when there are none."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CannotVerify(
            f"{target}: there is no local TSA certificate at {path}; pass --trust-bundle with "
            "the local-tsa.pem of the data dir that wrote the receipt, or --data-dir"
        ) from None
    except OSError as exc:
        raise CannotVerify(f"{target}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        certs = load_certs(data)
    except ValueError:
        certs = []
    if not certs:
        raise CannotVerify(f"{target}: {path} holds no PEM certificate")
    return certs


def verify_local_token(
    attestation: dict[str, Any],
    digest: bytes,
    trust_roots: list[x509.Certificate],
    target: str,
    *,
    policy: str | None = None,
) -> datetime:
    """Check a `local:` attestation against the given certificates; VerificationFailed if wrong,
    else its genTime.

    The token must be under `policy` (the one its receipt says was requested), else under
    the TSA's own LOCAL_POLICY_OID."""
    try:
        return verify_attestation(
            attestation, digest=digest, trust_roots=trust_roots, policy_oid=policy or LOCAL_POLICY_OID
        ).gen_time
    except ValidationError as exc:
        raise VerificationFailed(f"{target}: {exc}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise VerificationFailed(f"{target}: cannot check the token: {exc}") from None


def key_label(key: ec.EllipticCurvePublicKey) -> str:
    """`key <16 hex>`: the first 64 bits of the SHA-256 of the public key (its DER
    SubjectPublicKeyInfo), the certificate's OU: each data dir's certificate has a name of
    its own, so that a CAfile holding a cluster's certificates gives OpenSSL no choice."""
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"key {hashlib.sha256(spki).hexdigest()[:16]}"


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    pub = key.public_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, SUBJECT_CN),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, key_label(pub)),
    ])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        # An end-entity certificate that is its own trust anchor: `openssl ts -verify
        # -CAfile` accepts a self-signed leaf as the anchor, and OpenSSL's timestamp-signing
        # purpose wants keyUsage digitalSignature only and a critical timeStamping-only EKU.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(key, hashes.SHA256())
    )


class LocalTSA:
    """The embedded development TSA behind `local:<name>` (implements core.anchors.base.Backend)."""

    def __init__(
        self,
        data_dir: Path | str,
        name: str,
        clock: Clock,
        *,
        max_clock_skew: float = 5.0,
        policies: Iterable[str] = (),
    ) -> None:
        self.target = f"local:{name}"
        self.name = name
        # The policies this TSA issues tokens under: its own first (the default), then more.
        self.policies = tuple(dict.fromkeys((LOCAL_POLICY_OID, *policies)))
        self.tsa_dir = Path(data_dir) / "tsa"
        self.key_path = self.tsa_dir / KEY_NAME
        self.cert_path = self.tsa_dir / CERT_NAME
        self.serial_path = self.tsa_dir / SERIAL_NAME
        self._clock = clock
        self.max_clock_skew = max_clock_skew
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._cert: x509.Certificate | None = None
        self._cert_asn1: asn1x509.Certificate | None = None
        self._serial_next = 0
        self._serial_limit = 0  # exclusive; nothing reserved yet
        self._key_lock = threading.Lock()  # the first key is made once, on a thread or the caller's

    # --- Backend ---------------------------------------------------------------------------

    async def anchor(
        self, digest: bytes, note: JournalNote, *, policy: str | None = None
    ) -> Attestation:
        if len(digest) != 32:
            raise ValidationError(f"local TSA anchors 32-byte digests, got {len(digest)} bytes")
        await self._ready()
        nonce = new_nonce()
        request = build_request(digest, nonce=nonce, policy_oid=policy, cert_req=True)
        reply = self.respond(request)
        info = verify_response(
            reply,
            digest=digest,
            nonce=nonce,
            policy_oid=policy or LOCAL_POLICY_OID,
            trust_roots=[self.certificate],
            now=self._clock.now(),
            max_clock_skew=self.max_clock_skew,
            hash_name="sha256",
        )
        data = token_attestation(info, nonce)
        data["development"] = True
        return Attestation(data=data, status="confirmed", confirmations=0)

    async def recover(self, digest: bytes, notes: dict[str, Any]) -> Attestation | None:
        return None  # nothing leaves the process before the attestation exists

    async def verify(
        self,
        attestation: dict[str, Any],
        digest: bytes,
        *,
        required: int | None = None,
        policy: str | None = None,
    ) -> datetime | None:
        # Read-only: the certificate this TSA already has, never a new key (module doc).
        trust = [self._cert] if self._cert is not None else read_certificates(self.cert_path, self.target)
        return verify_local_token(attestation, digest, trust, self.target, policy=policy)

    async def close(self) -> None:
        return None

    # --- the TSA ---------------------------------------------------------------------------

    @property
    def certificate(self) -> x509.Certificate:
        self._ensure_key()
        assert self._cert is not None
        return self._cert

    async def _ready(self) -> None:
        """The key, the certificate and a block of serials, their files made and fsync'd on a
        thread: the first call of a data dir generates a key and writes three files (0.1-0.2 s
        on a loaded disk), which the engine's loop must not wait for (issue 24, /livez)."""
        if self._key is None:
            await asyncio.to_thread(self._ensure_key)
        if self._serial_next >= self._serial_limit:
            block = await asyncio.to_thread(self._reserve_block)
            if self._serial_next >= self._serial_limit:  # else another call refilled it first
                self._serial_next, self._serial_limit = block
            # A block not used is skipped, never reused (module doc).

    def _ensure_key(self) -> None:
        if self._key is not None:
            return
        with self._key_lock:
            if self._key is None:
                self._load_key()

    def _load_key(self) -> None:
        self.tsa_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tsa_dir.mkdir(mode=0o700, exist_ok=True)
        if not self.key_path.exists():
            fresh = ec.generate_private_key(ec.SECP256R1())
            pem = fresh.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_atomic(self.key_path, pem, 0o600, clobber=False)
        if self.key_path.stat().st_mode & 0o077:
            os.chmod(self.key_path, 0o600)
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValidationError(f"{self.key_path} is not an EC private key")
        cert = None
        if self.cert_path.exists():
            try:
                cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            except ValueError:
                cert = None
            if cert is not None and cert.public_key() != key.public_key():
                cert = None  # the key was replaced: issue a certificate for the new one
        if cert is None:
            cert = _self_signed(key)
            pem = cert.public_bytes(serialization.Encoding.PEM)
            _write_atomic(self.cert_path, pem, 0o644, clobber=True)
        self._cert = cert
        self._cert_asn1 = asn1x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
        self._cert_der = self._cert_asn1.dump()
        self._subject_der = self._cert_asn1.subject.dump()
        issuer_der = self._cert_asn1.issuer.dump()
        serial = _int(self._cert_asn1.serial_number)
        self._issuer_and_serial = _seq(issuer_der, serial)
        # ESSCertIDv2 with hashAlgorithm omitted (DEFAULT sha256) and issuerSerial.
        self._ess_signing_cert_v2 = _seq(
            _seq(
                _seq(
                    _octets(hashlib.sha256(self._cert_der).digest()),
                    _seq(_seq(_tlv(0xA4, issuer_der)), serial),
                )
            )
        )
        self._key = key  # last: a caller that sees it sees everything above

    def _next_serial(self) -> int:
        if self._serial_next >= self._serial_limit:
            self._serial_next, self._serial_limit = self._reserve_block()
        serial = self._serial_next
        self._serial_next += 1
        return serial

    def _reserve_block(self) -> tuple[int, int]:
        """Reserve the next SERIAL_BLOCK serials in the serial file: (first, limit exclusive).
        Touches no field of the TSA, so it may run on a thread while the loop issues tokens."""
        path = self.serial_path.resolve()
        with _serial_locks_guard:
            lock = _serial_locks.setdefault(path, threading.Lock())
        lock_path = path.with_name(path.name + ".lock")
        with lock, open(lock_path, "a+b") as lf:
            fcntl.flock(lf.fileno(), fcntl.LOCK_EX)
            try:
                try:
                    high = int(path.read_text().strip() or "0")
                except FileNotFoundError:
                    high = 0
                new_high = high + SERIAL_BLOCK
                _write_atomic(path, f"{new_high}\n".encode(), 0o644, clobber=True)
            finally:
                fcntl.flock(lf.fileno(), fcntl.LOCK_UN)
        return high + 1, new_high + 1

    def _reject(self, fail_bit: int, text: str) -> bytes:
        """A rejection TimeStampResp: PKIStatusInfo {rejection, statusString, failInfo}."""
        nbytes = fail_bit // 8 + 1
        bits = bytearray(nbytes)
        bits[fail_bit // 8] = 0x80 >> (fail_bit % 8)
        fail_info = _tlv(0x03, bytes([7 - fail_bit % 8]) + bytes(bits))
        return _seq(_seq(_int(2), _seq(_tlv(0x0C, text.encode())), fail_info))

    def respond(self, request_der: bytes) -> bytes:
        """Answer a DER TimeStampReq with a DER TimeStampResp (what a TSA server does)."""
        self._ensure_key()
        assert self._key is not None
        try:
            req = asn1tsp.TimeStampReq.load(request_der)
            for field in ("version", "message_imprint", "req_policy", "nonce", "cert_req"):
                _ = req[field].native  # parse now so malformed content is rejected here
        except (ValueError, TypeError):
            return self._reject(_FAIL_BAD_DATA_FORMAT, "not a DER TimeStampReq")
        algo = req["message_imprint"]["hash_algorithm"]["algorithm"].native
        imprint = req["message_imprint"]["hashed_message"].native
        if algo not in HASHES or len(imprint) != HASHES[algo][2]:
            return self._reject(_FAIL_BAD_ALG, f"unsupported imprint {algo}/{len(imprint)} bytes")
        policy = req["req_policy"].dotted if req["req_policy"].native else LOCAL_POLICY_OID
        if policy not in self.policies:
            return self._reject(
                _FAIL_UNACCEPTED_POLICY,
                f"{self.target} does not serve policy {policy}; it serves {', '.join(self.policies)} "
                f"(add it to targets.local.{self.name}.policies)",
            )

        now = self._clock.now()
        nonce = req["nonce"].native
        tst_der = _seq(
            _int(1),
            _oid(policy),
            _seq(_seq(_oid(HASHES[algo][0]), _NULL), _octets(imprint)),
            _int(self._next_serial()),
            _generalized_time(now),
            _seq(_tlv(0x80, _int(1)[2:])),  # accuracy: millis [0] IMPLICIT 1
            *([_int(nonce)] if nonce is not None else []),
            _tlv(0xA0, _tlv(0xA4, self._subject_der)),  # tsa [0] directoryName [4]
        )
        signed_attrs = sorted(
            [
                _seq(_oid(_OID_CONTENT_TYPE), _set(_oid(_OID_TSTINFO))),
                _seq(_oid(_OID_MESSAGE_DIGEST), _set(_octets(hashlib.sha256(tst_der).digest()))),
                _seq(
                    _oid(_OID_SIGNING_CERT_V2),
                    _set(self._ess_signing_cert_v2),
                ),
            ]
        )
        signature = self._key.sign(_set(*signed_attrs), ec.ECDSA(hashes.SHA256()))
        signer_info = _seq(
            _int(1),
            self._issuer_and_serial,
            _seq(_oid(HASHES["sha256"][0]), _NULL),
            _tlv(0xA0, b"".join(signed_attrs)),
            _seq(_oid(_OID_ECDSA_SHA256)),
            _octets(signature),
        )
        certs = _tlv(0xA0, self._cert_der) if req["cert_req"].native else b""
        signed_data = _seq(
            _int(3),
            _set(_seq(_oid(HASHES["sha256"][0]), _NULL)),
            _seq(_oid(_OID_TSTINFO), _tlv(0xA0, _octets(tst_der))),
            certs,
            _set(signer_info),
        )
        token = _seq(_oid(_OID_SIGNED_DATA), _tlv(0xA0, signed_data))
        return _seq(_seq(_int(0)), token)


# --- a minimal DER writer for the fixed shapes above (asn1crypto's object model costs ~20 ms
# per token; these few lines cost ~0.1 ms). Our verifier and OpenSSL re-parse every token.

_NULL = b"\x05\x00"
_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_TSTINFO = "1.2.840.113549.1.9.16.1.4"
_OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_OID_SIGNING_CERT_V2 = "1.2.840.113549.1.9.16.2.47"
_OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
_FAIL_BAD_ALG, _FAIL_BAD_DATA_FORMAT, _FAIL_UNACCEPTED_POLICY = 0, 5, 15  # PKIFailureInfo bits


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _set(*items: bytes) -> bytes:
    return _tlv(0x31, b"".join(sorted(items)))  # DER: SET OF sorted by encoding


def _int(value: int) -> bytes:
    if value < 0:
        raise ValueError("negative INTEGER not needed here")
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _octets(value: bytes) -> bytes:
    return _tlv(0x04, value)


def _oid(dotted: str) -> bytes:
    der: bytes = asn1core.ObjectIdentifier(dotted).dump()  # asn1crypto is untyped
    return der


def _generalized_time(epoch: float) -> bytes:
    """GeneralizedTime in UTC, millisecond precision, DER form (no trailing zeros)."""
    millis = round(epoch * 1000)
    moment = datetime.fromtimestamp(millis // 1000, UTC)
    text = moment.strftime("%Y%m%d%H%M%S")
    if millis % 1000:
        text += "." + f"{millis % 1000:03d}".rstrip("0")
    return _tlv(0x18, (text + "Z").encode("ascii"))
