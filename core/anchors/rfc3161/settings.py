"""`targets.rfc3161.<name>`: the settings of a time-stamp authority (VaultMesh camelCase
and snake_case)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from core.model_types import UNSET_ALLOWED, Model, OptPath, OptPolicyOID, OptStr
from core.text import url_origin


def _check_url(value: str, info: ValidationInfo) -> str:
    """http:// or https:// with a host, checked at load (the file's line), never echoing
    a user:password the URL may hold. An empty one passes when the loader allows unset
    variables (verify reads trust bundles, never the URL: `UNSET_ALLOWED` in its context)."""
    if value == "" and isinstance(info.context, dict) and info.context.get(UNSET_ALLOWED):
        return value
    origin = url_origin(value)
    scheme = origin.partition("://")[0] if "://" in origin else ""
    if scheme not in ("http", "https"):
        shown = origin if scheme else "a URL without scheme://host"
        raise PydanticCustomError(
            "url_scheme", "url must be http:// or https:// with a host, got {g}", {"g": shown}
        )
    return value


HttpUrl = Annotated[str, AfterValidator(_check_url)]


class Rfc3161Auth(Model):
    type: Literal["basic", "bearer"]
    username: OptStr = None
    password_env: OptStr = None
    password_file: OptPath = None
    token_env: OptStr = None
    token_file: OptPath = None


class Rfc3161Target(Model):
    url: HttpUrl
    trust_bundle: OptPath = Field(None, alias="trustBundle")
    policy_oid: OptPolicyOID = Field(None, alias="policyOID")
    hash: Literal["sha256", "sha512"] = "sha256"
    timeout: float = Field(10.0, gt=0)
    ca_bundle: OptPath = Field(None, alias="caBundle")
    auth: Rfc3161Auth | None = None
    max_clock_skew: float = Field(300.0, ge=0, alias="maxClockSkew")
