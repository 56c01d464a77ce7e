"""Test PKI and OpenSSL TSA helpers shared by the RFC 3161 tests.

Everything is made on the fly with `cryptography` (no fixtures on disk): a root CA, an
optional intermediate, a TSA certificate with the critical timeStamping-only EKU that
OpenSSL's `ts -reply` insists on, and TLS server certificates for 127.0.0.1. `openssl ts`
is driven through subprocess with a config whose `certs =` line adds the chain, which is
what makes its reply's certificate SET not DER-sorted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asn1crypto import cms
from asn1crypto import tsp as asn1tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOT_BEFORE = datetime(2000, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2100, 1, 1, tzinfo=UTC)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def new_key(kind: str = "ec") -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str, org: str = "VaultMesh test PKI") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


def _builder(subject: x509.Name, issuer: x509.Name, key: PrivateKey) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _aki(issuer: Issued) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())


def make_root(cn: str = "Test Root CA", key_kind: str = "ec") -> Issued:
    key = new_key(key_kind)
    name = _name(cn)
    cert = (
        _builder(name, name, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_intermediate(
    issuer: Issued, cn: str = "Test Intermediate CA", key_kind: str = "ec"
) -> Issued:
    key = new_key(key_kind)
    cert = (
        _builder(_name(cn), issuer.cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(_aki(issuer), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_tsa(
    issuer: Issued, cn: str = "Test TSA", key_kind: str = "rsa", *, eku_critical: bool = True
) -> Issued:
    """A TSA end-entity certificate: digitalSignature, critical timeStamping-only EKU."""
    key = new_key(key_kind)
    cert = (
        _builder(_name(cn), issuer.cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=eku_critical
        )
        .add_extension(_aki(issuer), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_tls_server(issuer: Issued, host: str = "127.0.0.1") -> Issued:
    """A TLS server certificate for an IP address or a DNS name."""
    key = new_key("ec")
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    cert = (
        _builder(_name(host), issuer.cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_aki(issuer), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert, key)


@dataclass
class TSAPKI:
    """A TSA and its CA chain, written as PEM files under `directory`."""

    directory: Path
    root: Issued
    tsa: Issued
    intermediate: Issued | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def chain(self) -> list[Issued]:
        """The CA certificates above the TSA, issuer first (what `certs =` adds)."""
        return [c for c in (self.intermediate, self.root) if c is not None]

    def path(self, name: str) -> Path:
        return self.files[name]


def build_tsa_pki(
    directory: Path, label: str, *, intermediate: bool = True, tsa_key: str = "rsa"
) -> TSAPKI:
    """Root (EC) [-> intermediate (EC)] -> TSA (RSA by default) and these files:

    root.pem, chain.pem (intermediate + root), tsa.pem, tsa.key, bundle.pem (the root
    alone: what a trust bundle holds when the token embeds its chain), bundle-full.pem
    (root + intermediate + TSA certificate: for tokens that embed no certificate).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    root = make_root(f"{label} Root CA")
    inter = make_intermediate(root, f"{label} Intermediate CA") if intermediate else None
    tsa = make_tsa(inter or root, f"{label} TSA", key_kind=tsa_key)
    pki = TSAPKI(directory, root, tsa, inter)
    files = {
        "root.pem": root.pem,
        "chain.pem": b"".join(c.pem for c in pki.chain),
        "tsa.pem": tsa.pem,
        "tsa.key": tsa.key_pem,
        "bundle.pem": root.pem,
        "bundle-full.pem": root.pem + (inter.pem if inter else b"") + tsa.pem,
    }
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        if name.endswith(".key"):
            path.chmod(0o600)
        pki.files[name] = path
    return pki


# --- OpenSSL TSA ------------------------------------------------------------------------------

DEFAULT_POLICY = "1.3.6.1.4.1.55555.3161.1"
OTHER_POLICIES = ("1.3.6.1.4.1.55555.3161.2", "1.3.6.1.4.1.55555.3161.3")


