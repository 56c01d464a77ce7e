"""The `rfc3161` scheme's entry (core/anchors/spec.py): a real time-stamp authority.

Light (pydantic only): the backend and the token checks are imported on first use."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.anchors.rfc3161.settings import Rfc3161Target
from core.anchors.spec import ClosingVerifier, SchemeSpec, TrustFile, VerifyInputs, host_of

if TYPE_CHECKING:
    from core.anchors.base import Backend, SharedRecords
    from core.clock import Clock
    from core.receipts import Receipt


def _build(
    target: str, settings: Rfc3161Target, data_dir: Path, clock: Clock, shared: SharedRecords | None
) -> Backend:
    from core.anchors.rfc3161.backend import RFC3161Backend

    return RFC3161Backend(target, settings, clock)


def _files(settings: Rfc3161Target, target: str) -> list[tuple[str, str]]:
    if settings.trust_bundle is None:
        return []
    from core.anchors.rfc3161.checking import trust_bundle_problem

    problem = trust_bundle_problem(settings.trust_bundle, target)
    return [("trust_bundle", problem)] if problem else []


def _checker(target: str, inputs: VerifyInputs, receipt_path: Path) -> ClosingVerifier:
    from core.anchors.rfc3161.checking import TokenChecker

    return TokenChecker.for_target(target, inputs)


def _explain(receipt: Receipt, path: Path, inputs: VerifyInputs) -> list[str]:
    from core.anchors.rfc3161.checking import explain_steps

    return explain_steps(receipt, inputs)


def _export_trust(target: str, attestation: dict[str, Any], inputs: VerifyInputs) -> list[TrustFile]:
    from core.anchors.rfc3161.checking import export_trust

    return export_trust(target, attestation, inputs)


RFC3161 = SchemeSpec(
    name="rfc3161",
    settings=Rfc3161Target,
    build=_build,
    describe=lambda s: host_of(s.url),
    file_problems=_files,
    checker=_checker,
    explain=_explain,
    export_trust=_export_trust,
    policy=True,
)
