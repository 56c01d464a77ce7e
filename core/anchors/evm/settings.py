"""`targets.eip155.<name>`: the settings of an EVM chain target (VaultMesh camelCase and
snake_case)."""

from __future__ import annotations

from pydantic import Field, model_validator

from core.model_types import Model, OptPath, OptSecret, OptStr, one_key_source


class Eip155Target(Model):
    rpc_url: str = Field(alias="rpcUrl")
    chain_id: int = Field(alias="chainId", gt=0)
    contract: OptStr = None
    key: OptSecret = None
    key_env: OptStr = Field(None, alias="keyEnv")
    key_file: OptPath = Field(None, alias="keyFile")
    persist: bool = False
    confirmations: int = Field(12, ge=0)
    max_fee_gwei: float | None = Field(None, gt=0, alias="maxFeeGwei")
    gas_limit: int | None = Field(None, gt=0, alias="gasLimit")

    @model_validator(mode="after")
    def _one_key_source(self) -> Eip155Target:
        one_key_source(self)
        return self
