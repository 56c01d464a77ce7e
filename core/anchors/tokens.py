"""What `local:` and `rfc3161:` share to check an RFC 3161 time-stamp token outside the
backend: the trust bundle (`--trust-bundle` PEM files, a target's `trust_bundle`, the embedded
TSA's certificate), the token check `verify` runs against it, and the stock-tool (openssl)
steps `verify --explain` prints for it. The protocol itself is core/anchors/tsp.py."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from core.anchors.base import CannotVerify, VerificationFailed
from core.anchors.spec import TrustFile, shell_word
from core.anchors.tsp import (
    load_certs,
    normalize_token,
    policy_oid_problem,
    signer_matches,
    verify_attestation,
)
from core.errors import ValidationError

if TYPE_CHECKING:
    from core.receipts import Receipt

__all__ = [
    "TrustBundle",
    "bundle_of",
    "files_for_signer",
    "load_trust_bundle",
    "signer_certificate",
    "token_steps",
    "trust_file",
    "verify_token",
]


# --------------------------------------------------------------------------- trust


class TrustBundle:
    """The certificates of a target's trust bundle, sorted by role."""

    def __init__(self, certs: list[x509.Certificate], source: str) -> None:
        self.source = source
        self.roots: list[x509.Certificate] = []
        self.intermediates: list[x509.Certificate] = []
        self.signers: list[x509.Certificate] = []
        for cert in certs:
            is_ca = _is_ca(cert)
            if cert.subject == cert.issuer or is_ca:
                self.roots.append(cert)
                if is_ca and cert.subject != cert.issuer:
                    self.intermediates.append(cert)
            else:
                self.signers.append(cert)
        if not self.roots:
            raise ValidationError(
                f"trust bundle {source} holds no CA or self-signed certificate to anchor a chain"
            )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def load_trust_bundle(path: Path | None, target: str) -> TrustBundle:
    """Read and sort a PEM trust bundle; ValidationError naming the file on any problem."""
    if path is None:
        raise ValidationError(
            f"{target}: no trust_bundle configured; a time-stamp token cannot be checked "
            "without the TSA's CA certificates, so nothing is anchored"
        )
    certs = _read_certs(path, target)
    try:
        return TrustBundle(certs, str(path))
    except ValidationError as exc:
        raise ValidationError(f"{target}: {exc}") from None


