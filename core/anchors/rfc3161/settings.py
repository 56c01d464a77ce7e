"""`targets.rfc3161.<name>`: the settings of a time-stamp authority (VaultMesh camelCase
and snake_case)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.model_types import Model, OptPath, OptPolicyOID, OptStr


class Rfc3161Auth(Model):
    type: Literal["basic", "bearer"]
    username: OptStr = None
    password_env: OptStr = None
    password_file: OptPath = None
    token_env: OptStr = None
    token_file: OptPath = None


class Rfc3161Target(Model):
    url: str
    trust_bundle: OptPath = Field(None, alias="trustBundle")
    policy_oid: OptPolicyOID = Field(None, alias="policyOID")
    hash: Literal["sha256", "sha512"] = "sha256"
    timeout: float = Field(10.0, gt=0)
    ca_bundle: OptPath = Field(None, alias="caBundle")
    auth: Rfc3161Auth | None = None
    max_clock_skew: float = Field(300.0, ge=0, alias="maxClockSkew")
