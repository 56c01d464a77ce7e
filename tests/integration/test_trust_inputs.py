"""Trust inputs as an auditor brings them (issue 23, item 3): certificates in several files in
any order, a cluster's `local:` receipts with every replica's certificate, and CAs as real
TSAs ship them (deviations OpenSSL accepts at genTime), over a real OpenSSL TSA on HTTP.

Every verdict is `vmsh-scheduler verify`'s, and OpenSSL's own `openssl ts -verify` is asked
too: what it accepts, verify accepts, except the refusals the README lists.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main
from core.anchors.rfc3161 import Rfc3161Target
from tests import pki
from tests.integration.tsa_servers import OpenSSLTSA
from tests.unit.test_verify_cli import anchor, ok_line, receipts_of

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

D = pki.Deviation

ACCEPTED = {
    # The public TSA: a root whose basicConstraints is not marked critical.
    "root basicConstraints not critical": (D(bc_not_critical=True), None),
    "intermediate basicConstraints not critical": (D(), D(bc_not_critical=True)),
    "root without keyUsage": (D(no_key_usage=True), None),
    "intermediate without keyUsage": (D(), D(no_key_usage=True)),
    "no key identifiers": (D(no_ski=True), D(no_ski=True, no_aki=True)),
}

REFUSED = {
    # OpenSSL refuses it too.
    "intermediate without basicConstraints": (
        (D(), D(no_basic_constraints=True)), False, "CA certificate has no basicConstraints"
    ),
    # OpenSSL takes any CAfile certificate as an anchor; we refuse on purpose (README).
    "root without basicConstraints": (
        (D(no_basic_constraints=True), None), True, "CA certificate has no basicConstraints"
    ),
}


def token_file(receipt: Path, folder: Path) -> Path:
    doc = json.loads(receipt.read_text())
    out = folder / (receipt.stem + ".tsr")
    out.write_bytes(base64.b64decode(doc["attestation"]["token"]))
    return out


def digest_hex(receipt: Path) -> str:
    return json.loads(receipt.read_text())["anchored_root"].split(":")[1]


def flip_signature(receipt: Path, folder: Path) -> Path:
    """The receipt with the last byte of its token's signature changed."""
    from asn1crypto import cms

    doc = json.loads(receipt.read_text())
    token = bytearray(base64.b64decode(doc["attestation"]["token"]))
    sig = cms.ContentInfo.load(bytes(token))["content"]["signer_infos"][0]["signature"].contents
    at = bytes(token).rindex(sig) + len(sig) - 1
    token[at] ^= 0x01
    doc["attestation"]["token"] = base64.b64encode(bytes(token)).decode()
    out = folder / f"tampered-{receipt.name}"
    out.write_text(json.dumps(doc))
    return out


def anchored_by(tsa: OpenSSLTSA, tmp: Path, path: str = "/tsa") -> Path:
    """One receipt of a real anchor by `tsa` (trusting its whole bundle while anchoring)."""
    settings = {"rfc3161:t": Rfc3161Target(url=tsa.url(path), trust_bundle=tsa.pki.path("bundle-full.pem"))}
    return receipts_of(anchor(tmp, {"ns": "rfc3161:t"}, settings), "ns")[0]


@pytest.fixture(scope="module")
def deviant_tsas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, OpenSSLTSA]]:
    cases = {name: chain for name, chain in ACCEPTED.items()}
    cases |= {name: case[0] for name, case in REFUSED.items()}
    servers = {name: OpenSSLTSA(tmp_path_factory.mktemp("tsa"), chain=chain) for name, chain in cases.items()}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.mark.parametrize("deviation", list(ACCEPTED))