def _read_certs(path: Path, target: str) -> list[x509.Certificate]:
    """The certificates of one PEM (or DER) file; ValidationError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValidationError(
            f"{target}: cannot read trust_bundle {path}: {exc.strerror or exc}"
        ) from None
    try:
        certs = load_certs(data)
    except ValueError as exc:
        raise ValidationError(
            f"{target}: trust_bundle {path} is not PEM certificates: {exc}"
        ) from None
    if not certs:
        raise ValidationError(f"{target}: trust_bundle {path} holds no certificate")
    return certs


def verify_token(
    attestation: dict[str, Any],
    digest: bytes,
    *,
    target: str,
    bundle: Callable[[], TrustBundle],
    policy: str | None = None,
) -> datetime:
    """Check a time-stamp token against the trust bundle `bundle()` gives (read here, so a
    bundle that cannot be read fails the same way): VerificationFailed with a sentence
    naming `target`; its genTime when it checks out. Shared by the rfc3161 backend and `verify` (core/verify.py)."""
    try:
        certs = bundle()
        return verify_attestation(
            attestation,
            digest=digest,
            policy_oid=policy,
            trust_roots=certs.roots,
            signer_certs=certs.signers,
            intermediates=certs.intermediates,
        ).gen_time
    except ValidationError as exc:
        text = str(exc)
        raise VerificationFailed(text if text.startswith(target) else f"{target}: {text}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise VerificationFailed(f"{target}: cannot check the token: {exc}") from None


def bundle_of(target: str, paths: Sequence[Path]) -> TrustBundle:
    """One bundle of the certificates of several PEM files, in any order and however they
    are split between files (verify's --trust-bundle and the files a scheme adds: a root in
    one, an intermediate or a TSA certificate in another, each replica's local-tsa.pem);
    CannotVerify naming the file or the problem."""
    certs: list[x509.Certificate] = []
    for path in paths:
        try:
            found = _read_certs(path, target)
        except ValidationError as exc:
            raise CannotVerify(str(exc)) from None
        certs += [c for c in found if c not in certs]
    try:
        return TrustBundle(certs, ", ".join(str(p) for p in paths))
    except ValidationError as exc:
        raise CannotVerify(f"{target}: {exc}") from None


def signer_certificate(attestation: Mapping[str, Any]) -> x509.Certificate | None:
    """The certificate a token embeds for its signer (None: it embeds none, or is malformed).
    Read, not trusted: what trusts it is a bundle."""
    try:
        token = base64.b64decode(attestation.get("token", ""), validate=True)
        _, signer = normalize_token(token)
    except Exception:  # a malformed token: verify says what is wrong with it
        return None
    return None if signer is None else x509.load_der_x509_certificate(signer.dump())


def files_for_signer(attestation: Mapping[str, Any], files: list[Path], target: str) -> list[Path]:
    """Of `files`, those holding the token's own self-signed signer certificate, when any
    does (else `files`). OpenSSL, given several self-signed certificates of one name in a
    CAfile (a cluster's local TSAs), tries the first it finds only: --explain hands it the
    right one, so that the script says what verify says."""
    signer = signer_certificate(attestation)
    if signer is None or signer.subject != signer.issuer or len(files) < 2:
        return files
    holding = []
    for path in files:
        try:
            if signer in _read_certs(path, target):
                holding.append(path)
        except ValidationError:
            continue  # the unreadable file is named when verify reads the bundle
    return holding or files


def trust_file(stem: str, certs: Sequence[x509.Certificate], origin: str) -> TrustFile:
    """A TrustFile `<stem>-<first 16 hex of the first certificate's SHA-256>.pem`."""
    fingerprint = hashlib.sha256(certs[0].public_bytes(Encoding.DER)).hexdigest()
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in certs)
    return TrustFile(f"{stem}-{fingerprint[:16]}.pem", pem, origin)


# --------------------------------------------------------------------------- verify --explain

_DIGEST = (
    "D=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"anchored_root\"]"
    '.split(":")[1])\' "$R")'
)

_TOKEN = (
    "python3 -c 'import base64,json,sys; sys.stdout.buffer.write(base64.b64decode("
    'json.load(open(sys.argv[1]))["attestation"]["token"]))\' "$R" > "$W/token.der"'
)

_ROOT_BYTES = (
    "python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(sys.argv[1]))' \"$D\" "
    '> "$W/root.bin"'
)


def ca_lines(find_files: Callable[[], list[Path]]) -> list[str]:
    """The shell lines that set $CA to the PEM file(s) `find_files()` gives, or that ask for
    $CA when it raises CannotVerify (the comment says why)."""
    try:
        ca_files = find_files()
    except CannotVerify as exc:
        return [
            f"# {exc}",
            '[ -n "${CA:-}" ] || { echo "CANNOT CHECK: set CA to the PEM file of the TSA\'s CA '
            'certificate(s)"; exit 3; }',
        ]
    if len(ca_files) == 1:
        return [f"CA={shell_word(Path(ca_files[0]).resolve())}"]
    return [
        'CA="$W/ca.pem"',
        "cat " + " ".join(shell_word(Path(f).resolve()) for f in ca_files) + ' > "$CA"',
    ]


def _token_facts(attestation: Mapping[str, Any]) -> tuple[bool, bool]:
    """(embeds its signer's certificate, carries a non-X.509 certificate) of the token."""
    try:
        sd = cms.ContentInfo.load(base64.b64decode(attestation.get("token", "")))["content"]
        choices = [] if sd["certificates"].native is None else list(sd["certificates"])
        sid = sd["signer_infos"][0]["sid"]
    except Exception:  # a malformed token: the commands will say so when run
        return True, False
    embeds = any(c.name == "certificate" and signer_matches(sid, c.chosen) for c in choices)
    return embeds, any(c.name != "certificate" for c in choices)


def token_steps(receipt: Receipt, ca: list[str]) -> list[str]:
    """The openssl steps that check a receipt's token, after `ca` (ca_lines) set $CA."""
    attestation = receipt.attestation
    hash_name = attestation.get("hash") or "sha256"
    embeds, odd_certs = _token_facts(attestation)
    untrusted = "" if embeds else ' -untrusted "$CA"'  # the signer's certificate is only there
    lines = [
        *ca,
        "# 2. the token as the TSA sent it (attestation.token, base64 DER)",
        _TOKEN,
        _DIGEST,
    ]
    if odd_certs:
        lines += [
            "# 3. the token carries an attribute certificate, which `openssl ts` cannot parse;",
            "#    openssl cms checks the signature, the signer's path to $CA and its",
            "#    timeStamping EKU, and writes out the signed TSTInfo",
            'openssl cms -verify -inform DER -in "$W/token.der" -CAfile "$CA"' + untrusted
            + ' -purpose timestampsign -binary -out "$W/tstinfo.der"',
            "# 4. the TSTInfo's messageImprint must be the anchored root"
            + ("" if hash_name == "sha256" else f" hashed with {hash_name}"),
        ]
        if hash_name == "sha256":
            lines.append('I="$D"')
        else:
            lines.append(
                f"I=$(python3 -c 'import hashlib,sys; print(hashlib.{hash_name}("
                "bytes.fromhex(sys.argv[1])).hexdigest())' \"$D\")"
            )
        lines.append(
            'openssl asn1parse -inform DER -in "$W/tstinfo.der" | grep -qi "HEX DUMP\\]:$I$" '
            '&& echo "imprint: OK" || { echo "imprint: FAIL"; exit 1; }'
        )
        lines.append(
            'openssl asn1parse -inform DER -in "$W/tstinfo.der" | sed -n "s/.*GENERALIZEDTIME *://p" '
            '| head -n 1 > "$W/attested"  # genTime, for the last step'
        )
        return lines + _policy_steps(receipt, "5", from_tstinfo=True)
    lines.append(
        "# 3. OpenSSL checks the signature, the signer's path to $CA at genTime, its "
        "timeStamping EKU and the imprint"
    )
    if hash_name == "sha256":  # the imprint is the anchored root itself
        lines.append(
            'openssl ts -verify -digest "$D" -in "$W/token.der" -token_in -CAfile "$CA"' + untrusted
        )
    else:  # the imprint is <hash>(the 32 bytes of the anchored root)
        lines += [
            _ROOT_BYTES,
            'openssl ts -verify -data "$W/root.bin" -in "$W/token.der" -token_in -CAfile "$CA"'
            + untrusted,
        ]
    lines.append(
        'openssl ts -reply -in "$W/token.der" -token_in -text | sed -n "s/^Time stamp: //p" '
        '> "$W/attested"  # genTime, for the last step'
    )
    return lines + _policy_steps(receipt, "4", from_tstinfo=False)


def _policy_steps(receipt: Receipt, step: str, *, from_tstinfo: bool) -> list[str]:
    """The token is under the policy the receipt states (the checks above look at none).
    OpenSSL shows a policy it knows by name: ask it for that name first."""
    policy = receipt.policy
    if policy is None or policy_oid_problem(policy):
        return []  # no policy requested (or a malformed one: verify says so)
    shown = (
        'openssl asn1parse -inform DER -in "$W/tstinfo.der" | grep -m1 OBJECT | sed "s/.*OBJECT *://"'
        if from_tstinfo
        else 'openssl ts -reply -in "$W/token.der" -token_in -text 2>/dev/null | sed -n "s/^Policy OID: //p"'
    )
    return [
        f"# {step}. the token must be under the policy the receipt states",
        f'P=$(openssl asn1parse -genstr "OID:{policy}" | sed "s/.*OBJECT *://")',
        f'[ "$({shown})" = "$P" ] && echo "policy: OK" || {{ echo "policy: FAIL"; exit 1; }}',
    ]
