"""`btc:<network>`: Bitcoin, known to the config but not anchored by this build yet (no
Bitcoin node to test against): its jobs are refused with a reason, its receipts cannot be
checked. A Bitcoin backend makes this module a package like core/anchors/evm/."""

from __future__ import annotations

from pydantic import Field

from core.anchors.spec import SchemeSpec, host_of
from core.model_types import Model


class BtcTarget(Model):
    rpc_url: str = Field(alias="rpcUrl")
    network: str = "mainnet"
    confirmations: int = Field(6, ge=0)


BTC = SchemeSpec(
    name="btc",
    settings=BtcTarget,
    build=None,
    refusal=lambda target, settings, entry: (
        "btc targets are not supported by this build yet (no Bitcoin node "
        "to test against); this job will be refused until they are"
    ),
    describe=lambda s: f"{s.network} via {host_of(s.rpc_url)}",
    confirmations=True,
)
