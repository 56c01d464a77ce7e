"""`verify` and `verify --explain` for `local:` receipts: their tokens against the embedded
TSA's certificate of the data dir that wrote them (and any --trust-bundle), read only."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.anchors.base import CannotVerify
from core.anchors.local.backend import certificate_path, read_certificates, verify_local_token
from core.anchors.spec import TrustFile, VerifyInputs
from core.anchors.tokens import (
    TrustBundle,
    bundle_of,
    ca_lines,
    files_for_signer,
    signer_certificate,
    token_steps,
    trust_file,
)

if TYPE_CHECKING:
    from core.receipts import Receipt


def ca_files(target: str, inputs: VerifyInputs, receipt_path: Path) -> list[Path]:
    """--trust-bundle and the certificate of the receipt's data dir; CannotVerify saying
    what to pass when there is neither."""
    files = list(inputs.trust_bundles)
    data_dir = inputs.data_dir_for(receipt_path)
    if data_dir is not None:
        cert = certificate_path(data_dir)
        if cert.exists() or not files:
            read_certificates(cert, target)  # CannotVerify naming the file when missing
            files.append(cert)
    if not files:
        raise CannotVerify(
            f"{target}: the receipt is not inside a data dir; pass --trust-bundle with "
            "the local-tsa.pem of the data dir that wrote it, or --data-dir"
        )
    return files


class LocalTokenChecker:
    """A `local:` token against certificates read once, offline."""

    def __init__(self, target: str, bundle: TrustBundle) -> None:
        self.target = target
        self.bundle = bundle

    @classmethod
    def for_receipt(cls, target: str, inputs: VerifyInputs, receipt_path: Path) -> LocalTokenChecker:
        return cls(target, bundle_of(target, ca_files(target, inputs, receipt_path)))

    async def verify(
        self,
        attestation: dict[str, Any],
        digest: bytes,
        *,
        required: int | None = None,
        policy: str | None = None,
    ) -> datetime | None:
        b = self.bundle
        return verify_local_token(attestation, digest, [*b.roots, *b.signers], self.target, policy=policy)

    async def close(self) -> None:
        return None


def explain_steps(receipt: Receipt, path: Path, inputs: VerifyInputs) -> list[str]:
    target = receipt.target
    return token_steps(
        receipt,
        ca_lines(lambda: files_for_signer(receipt.attestation, ca_files(target, inputs, path), target)),
    )


def export_trust(target: str, attestation: dict[str, Any], inputs: VerifyInputs) -> list[TrustFile]:
    """The data dir's local-tsa.pem, and the certificate the token embeds when it is another
    (a cluster: another replica's embedded TSA signed it). That one is read from the token,
    so its origin says to compare its fingerprint with that replica's file."""
    out: list[TrustFile] = []
    ours: list[Any] = []
    data_dir = inputs.config_data_dir
    if data_dir is not None and certificate_path(data_dir).exists():
        ours = read_certificates(certificate_path(data_dir), target)
        out.append(trust_file("local-tsa", ours, str(certificate_path(data_dir))))
    signer = signer_certificate(attestation)
    if signer is not None and signer not in ours:
        out.append(trust_file(
            "local-tsa", [signer],
            "a local: token (another data dir's embedded TSA: compare the fingerprint with "
            "that replica's <data_dir>/tsa/local-tsa.pem before trusting it)",
        ))
    return out