def write_openssl_ts_config(
    path: Path,
    pki: TSAPKI,
    *,
    default_policy: str = DEFAULT_POLICY,
    other_policies: tuple[str, ...] = OTHER_POLICIES,
    ess_cert_id_alg: str = "sha256",
) -> Path:
    """An `openssl ts` config whose `certs =` line adds the CA chain to every reply."""
    work = path.parent
    serial = work / f"{path.stem}.serial"
    if not serial.exists():
        serial.write_text("01\n")
    path.write_text(
        f"""\
[ tsa ]
default_tsa = tsa_config

[ tsa_config ]
serial = {serial}
crypto_device = builtin
signer_cert = {pki.path("tsa.pem")}
certs = {pki.path("chain.pem")}
signer_key = {pki.path("tsa.key")}
signer_digest = sha256
default_policy = {default_policy}
other_policies = {", ".join(other_policies)}
digests = sha256, sha384, sha512
accuracy = secs:1, millisecs:0, microsecs:0
clock_precision_digits = 3
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = {ess_cert_id_alg}
"""
    )
    return path


def openssl_ts_reply(query: bytes, config: Path, pki: TSAPKI, work: Path) -> bytes:
    """Run `openssl ts -reply` on a DER query; returns the DER TimeStampResp."""
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        qf = Path(tmp) / "query.tsq"
        rf = Path(tmp) / "reply.tsr"
        qf.write_bytes(query)
        proc = subprocess.run(
            [
                "openssl",
                "ts",
                "-reply",
                "-config",
                str(config),
                "-queryfile",
                str(qf),
                "-signer",
                str(pki.path("tsa.pem")),
                "-inkey",
                str(pki.path("tsa.key")),
                "-chain",
                str(pki.path("chain.pem")),
                "-out",
                str(rf),
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0 or not rf.exists():
            raise RuntimeError(f"openssl ts -reply failed: {proc.stderr.decode(errors='replace')}")
        return rf.read_bytes()


def openssl_ts_verify(
    digest_hex: str, token_file: Path, ca_file: Path, untrusted: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`openssl ts -verify -digest <hex> -in <token> -token_in -CAfile <ca>`."""
    cmd = [
        "openssl",
        "ts",
        "-verify",
        "-digest",
        digest_hex,
        "-in",
        str(token_file),
        "-token_in",
        "-CAfile",
        str(ca_file),
    ]
    if untrusted is not None:
        cmd += ["-untrusted", str(untrusted)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


# --- DER helpers -------------------------------------------------------------------------------


def rewrite_query(query: bytes, **changes: Any) -> bytes:
    """A TimeStampReq with fields replaced: nonce=, cert_req=, hashed_message=, req_policy=."""
    req = asn1tsp.TimeStampReq.load(query)
    native: dict[str, Any] = {
        "version": "v1",
        "message_imprint": {
            "hash_algorithm": {
                "algorithm": req["message_imprint"]["hash_algorithm"]["algorithm"].native
            },
            "hashed_message": req["message_imprint"]["hashed_message"].native,
        },
        "cert_req": bool(req["cert_req"].native),
    }
    if req["nonce"].native is not None:
        native["nonce"] = req["nonce"].native
    if req["req_policy"].native is not None:
        native["req_policy"] = req["req_policy"].dotted
    if "hashed_message" in changes:
        native["message_imprint"]["hashed_message"] = changes.pop("hashed_message")
    native.update(changes)
    return asn1tsp.TimeStampReq(native).dump()


def query_fields(query: bytes) -> dict[str, Any]:
    req = asn1tsp.TimeStampReq.load(query)
    return {
        "hash": req["message_imprint"]["hash_algorithm"]["algorithm"].native,
        "imprint": req["message_imprint"]["hashed_message"].native,
        "nonce": req["nonce"].native,
        "cert_req": bool(req["cert_req"].native),
        "policy": req["req_policy"].dotted if req["req_policy"].native is not None else None,
    }


def token_of(reply: bytes) -> bytes:
    """The TimeStampToken (ContentInfo DER) of a granted reply, as sent."""
    return asn1tsp.TimeStampResp.load(reply)["time_stamp_token"].dump()


def token_certificates(token_der: bytes) -> list[bytes]:
    """The DER encodings of the certificates a token embeds, in the order it sends them."""
    sd = cms.ContentInfo.load(token_der)["content"]
    if sd["certificates"].native is None:
        return []
    return [c.dump() for c in sd["certificates"]]


def der_set_is_sorted(members: list[bytes]) -> bool:
    return members == sorted(members)


# --- CAs as real TSAs ship them ------------------------------------------------------------------


@dataclass(frozen=True)
class Deviation:
    """How a CA certificate departs from the Web PKI profile (all False: a textbook CA).

    Each one is something OpenSSL accepts at genTime and a public TSA has shipped."""

    bc_not_critical: bool = False  # basicConstraints present, cA true, not marked critical
    no_key_usage: bool = False  # no keyUsage extension at all
    ku_not_critical: bool = False  # keyUsage present, not critical
    no_aki: bool = False  # no authorityKeyIdentifier (an intermediate)
    no_ski: bool = False  # no subjectKeyIdentifier
    no_basic_constraints: bool = False  # a v3 root with no basicConstraints (refused on purpose)
    # refused on purpose too (README): a keyUsage without keyCertSign, an EKU without
    # time-stamping, a critical extension nobody knows
    no_key_cert_sign: bool = False
    server_auth_only: bool = False
    unknown_critical: bool = False


def make_ca(
    issuer: Issued | None, cn: str, deviation: Deviation = Deviation(), *, key_kind: str = "rsa"
) -> Issued:
    """A CA certificate (self-signed root when `issuer` is None) with `deviation`."""
    key = new_key(key_kind)
    name = _name(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if issuer is None else issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
    )
    if not deviation.no_ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    if not deviation.no_basic_constraints:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=not deviation.bc_not_critical
        )
    if not deviation.no_key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, not deviation.no_key_cert_sign, True, False, False),
            critical=not deviation.ku_not_critical,
        )
    if deviation.server_auth_only:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if deviation.unknown_critical:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.99"), b"\x05\x00"), critical=True
        )
    if issuer is not None and not deviation.no_aki:
        builder = builder.add_extension(_aki(issuer), critical=False)
    signer = key if issuer is None else issuer.key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def build_deviant_pki(
    directory: Path, label: str, *, root: Deviation = Deviation(), intermediate: Deviation | None = None
) -> TSAPKI:
    """build_tsa_pki's files for a chain whose root (and intermediate, when given) deviate."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    top = make_ca(None, f"{label} Root CA", root)
    inter = None if intermediate is None else make_ca(top, f"{label} Intermediate CA", intermediate)
    tsa = make_tsa(inter or top, f"{label} TSA")
    made = TSAPKI(directory, top, tsa, inter)
    files = {
        "root.pem": top.pem,
        "chain.pem": b"".join(c.pem for c in made.chain),
        "tsa.pem": tsa.pem,
        "tsa.key": tsa.key_pem,
        "bundle.pem": top.pem,
        "bundle-full.pem": top.pem + (inter.pem if inter else b"") + tsa.pem,
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
        made.files[name] = directory / name
    (directory / "tsa.key").chmod(0o600)
    return made


def sha1_intermediate(issuer: Issued, directory: Path, cn: str = "SHA-1 Intermediate CA") -> Issued:
    """An intermediate CA signed with SHA-1 by `issuer`, made by the openssl command line
    (cryptography no longer signs with SHA-1), as old TSA chains still carry."""
    directory.mkdir(parents=True, exist_ok=True)
    key = new_key("rsa")
    files = {name: directory / name for name in ("ca.key", "ca.pem", "i.key", "i.csr", "ext", "i.pem")}
    files["ca.key"].write_bytes(key_pem(issuer.key))
    files["ca.pem"].write_bytes(issuer.pem)
    files["i.key"].write_bytes(key_pem(key))
    files["ext"].write_text("basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n")
    for cmd in (
        ["openssl", "req", "-new", "-key", str(files["i.key"]), "-subj", f"/CN={cn}", "-out", str(files["i.csr"])],
        ["openssl", "x509", "-req", "-in", str(files["i.csr"]), "-CA", str(files["ca.pem"]), "-CAkey",
         str(files["ca.key"]), "-set_serial", "4242", "-days", "3650", "-sha1", "-extfile", str(files["ext"]),
         "-out", str(files["i.pem"])],
    ):
        subprocess.run(cmd, capture_output=True, check=True, timeout=30)
    return Issued(x509.load_pem_x509_certificate(files["i.pem"].read_bytes()), key)
