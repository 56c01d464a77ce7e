"""What each target scheme is, in one table: `SCHEMES[name]` is its `SchemeSpec`.

A target id is ``<scheme>:<name>``. Everything that depends on the scheme reads its
spec here: the config (the `targets.<scheme>` settings model, which target ids are
valid, which need settings, which accept a policy, which jobs are refused), the backend
registry (build), check-config (the summary's detail, the files it opens), the runtime
(the development warning), verify and verify --explain (how a proof is checked).

Light on purpose (pydantic only): core.config imports it, and the backends themselves
(cryptography, httpx, eth_account) are imported only by `build`, on first use.

Adding a scheme: its backend module in core/anchors/, its settings model and one
`SchemeSpec` entry below, one line in the parameters of
tests/integration/test_backend_contract.py (docs/architecture.md, "Where things go").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from core.model_types import Model, OptPath, OptPolicyOID, OptSecret, OptStr, PolicyOID

if TYPE_CHECKING:
    from core.anchors.base import Backend, SharedRecords
    from core.clock import Clock


# --------------------------------------------------------------------------- settings models
# One per scheme, the `targets.<scheme>.<name>` entries (VaultMesh camelCase and snake_case).


class LocalTarget(Model):
    # Policies the embedded TSA issues tokens under besides its own (core/anchors/local.py).
    policies: list[PolicyOID] = Field(default_factory=list)


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
        given = [n for n in ("key", "key_env", "key_file") if getattr(self, n) is not None]
        if len(given) > 1:
            raise PydanticCustomError(
                "key_source", "give only one of key, key_env, key_file (got {g})", {"g": ", ".join(given)}
            )
        return self


class BtcTarget(Model):
    rpc_url: str = Field(alias="rpcUrl")
    network: str = "mainnet"
    confirmations: int = Field(6, ge=0)


TargetSettings = LocalTarget | Rfc3161Target | Eip155Target | BtcTarget


# --------------------------------------------------------------------------- the spec

# (target id, its settings, data dir, clock) -> the backend
# (target, settings, data dir, clock, records shared with other replicas or None)
Build = Callable[[str, Any, Path, "Clock", "SharedRecords | None"], "Backend"]
# How verify and verify --explain check a receipt's proof (core/verify.py, core/explain.py):
# "timestamp" an RFC 3161 token against trust bundles; "embedded-timestamp" a token of the
# embedded TSA, whose certificate is in the data dir; "transaction" a transaction on a node.
Proof = Literal["timestamp", "embedded-timestamp", "transaction"]


def _no_refusal(target: str, settings: object, entry: str | None) -> str | None:
    return None


def _any_name(name: str) -> str | None:
    return None


def _no_detail(settings: object) -> str:
    return ""


def _no_files(settings: object, target: str) -> list[tuple[str, str]]:
    return []


@dataclass(frozen=True)
class SchemeSpec:
    """Everything the rest of the program knows about one target scheme."""

    name: str
    settings: type[Model]  # the model of a `targets.<scheme>.<name>` entry
    build: Build | None  # None: this build has no backend for the scheme (its jobs are refused)
    # (target id, settings, the entry it resolved to) -> why its jobs are refused, or None
    refusal: Callable[[str, Any, str | None], str | None] = _no_refusal
    # the same for the config's load warning, where it reads better said another way
    # (same arguments; only called when `refusal` gave a reason); None: the reason itself
    refusal_warning: Callable[[str, Any, str | None], str] | None = None
    # the part after "<scheme>:" -> what is wrong with it ("needs a numeric chain id..."), or None
    name_problem: Callable[[str], str | None] = _any_name
    # check-config's detail after the target: the host only, never a secret or a URL path
    describe: Callable[[Any], str] = _no_detail
    # check-config (thorough): (settings, target id) -> [(field, problem)] for the files it names
    file_problems: Callable[[Any, str], list[tuple[str, str]]] = _no_files
    proof: Proof | None = None  # None: receipts of this scheme cannot be checked here
    # "" for a target that proves something; else what it is, for the warning the runtime
    # logs at start: "target is <development>: it proves nothing to third parties"
    development: str = ""
    # a target without an entry uses the model's defaults, shown as this entry name
    # ("embedded"); None: such a target has no settings (add targets.<scheme>.<name>)
    default_entry: str | None = None
    confirmations: bool = False  # proofs deepen over time (receipts pending until `required`)
    policy: bool = False  # accepts a cadence's policyOID (time-stamp authorities)


def host_of(url: str) -> str:
    """The host of a URL, for display: never the path or query (they may hold API keys)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "?"
    # without a scheme urlsplit finds no host: the text before the first "/", less any user:password@
    return parts.hostname or url.split("/")[0].rpartition("@")[2] or "?"