def test_a_ca_as_real_tsas_ship_it_is_accepted_and_a_tampered_token_is_not(
    deviation, deviant_tsas, tmp_path, capsys
):
    tsa = deviant_tsas[deviation]
    receipt = anchored_by(tsa, tmp_path)
    root_pem = str(tsa.pki.path("root.pem"))
    # OpenSSL accepts the token at genTime with the root alone ...
    proc = pki.openssl_ts_verify(digest_hex(receipt), token_file(receipt, tmp_path), tsa.pki.path("root.pem"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ... and so does verify, with that root only.
    assert main(["verify", "--trust-bundle", root_pem, str(receipt)]) == 0
    assert ok_line(capsys.readouterr().out, receipt)
    bad = flip_signature(receipt, tmp_path)
    assert main(["verify", "--trust-bundle", root_pem, str(bad)]) == 1
    assert "signature does not verify" in capsys.readouterr().out


@pytest.mark.parametrize("deviation", list(REFUSED))
def test_a_ca_without_basic_constraints_is_refused_with_a_sentence(deviation, deviant_tsas, tmp_path, capsys):
    tsa = deviant_tsas[deviation]
    _chain, openssl_accepts, said = REFUSED[deviation]
    token = tsa.reply(pki_request())
    tf = tmp_path / "t.tsr"
    tf.write_bytes(pki.token_of(token))
    proc = pki.openssl_ts_verify("00" * 32, tf, tsa.pki.path("root.pem"))
    assert (proc.returncode == 0) is openssl_accepts, proc.stdout + proc.stderr
    # The anchoring backend refuses such a token: no receipt, the reason in a sentence.
    import asyncio

    from core.anchors.rfc3161.backend import RFC3161Backend
    from core.clock import SystemClock
    from core.errors import ValidationError

    backend = RFC3161Backend(
        "rfc3161:t",
        Rfc3161Target(url=tsa.url(), trust_bundle=tsa.pki.path("root.pem")),
        SystemClock(),
    )
    with pytest.raises(ValidationError) as caught:
        asyncio.run(backend.anchor(bytes(32), lambda notes: None))
    assert said in str(caught.value) and "chain check failed" in str(caught.value)


def pki_request() -> bytes:
    from core.anchors.tsp import build_request, new_nonce

    return build_request(bytes(32), nonce=new_nonce())


# --- certificates in several files, in any order ---------------------------------------------


@pytest.fixture(scope="module")
def plain_tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSSLTSA]:
    server = OpenSSLTSA(tmp_path_factory.mktemp("plain-tsa"))
    yield server
    server.stop()


def test_certificates_split_between_files_verify_in_every_order(plain_tsa, tmp_path, capsys):
    """A token that embeds no certificate: the TSA's certificate, the intermediate and the
    root each in its own file, passed in any order (one file alone held no root: refused)."""
    receipt = anchored_by(plain_tsa, tmp_path, "/certless")
    made = plain_tsa.pki
    assert made.intermediate is not None
    files = {"tsa": made.path("tsa.pem"), "inter": tmp_path / "inter.pem", "root": made.path("root.pem")}
    files["inter"].write_bytes(made.intermediate.pem)
    for order in itertools.permutations(files.values()):
        flags = [arg for f in order for arg in ("--trust-bundle", str(f))]
        assert main(["verify", *flags, str(receipt)]) == 0, capsys.readouterr().out
        assert ok_line(capsys.readouterr().out, receipt)
    # A folder of PEM files is the same as its files.
    folder = tmp_path / "trust"
    folder.mkdir()
    for name, path in files.items():
        (folder / f"{name}.pem").write_bytes(path.read_bytes())
    assert main(["verify", "--trust-bundle", str(folder), str(receipt)]) == 0
    assert ok_line(capsys.readouterr().out, receipt)


# --- a cluster's local: receipts ---------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two replicas' data dirs, each with its own embedded TSA, each with its receipts."""
    tmp = tmp_path_factory.mktemp("replicas")
    return {name: anchor(tmp / name, {f"ns-{name}": "local:dev"}, {}) for name in ("a", "b")}


def earlier_local_tsa(data: Path) -> None:
    """A data dir's embedded TSA files as earlier versions made them: every data dir's
    certificate had the same subject (the CN alone)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from core.anchors.local.backend import SUBJECT_CN

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SUBJECT_CN)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(pki.NOT_BEFORE).not_valid_after(pki.NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = data / "tsa"
    folder.mkdir(parents=True, mode=0o700)
    (folder / "local-tsa.key").write_bytes(pki.key_pem(key))
    (folder / "local-tsa.key").chmod(0o600)
    (folder / "local-tsa.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def earlier_replicas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`replicas` whose certificates an earlier version made: one subject for both."""
    tmp = tmp_path_factory.mktemp("earlier-replicas")
    out = {}
    for name in ("a", "b"):
        earlier_local_tsa(tmp / name / "data")
        out[name] = anchor(tmp / name, {f"ns-{name}": "local:dev"}, {})
    return out


@pytest.mark.parametrize("made", ["replicas", "earlier_replicas"])
def test_a_clusters_local_receipts_verify_with_the_replicas_certificates_in_any_order(
    made, request, tmp_path, capsys
):
    replicas = request.getfixturevalue(made)
    handed = tmp_path / "handed-over"
    handed.mkdir()
    receipts = []
    for name, data in replicas.items():
        src = receipts_of(data, f"ns-{name}")[0]
        receipts.append(handed / f"{name}-{src.name}")
        receipts[-1].write_bytes(src.read_bytes())
    certs = [data / "tsa" / "local-tsa.pem" for data in replicas.values()]
    for order in (certs, certs[::-1]):
        flags = [arg for c in order for arg in ("--trust-bundle", str(c))]
        assert main(["verify", *flags, *map(str, receipts)]) == 0
        lines = capsys.readouterr().out.splitlines(keepends=True)
        assert len(lines) == len(receipts) and all(ok_line(line, r) for line, r in zip(lines, receipts, strict=True))
    # With one replica's certificate only, the other's receipt fails and says which to pass.
    assert main(["verify", "--trust-bundle", str(certs[0]), str(receipts[1])]) == 1
    out = capsys.readouterr().out
    assert "is self-signed and is not in the trust bundle" in out
    assert "basicConstraints" not in out
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    other = x509.load_pem_x509_certificate(certs[1].read_bytes()).public_bytes(Encoding.DER)
    assert hashlib.sha256(other).hexdigest() in out


@pytest.mark.parametrize(
    ("deviation", "said"),
    [
        (D(no_key_cert_sign=True), "is not acceptable: the CA CN=Refused Root CA,O=VaultMesh test PKI has a keyUsage without keyCertSign"),
        (D(server_auth_only=True), "is not acceptable: the CA CN=Refused Root CA,O=VaultMesh test PKI restricts its EKU and does not allow time-stamping"),
        (D(unknown_critical=True), "is not acceptable: invalid extension: 1.3.6.1.4.1.55555.99: certificate contains unaccounted-for critical extensions"),
    ],
)
def test_the_refusals_the_readme_lists_say_what_it_says(deviation, said, tmp_path):
    import hashlib

    from core.anchors.tsp import build_request, new_nonce, verify_token
    from core.errors import ValidationError

    made = pki.build_deviant_pki(tmp_path, "Refused", root=deviation)
    config = pki.write_openssl_ts_config(tmp_path / "ts.cnf", made)
    digest = hashlib.sha256(b"refused").digest()
    token = pki.token_of(pki.openssl_ts_reply(build_request(digest, nonce=new_nonce()), config, made, tmp_path / "w"))
    with pytest.raises(ValidationError) as caught:
        verify_token(token, digest=digest, trust_roots=[made.root.cert])
    assert said in str(caught.value) and "Python" not in str(caught.value)


def test_a_sha1_signed_intermediate_is_refused_in_a_sentence(tmp_path):
    """OpenSSL accepts it; we refuse on purpose (README), and say so without a library dump."""
    import hashlib

    from core.anchors.tsp import build_request, new_nonce, verify_token
    from core.errors import ValidationError

    top = pki.make_ca(None, "Old Root CA")
    inter = pki.sha1_intermediate(top, tmp_path / "openssl")
    made = pki.TSAPKI(tmp_path, top, pki.make_tsa(inter, "Old TSA"), inter)
    for name, data in {"root.pem": top.pem, "chain.pem": inter.pem + top.pem,
                       "tsa.pem": made.tsa.pem, "tsa.key": made.tsa.key_pem}.items():
        made.files[name] = tmp_path / name
        made.files[name].write_bytes(data)
    config = pki.write_openssl_ts_config(tmp_path / "ts.cnf", made)
    digest = hashlib.sha256(b"old chain").digest()
    reply = pki.openssl_ts_reply(build_request(digest, nonce=new_nonce()), config, made, tmp_path / "w")
    token = pki.token_of(reply)
    (tmp_path / "t.tsr").write_bytes(token)
    assert pki.openssl_ts_verify(digest.hex(), tmp_path / "t.tsr", made.path("root.pem")).returncode == 0
    with pytest.raises(ValidationError) as caught:
        verify_token(token, digest=digest, trust_roots=[top.cert])
    said = str(caught.value)
    assert "is signed with RSA with SHA-1, which is refused" in said
    assert "AlgorithmIdentifier" not in said and "PhantomData" not in said


def test_explain_agrees_on_a_clusters_local_receipts_whatever_the_order(earlier_replicas, tmp_path, capsys):
    """`verify --explain | sh` with both replicas' certificates: OpenSSL, given two
    self-signed certificates of one name in its CAfile, tries the first only; the script
    hands it the one the token was signed with, so it says what verify says."""
    import subprocess

    replicas = earlier_replicas
    certs = [data / "tsa" / "local-tsa.pem" for data in replicas.values()]
    for name, data in replicas.items():
        receipt = receipts_of(data, f"ns-{name}")[0]
        for order in (certs, certs[::-1]):
            flags = [arg for c in order for arg in ("--trust-bundle", str(c))]
            assert main(["verify", "--explain", *flags, str(receipt)]) == 0
            script = capsys.readouterr().out
            done = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 and "Verification: OK" in done.stdout, script + done.stdout + done.stderr


def test_one_cafile_of_the_replicas_certificates_checks_every_replicas_tokens_with_openssl(replicas, tmp_path):
    """Each data dir's certificate names its key (OU=key <hex>): stock OpenSSL, given one
    CAfile holding them all, checks every replica's token (same-named certificates made it
    try the first only)."""
    certs = [data / "tsa" / "local-tsa.pem" for data in replicas.values()]
    for order in (certs, certs[::-1]):
        cafile = tmp_path / "cluster-ca.pem"
        cafile.write_bytes(b"".join(c.read_bytes() for c in order))
        for name, data in replicas.items():
            receipt = receipts_of(data, f"ns-{name}")[0]
            done = pki.openssl_ts_verify(digest_hex(receipt), token_file(receipt, tmp_path), cafile)
            assert done.returncode == 0, done.stdout + done.stderr
