"""The pydantic base model and field types every configuration model shares.

Apart from core/config/ so that the target schemes' settings models
(core/anchors/schemes.py) use the same rules without importing the loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, SecretStr
from pydantic_core import PydanticCustomError

# A validation context key: True when the load turns an unset ${VAR} into "" (verify).
UNSET_ALLOWED = "unset_allowed"


class Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        validate_default=False,
        coerce_numbers_to_str=True,  # `network: 1`, `policyOID: 1.2` are meant as text
    )


def _empty_to_none(value: Any) -> Any:
    if isinstance(value, str) and value.strip() == "":
        return None
    if isinstance(value, SecretStr) and value.get_secret_value() == "":
        return None
    return value


OptStr = Annotated[str | None, BeforeValidator(_empty_to_none)]
OptPath = Annotated[Path | None, BeforeValidator(_empty_to_none)]
OptSecret = Annotated[SecretStr | None, BeforeValidator(_empty_to_none)]


def _check_policy_oid(value: str | None) -> str | None:
    if value is None:
        return None
    from core.anchors.tsp import policy_oid_problem

    problem = policy_oid_problem(value)
    if problem:
        raise PydanticCustomError("policy_oid", "{m}", {"m": problem})
    return value


# A TSA policy: a dotted OID; "" (the VaultMesh files' way to say none) is None.
PolicyOID = Annotated[str, AfterValidator(_check_policy_oid)]
OptPolicyOID = Annotated[str | None, BeforeValidator(_empty_to_none), AfterValidator(_check_policy_oid)]


def one_key_source(model: BaseModel) -> None:
    """A chain target's signing key comes from one place: `key`, `key_env` or `key_file`."""
    given = [n for n in ("key", "key_env", "key_file") if getattr(model, n) is not None]
    if len(given) > 1:
        raise PydanticCustomError(
            "key_source", "give only one of key, key_env, key_file (got {g})", {"g": ", ".join(given)}
        )
