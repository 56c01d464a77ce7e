"""`verify` and `verify --explain` for `rfc3161:` receipts: a token against --trust-bundle,
else the target's trust_bundle in the config, read once and offline; and check-config's
look at a target's trust bundle."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.anchors.base import CannotVerify
from core.anchors.spec import TrustFile, VerifyInputs
from core.anchors.tokens import (
    TrustBundle,
    bundle_of,
    ca_lines,
    load_trust_bundle,
    token_steps,
    trust_file,
    verify_token,
)
from core.errors import ValidationError

if TYPE_CHECKING:
    from core.receipts import Receipt


def trust_bundle_problem(path: Path, target: str) -> str | None:
    """None if the anchoring backend can use ``path`` as its trust bundle, else why not
    (in a sentence: no parser's error dump)."""
    try:
        load_trust_bundle(path, target)
    except ValidationError as exc:
        message = str(exc).removeprefix(f"{target}: ").replace("trust_bundle", "trust bundle", 1)
        if "is not PEM certificates" not in message:
            return message
        try:
            pem = b"-----BEGIN CERTIFICATE-----" in Path(path).read_bytes()
        except OSError:
            pem = False
        if pem:
            return f"trust bundle {path} holds a certificate that does not parse"
        return f"trust bundle {path} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)"
    return None


def ca_files(target: str, inputs: VerifyInputs) -> list[Path]:
    """--trust-bundle, else the target's trust_bundle; CannotVerify saying what to pass."""
    if inputs.trust_bundles:
        return inputs.trust_bundles
    bundle: Path | None = getattr(inputs.settings(target), "trust_bundle", None)
    if bundle is None:
        raise CannotVerify(
            f"{target}: nothing to check the token against; pass --trust-bundle with "
            f"the TSA's CA certificate(s) (PEM){inputs.no_config()}"
        )
    return [bundle]


class TokenChecker:
    """An `rfc3161:` token against certificates read once, offline."""

    def __init__(self, target: str, bundle: TrustBundle) -> None:
        self.target = target
        self.bundle = bundle

    @classmethod
    def for_target(cls, target: str, inputs: VerifyInputs) -> TokenChecker:
        return cls(target, bundle_of(target, ca_files(target, inputs)))

    async def verify(
        self,
        attestation: dict[str, Any],
        digest: bytes,
        *,
        required: int | None = None,
        policy: str | None = None,
    ) -> datetime | None:
        b = self.bundle
        return verify_token(attestation, digest, target=self.target, policy=policy, bundle=lambda: b)

    async def close(self) -> None:
        return None


def explain_steps(receipt: Receipt, inputs: VerifyInputs) -> list[str]:
    return token_steps(receipt, ca_lines(lambda: ca_files(receipt.target, inputs)))


def export_trust(target: str, attestation: dict[str, Any], inputs: VerifyInputs) -> list[TrustFile]:
    """The target's trust bundle in the config (what verify checks its tokens against);
    CannotVerify when the config names none or it cannot be read."""
    bundle = bundle_of(target, ca_files(target, inputs))
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in target.partition(":")[2])
    certs = list(dict.fromkeys([*bundle.roots, *bundle.signers]))
    return [trust_file(f"rfc3161-{name}", certs, f"{target}'s trust_bundle {bundle.source}")]
