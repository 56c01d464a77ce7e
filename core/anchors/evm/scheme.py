"""The `eip155` scheme's entry (core/anchors/spec.py): EVM chains, `eip155:<chain id>`.

Light (pydantic only): the backend (httpx, eth_account) is imported on first use."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.anchors.evm.settings import Eip155Target
from core.anchors.spec import ClosingVerifier, SchemeSpec, VerifyInputs, host_of

if TYPE_CHECKING:
    from core.anchors.base import Backend, SharedRecords
    from core.clock import Clock
    from core.receipts import Receipt

RPC_URL_FORM = "eip155:<chain id>=<URL>, for example eip155:8453=https://mainnet.base.org"


def _build(
    target: str, settings: Eip155Target, data_dir: Path, clock: Clock, shared: SharedRecords | None
) -> Backend:
    from core.anchors.evm.backend import EVMBackend

    return EVMBackend(target, settings, clock, data_dir, shared=shared)


def _chain_id_problem(name: str) -> str | None:
    return None if name.isdigit() else "needs a numeric chain id, for example 'eip155:8453'"


def _wrong_chain(target: str, settings: Eip155Target, entry: str | None) -> str | None:
    chain = int(target.partition(":")[2])
    if chain == settings.chain_id:
        return None
    return (
        f"target {target} resolves to {entry} whose chainId "
        f"is {settings.chain_id}, not {chain}; refusing to anchor to the wrong chain"
    )


def _wrong_chain_warning(target: str, settings: Eip155Target, entry: str | None) -> str:
    return (
        f"target {target} has chain id {target.partition(':')[2]} but {entry} has chainId "
        f"{settings.chain_id}; this job will be refused, not anchored to the wrong chain"
    )


def _key_file(settings: Eip155Target, target: str) -> list[tuple[str, str]]:
    if settings.key_file is None:
        return []
    from core.anchors.evm.checking import key_file_problem

    problem = key_file_problem(settings.key_file)
    return [("key_file", problem)] if problem else []


def _checker(target: str, inputs: VerifyInputs, receipt_path: Path) -> ClosingVerifier:
    from core.anchors.evm.checking import node_checker

    return node_checker(target, inputs)


def _explain(receipt: Receipt, path: Path, inputs: VerifyInputs) -> list[str]:
    from core.anchors.evm.checking import explain_steps

    return explain_steps(receipt, inputs)


EIP155 = SchemeSpec(
    name="eip155",
    settings=Eip155Target,
    build=_build,
    refusal=_wrong_chain,
    refusal_warning=_wrong_chain_warning,
    name_problem=_chain_id_problem,
    describe=lambda s: f"chainId {s.chain_id} via {host_of(s.rpc_url)}",
    file_problems=_key_file,
    checker=_checker,
    explain=_explain,
    rpc_url_form=RPC_URL_FORM,
    confirmations=True,
)
