"""`targets.btc.<name>`: the settings of a Bitcoin target (VaultMesh camelCase and snake_case).

The node's RPC URL carries its credentials (`http://user:password@host:port/`; never logged:
messages name the host only). The signing key (64 hex digits or a WIF) comes from `key`,
the environment variable `keyEnv` or the file `keyFile`; it spends an output of
`scriptType` (P2WPKH, or P2WSH of `<pubkey> OP_CHECKSIG`). `funding` ("txid:vout") is the
first coin the anchors spend; each anchor then spends the previous one's change.
Fees: `feeRate` sat/vB if set, else the node's estimate, else `fallbackFeeRate`; never
above `maxFeeRate`. `mineTimeout` (s) is how long an attempt waits for its block.
`lowBalanceAnchors` (20): fewer anchors than this left in the signer's coin is a warning."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.model_types import Model, OptPath, OptSecret, OptStr, one_key_source

NETWORKS = ("main", "mainnet", "testnet", "signet", "regtest")


class BtcTarget(Model):
    rpc_url: str = Field(alias="rpcUrl")
    network: str = "mainnet"
    confirmations: int = Field(6, ge=0)
    key: OptSecret = None
    key_env: OptStr = Field(None, alias="keyEnv")
    key_file: OptPath = Field(None, alias="keyFile")
    script_type: Literal["p2wpkh", "p2wsh"] = Field("p2wpkh", alias="scriptType")
    funding: OptStr = Field(None, pattern=r"^[0-9a-fA-F]{64}:[0-9]+$")
    fee_rate: float | None = Field(None, gt=0, alias="feeRate")
    fallback_fee_rate: float = Field(2.0, gt=0, alias="fallbackFeeRate")
    max_fee_rate: float = Field(100.0, gt=0, alias="maxFeeRate")
    # how long an attempt waits for its transaction to be mined (then it fails and the next
    # attempt waits for the same transaction again)
    mine_timeout: float = Field(3600.0, gt=0, alias="mineTimeout")
    # the signer's balance is low (a WARNING once, /health, vmsh_signer_balance_low) when it
    # pays fewer than this many more anchors at the last anchor's fee
    low_balance_anchors: int = Field(20, ge=0, alias="lowBalanceAnchors")

    @model_validator(mode="after")
    def _one_key_source(self) -> BtcTarget:
        one_key_source(self)
        return self

    @property
    def has_key(self) -> bool:
        return any(getattr(self, n) is not None for n in ("key", "key_env", "key_file"))
