"""The `local` scheme's entry (core/anchors/spec.py): the embedded development TSA.

Light (pydantic only): the backend and the token checks are imported on first use."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.anchors.local.settings import LocalTarget
from core.anchors.spec import ClosingVerifier, SchemeSpec, TrustFile, VerifyInputs

if TYPE_CHECKING:
    from core.anchors.base import Backend, SharedRecords
    from core.clock import Clock
    from core.receipts import Receipt


def _build(
    target: str, settings: LocalTarget | None, data_dir: Path, clock: Clock, shared: SharedRecords | None
) -> Backend:
    from core.anchors.local.backend import LocalTSA

    name = target.partition(":")[2]
    return LocalTSA(data_dir, name, clock, policies=settings.policies if settings is not None else ())


def _checker(target: str, inputs: VerifyInputs, receipt_path: Path) -> ClosingVerifier:
    from core.anchors.local.checking import LocalTokenChecker

    return LocalTokenChecker.for_receipt(target, inputs, receipt_path)


def _scope(inputs: VerifyInputs, receipt_path: Path) -> Hashable:
    return inputs.data_dir_for(receipt_path)  # receipts of different data dirs: different certificates


def _explain(receipt: Receipt, path: Path, inputs: VerifyInputs) -> list[str]:
    from core.anchors.local.checking import explain_steps

    return explain_steps(receipt, path, inputs)


def _export_trust(target: str, attestation: dict[str, Any], inputs: VerifyInputs) -> list[TrustFile]:
    from core.anchors.local.checking import export_trust

    return export_trust(target, attestation, inputs)


LOCAL = SchemeSpec(
    name="local",
    settings=LocalTarget,
    build=_build,
    checker=_checker,
    checker_scope=_scope,
    explain=_explain,
    export_trust=_export_trust,
    development="the embedded development TSA",
    default_entry="embedded",
    policy=True,
)
