"""The `btc` scheme's entry (core/anchors/spec.py): Bitcoin, `btc:<name>` (the network is
the entry's `network`).

Light (pydantic only): the backend (httpx, embit) is imported on first use."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.anchors.btc.settings import BtcTarget
from core.anchors.spec import ClosingVerifier, SchemeSpec, VerifyInputs, host_of

if TYPE_CHECKING:
    from core.anchors.base import Backend, SharedRecords
    from core.clock import Clock
    from core.receipts import Receipt

RPC_URL_FORM = "btc:<name>=<URL>, for example btc:regtest=http://user:password@127.0.0.1:18443/"


def _build(
    target: str, settings: BtcTarget, data_dir: Path, clock: Clock, shared: SharedRecords | None
) -> Backend:
    from core.anchors.btc.backend import BtcBackend

    return BtcBackend(target, settings, clock, data_dir, shared=shared, receipt_timeout=settings.mine_timeout)


def _not_set(target: str, settings: BtcTarget, entry: str | None) -> str | None:
    """A btc target anchors once it has a node and a key (VaultMesh: BTC_RPC and a key)."""
    missing = [
        what
        for what, given in (
            ("an rpcUrl", bool(settings.rpc_url)),
            ("a signing key (key, keyEnv or keyFile)", settings.has_key),
        )
        if not given
    ]
    if not missing:
        return None
    return (
        f"btc target {target} ({entry}) needs {' and '.join(missing)} to anchor; "
        "its jobs are refused until then"
    )


def _key_file(settings: BtcTarget, target: str) -> list[tuple[str, str]]:
    if settings.key_file is None:
        return []
    from core.anchors.btc.checking import key_file_problem

    problem = key_file_problem(settings.key_file)
    return [("key_file", problem)] if problem else []


def _checker(target: str, inputs: VerifyInputs, receipt_path: Path) -> ClosingVerifier:
    from core.anchors.btc.checking import node_checker

    return node_checker(target, inputs)


def _ots(receipt: dict[str, Any]) -> bytes:
    from core.anchors.btc.ots import ots_proof

    return ots_proof(receipt)


def _explain(receipt: Receipt, path: Path, inputs: VerifyInputs) -> list[str]:
    from core.anchors.btc.checking import explain_steps

    return explain_steps(receipt, inputs)


BTC = SchemeSpec(
    name="btc",
    settings=BtcTarget,
    build=_build,
    refusal=_not_set,
    unset_ok="btc jobs stay disabled until it is set",
    describe=lambda s: f"{s.network} via {host_of(s.rpc_url)}",
    file_problems=_key_file,
    checker=_checker,
    explain=_explain,
    rpc_url_form=RPC_URL_FORM,
    proof_file=("ots", _ots),
    confirmations=True,
)