# --------------------------------------------------------------------------- local


def _build_local(
    target: str, settings: LocalTarget | None, data_dir: Path, clock: Clock, shared: SharedRecords | None
) -> Backend:
    from core.anchors.local import LocalTSA

    name = target.partition(":")[2]
    return LocalTSA(data_dir, name, clock, policies=settings.policies if settings is not None else ())


LOCAL = SchemeSpec(
    name="local",
    settings=LocalTarget,
    build=_build_local,
    proof="embedded-timestamp",
    development="the embedded development TSA",
    default_entry="embedded",
    policy=True,
)


# --------------------------------------------------------------------------- rfc3161


def _build_rfc3161(
    target: str, settings: Rfc3161Target, data_dir: Path, clock: Clock, shared: SharedRecords | None
) -> Backend:
    from core.anchors.rfc3161 import RFC3161Backend

    return RFC3161Backend(target, settings, clock)


def _rfc3161_files(settings: Rfc3161Target, target: str) -> list[tuple[str, str]]:
    if settings.trust_bundle is None:
        return []
    from core.config.files import trust_bundle_problem

    problem = trust_bundle_problem(settings.trust_bundle, target)
    return [("trust_bundle", problem)] if problem else []


RFC3161 = SchemeSpec(
    name="rfc3161",
    settings=Rfc3161Target,
    build=_build_rfc3161,
    describe=lambda s: host_of(s.url),
    file_problems=_rfc3161_files,
    proof="timestamp",
    policy=True,
)


# --------------------------------------------------------------------------- eip155


def _build_eip155(
    target: str, settings: Eip155Target, data_dir: Path, clock: Clock, shared: SharedRecords | None
) -> Backend:
    from core.anchors.evm import EVMBackend

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
    from core.config.files import key_file_problem

    problem = key_file_problem(settings.key_file)
    return [("key_file", problem)] if problem else []


EIP155 = SchemeSpec(
    name="eip155",
    settings=Eip155Target,
    build=_build_eip155,
    refusal=_wrong_chain,
    refusal_warning=_wrong_chain_warning,
    name_problem=_chain_id_problem,
    describe=lambda s: f"chainId {s.chain_id} via {host_of(s.rpc_url)}",
    file_problems=_key_file,
    proof="transaction",
    confirmations=True,
)


# --------------------------------------------------------------------------- btc


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


# --------------------------------------------------------------------------- the table

SCHEMES: dict[str, SchemeSpec] = {spec.name: spec for spec in (LOCAL, RFC3161, EIP155, BTC)}


class Targets(Model):
    """``targets:`` of the config file, the shape of VaultMesh ``anchors.yaml``: one field
    per entry of SCHEMES, typed with its settings model (checked below)."""

    local: dict[str, LocalTarget] = Field(default_factory=dict)
    rfc3161: dict[str, Rfc3161Target] = Field(default_factory=dict)
    eip155: dict[str, Eip155Target] = Field(default_factory=dict)
    btc: dict[str, BtcTarget] = Field(default_factory=dict)

    def of(self, scheme: str) -> dict[str, Any]:
        """The entries of one scheme of SCHEMES (KeyError for another)."""
        entries: dict[str, Any] = getattr(self, SCHEMES[scheme].name)
        return entries


_fields = {name: get_args(f.annotation)[1] for name, f in Targets.model_fields.items()}
if _fields != {name: spec.settings for name, spec in SCHEMES.items()}:  # pragma: no cover
    raise TypeError(f"Targets fields {_fields} do not match SCHEMES {list(SCHEMES)}")

