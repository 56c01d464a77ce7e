"""The configuration's pydantic models: Config and its sections, and its hash.

The target schemes' settings models live with their schemes (core/anchors/schemes.py)
and are re-exported here. ``config_hash`` is the canonical hash of a Config.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import typing
from collections.abc import Callable
from pathlib import Path, PosixPath
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    WrapSerializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# The target schemes' settings models, re-exported: importable from here as before.
from core.anchors.btc import BtcTarget as BtcTarget
from core.anchors.evm import Eip155Target as Eip155Target
from core.anchors.local import LocalTarget as LocalTarget
from core.anchors.rfc3161 import Rfc3161Auth as Rfc3161Auth
from core.anchors.rfc3161 import Rfc3161Target as Rfc3161Target
from core.anchors.schemes import SCHEMES, Targets, TargetSettings
from core.cadence import CADENCES, CadenceError, parse_every
from core.config.errors import TargetNotFound
from core.config.positions import format_segment
from core.config.sharing import SharedWhenEqual, folder_path, pool_of, shared_default
from core.jobs import JobKey, JobSpec, member_targets, redundant_parts, redundant_target, safe_name
from core.model_types import Model as _Model
from core.model_types import OptPath, OptPolicyOID, OptStr
from core.sources import DEFAULT_MAX_BATCH_BYTES, BatchLimits, KeyedLimits
from core.text import url_origin


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class SchedulerSettings(_Model):
    tick: float = Field(1.0, gt=0, description="upper bound on how long the engine sleeps (s)")
    data_dir: Path = Path(".vmsh")
    state_file: OptPath = None
    base_backoff: float = Field(5.0, gt=0)
    max_backoff_level: int = Field(7, ge=0, le=64)
    concurrency: int = Field(8, ge=1)
    stale_factor: float = Field(2.0, gt=0)
    max_batch_bytes: int = Field(
        DEFAULT_MAX_BATCH_BYTES, ge=128, description="a larger batch file is refused unread"
    )
    follow_symlinks: bool = Field(False, description="read batch files that are symbolic links")
    store: str = Field("file", description="file, or a PostgreSQL URL (cluster mode)")
    lease: float = Field(15.0, ge=2, le=3600, description="cluster mode: seconds a claimed job stays leased")

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        """'file' or a postgresql:// URL without a password; a refusal never echoes what
        could be a password (the URL's user:password, a `password=` parameter)."""
        value = value.strip()
        if value == "file":
            return value
        if value.startswith(("postgresql://", "postgres://")):
            try:
                parts = urlsplit(value)
                has_password = parts.password is not None or "password=" in parts.query.lower()
            except ValueError:
                raise PydanticCustomError("store", "the store URL is not a valid URL", {}) from None
            if has_password:
                raise PydanticCustomError(
                    "store", "the store URL holds a password: give it in VMSH_STORE_PASSWORD or "
                    "VMSH_STORE_PASSWORD_FILE instead, and postgresql://USER@HOST:PORT/DB here", {},
                )
            return value
        shown = url_origin(value) if "://" in value else "a value that is not a URL"
        raise PydanticCustomError(
            "store", "not a store: 'file' or a postgresql:// URL (got {v})", {"v": shown}
        )


LISTEN = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]*):(?P<port>\d{1,5})$")


class HttpSettings(_Model):
    listen: str = "127.0.0.1:9090"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        m = LISTEN.match(value)
        if not m or not 0 <= int(m.group("port")) <= 65535:
            raise PydanticCustomError(
                "listen", "{v} is not a listen address (expected <host>:<port>)", {"v": repr(value)}
            )
        return value

    @property
    def host(self) -> str:
        return LISTEN.match(self.listen).group("host").strip("[]") or "127.0.0.1"  # type: ignore[union-attr]

    @property
    def port(self) -> int:
        return int(LISTEN.match(self.listen).group("port"))  # type: ignore[union-attr]


class ControlSettings(_Model):
    """The control socket (core/control_server.py, docs/control-api.md); read at start only."""

    socket: OptPath = Field(None, description="Unix socket path; default <data_dir>/control.sock")
    mode: str = Field("0660", description="the socket's permission bits, octal, quoted")
    group: OptStr = Field(None, description="the socket's group (default: the scheduler's)")
    readonly_group: OptStr = Field(None, description="members may read but not force/pause/reload")
    max_connections: int = Field(128, ge=1, le=4096, description="open control connections at most; more get 503")
    write_timeout: float = Field(10.0, gt=0, le=300, description="seconds a client may leave an answer or event untaken before it is dropped")

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> str:  # a bare 0660 is a YAML number (432): ask for quotes
        if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
            raise PydanticCustomError("mode", "{v} is not a permission mode (expected octal, e.g. \"0660\")", {"v": repr(value)})
        return value

    @property
    def mode_bits(self) -> int:
        return int(self.mode, 8)


class LogSettings(_Model):
    level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)] = "INFO"
    file: OptPath = None
    max_bytes: int = Field(10 * 1024 * 1024, ge=0)
    backups: int = Field(5, ge=0)


class TuiSettings(_Model):
    theme: OptStr = None
    theme_file: OptPath = None
    keys: dict[str, str] = Field(default_factory=dict, description="action -> key")


# -- CloudEvents (optional): see core/observe/cloudevents.py

CloudEventType = Literal[
    "anchor.succeeded", "anchor.failed", "receipt.confirmed", "config.reloaded", "control.command"
]
CLOUDEVENT_TYPES: tuple[CloudEventType, ...] = typing.get_args(CloudEventType)


class CloudEventsHttp(_Model):
    """POST each event in structured mode (application/cloudevents+json) to ``url``."""

    url: str
    timeout: float = Field(5.0, gt=0, description="seconds per request")
    max_queue: int = Field(1000, ge=1, description="events held while the receiver is slow; more are dropped")
    retries: int = Field(3, ge=0, le=20, description="extra attempts per event, with exponential backoff")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise PydanticCustomError("url", "cloudevents.http.url must be an http:// or https:// URL", {})
        return value


class CloudEventsSettings(_Model):
    """``cloudevents:`` — emit anchor/receipt/reload events as CloudEvents 1.0 JSON.

    Either sink or both: ``http`` (a receiver URL) and ``file`` (JSON lines, appended).
    ``source`` is the CloudEvents ``source`` attribute (a URI-reference); ``types`` the
    events to emit (default: all of CLOUDEVENT_TYPES).
    """

    http: CloudEventsHttp | None = None
    file: OptPath = None
    source: str = Field("/vaultmesh/scheduler", min_length=1, pattern=r"^\S+$")
    types: list[CloudEventType] = Field(
        default_factory=lambda: list(CLOUDEVENT_TYPES)
    )


# -- namespaces

TARGET_ID = re.compile(r"^(?P<scheme>[A-Za-z0-9]+):(?P<name>[^\s:]+)$")


@functools.lru_cache(maxsize=1024)  # thousands of cadences name the same few targets
def _check_target(value: str) -> str:
    m = TARGET_ID.match(value)
    if not m or m.group("scheme") not in SCHEMES:
        raise PydanticCustomError(
            "target",
            "{v} is not a target (expected <scheme>:<name>, scheme one of {s})",
            {"v": repr(value), "s": "|".join(SCHEMES)},
        )
    problem = SCHEMES[m.group("scheme")].name_problem(m.group("name"))
    if problem:
        raise PydanticCustomError("target", "{v} {p}", {"v": repr(value), "p": problem})
    return value


# "rfc3161:, local:": the schemes that take a policyOID, real authorities first
_POLICY_SCHEMES = ", ".join(
    f"{spec.name}:" for spec in sorted(SCHEMES.values(), key=lambda spec: bool(spec.development)) if spec.policy
)


class Cadence(SharedWhenEqual):
    """One cadence of a namespace: one `target`, or several `targets` of which `min` must
    attest (redundant anchoring; `min` defaults to all of them)."""

    cadence_kind: ClassVar[str] = "fast"

    target: str | None = None
    targets: list[Annotated[str, AfterValidator(_check_target)]] | None = Field(None, min_length=2)
    min: int | None = Field(None, ge=1)
    every: str
    confirmations: int | None = Field(None, ge=0)
    policy_oid: OptPolicyOID = Field(None, alias="policyOID")
    anchor_unchanged: bool = False

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        return None if value is None else _check_target(value)

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        if info.data.get("target") is not None:
            raise PydanticCustomError("targets", "give either target or targets, not both", {})
        seen = [t for n, t in enumerate(value) if t in value[:n]]
        if seen:
            raise PydanticCustomError("targets", "{t} is named twice", {"t": repr(seen[0])})
        return value

    @field_validator("min")
    @classmethod
    def _min(cls, value: int | None, info: ValidationInfo) -> int | None:
        targets = info.data.get("targets")
        if value is not None and "targets" in info.data and targets is None:
            raise PydanticCustomError("min", "min applies to several targets (targets: [...]) only", {})
        if value is not None and targets is not None and value > len(targets):
            raise PydanticCustomError(
                "min", "min {m} is more than the {n} targets named", {"m": value, "n": len(targets)}
            )
        return value

    @model_validator(mode="after")
    def _one_target(self) -> Cadence:
        if self.target is None and self.targets is None:
            raise PydanticCustomError("target", "a cadence needs a target (or targets: [...] and min)", {})
        return self

    @property
    def job_target(self) -> str:
        """The job's target text: the target, or core.jobs.redundant_target of the targets."""
        if self.targets is not None:
            return redundant_target(self.min or len(self.targets), self.targets)
        assert self.target is not None  # _one_target
        return self.target

    @property
    def members(self) -> list[str]:
        """The targets this cadence anchors to (one, or the redundant ones)."""
        return list(self.targets) if self.targets is not None else [self.job_target]

    @field_validator("policy_oid")
    @classmethod
    def _policy_needs_a_tsa(cls, value: str | None, info: ValidationInfo) -> str | None:
        # absent when the target itself was refused
        named = info.data.get("targets") or ([info.data["target"]] if info.data.get("target") else [])
        for target in named:
            if value is not None and not SCHEMES[target.partition(":")[0]].policy:
                raise PydanticCustomError(
                    "policy_oid",
                    "a policy applies to time-stamp authorities ({s}) only; {t} has none",
                    {"s": _POLICY_SCHEMES, "t": target},
                )
        return value

    @field_validator("every", mode="before")
    @classmethod
    def _every(cls, value: Any) -> Any:
        try:
            # Syntax only here; "<n>*fast" is resolved against the real fast period later.
            parse_every(value, cadence=cls.cadence_kind, fast_seconds=1)
        except CadenceError as exc:
            raise PydanticCustomError("cadence", "{m}", {"m": str(exc)}) from None
        return value


class SlowCadence(Cadence):
    cadence_kind: ClassVar[str] = "strong"


class CadenceSet(SharedWhenEqual):
    fast: Cadence
    strong: SlowCadence | None = None
    cold: SlowCadence | None = None

    def items(self) -> list[tuple[str, Cadence]]:
        return [(n, c) for n in CADENCES if (c := getattr(self, n)) is not None]

    def seconds(self, name: str) -> int:
        fast = parse_every(self.fast.every, cadence="fast")
        if name == "fast":
            return fast
        return parse_every(getattr(self, name).every, cadence=name, fast_seconds=fast)


class Witnesses(SharedWhenEqual):
    """A namespace's `witnesses` (VaultMesh's namespaces.yaml): who must co-sign an event
    before VaultMesh's event gateway admits it. Read and shown, never enforced here:
    anchoring a batch root asks no witness (WITNESSES_NOTE says so to the user)."""

    min_required: int = Field(0, ge=0)
    allowlist: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        return f"{self.min_required} of {len(self.allowlist)}" if self.allowlist else f"{self.min_required} required"


# What check-config and the dashboard's namespace detail say of `witnesses`.
WITNESSES_NOTE = (
    "VaultMesh's admission policy for its event gateway, not for anchoring: "
    "the scheduler does not enforce it"
)


class SchemaPolicy(SharedWhenEqual):
    allow: list[str] = Field(default_factory=list)


def _source_path(value: Any, info: ValidationInfo) -> Any:
    """A namespace's `source` text made a Path from its folder's (sharing.folder_path),
    before OptPath's own reading: the same Path, in less time (100,000 namespaces)."""
    pool = pool_of(info)
    if pool is None or type(value) is not str or not value.strip():
        return value  # OptPath reads it
    return folder_path(value, pool)


class Namespace(_Model):
    description: str = ""
    witnesses: Witnesses = Field(default_factory=shared_default(Witnesses))
    schema_policy: SchemaPolicy = Field(default_factory=shared_default(SchemaPolicy))
    source: Annotated[OptPath, BeforeValidator(_source_path)] = None
    follow_symlinks: bool | None = None  # None: scheduler.follow_symlinks
    cadence: CadenceSet


class Config(_Model):
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    tui: TuiSettings = Field(default_factory=TuiSettings)
    cloudevents: CloudEventsSettings | None = None
    targets: Targets = Field(default_factory=Targets)
    namespaces: dict[str, Namespace] = Field(default_factory=dict)
    namespaces_file: OptPath = None
    anchors_file: OptPath = None

    # The shared batch folder of namespaces without `source` ($VMSH_ROOT/out/batches when
    # VMSH_ROOT is set); None means <data_dir>/batches (see batches_dir, batch_fallbacks).
    _batches_root: Path | None = PrivateAttr(default=None)

    # -- targets

    def resolve_target(self, target_id: str) -> TargetSettings:
        """Settings of ``<scheme>:<name>``: targets[scheme][name], else targets[scheme].default,
        else the scheme's defaults where it has some (local)."""
        scheme, sep, name = target_id.partition(":")
        if not sep or scheme not in SCHEMES or not name:
            raise TargetNotFound(f"{target_id!r} is not a target (expected <scheme>:<name>)")
        entries = self.targets.of(scheme)
        found: TargetSettings | None = entries.get(name, entries.get("default"))
        if found is not None:
            return found
        spec = SCHEMES[scheme]
        if spec.default_entry is not None:
            return spec.settings()
        raise TargetNotFound(
            f"no settings for target {target_id!r} (add targets.{scheme}.{format_segment(name)} "
            f"or targets.{scheme}.default)"
        )

    def resolved_entry(self, target_id: str) -> str | None:
        """Which settings entry a target uses, e.g. 'eip155.default'; None if unresolvable."""
        scheme, _, name = target_id.partition(":")
        if scheme not in SCHEMES:
            return None
        entries = self.targets.of(scheme)
        if name in entries:
            return f"{scheme}.{format_segment(name)}"
        if "default" in entries:
            return f"{scheme}.default"
        return SCHEMES[scheme].default_entry

    def target_mismatch(self, target_id: str) -> str | None:
        """Why anchoring to ``target_id`` must be refused, or None when it is consistent
        (the scheme's spec decides: core/anchors/schemes.py). A redundant job's target
        (core.jobs.redundant_target) is refused when one of its targets is."""
        if redundant_parts(target_id) is not None:
            return next(filter(None, map(self.target_mismatch, member_targets(target_id))), None)
        scheme, _, name = target_id.partition(":")
        try:
            settings = self.resolve_target(target_id)
        except TargetNotFound as exc:
            return str(exc)
        spec = SCHEMES[scheme]
        problem = spec.name_problem(name)
        if problem:
            return f"{target_id!r} {problem}"
        return spec.refusal(target_id, settings, self.resolved_entry(target_id))

    # -- jobs

    def share_batches_under(self, root: Path) -> None:
        """The shared batch folder is ``root`` (load_config: ``$VMSH_ROOT/out/batches``)."""
        self._batches_root = root

    @property
    def shared_batches_dir(self) -> Path:
        """The shared batch folder: `$VMSH_ROOT/out/batches`, else `<data_dir>/batches`."""
        return self._batches_root or (Path(self.scheduler.data_dir) / "batches")

    def batches_dir(self, namespace: str, shared: Path | None = None) -> Path:
        """The namespace's own batch folder: `source`, else the shared batch folder's
        subfolder named exactly as the namespace (`out/batches/dao:vaultmesh`). `shared`:
        the shared_batches_dir, when the caller has it already (one Path, not one a job)."""
        ns = self.namespaces[namespace]
        if ns.source is not None:
            return ns.source
        return (shared or self.shared_batches_dir) / namespace

    def batch_fallbacks(self, namespace: str, shared: Path | None = None) -> tuple[Path, ...]:
        """What a namespace without `source` reads while it has no folder of its own: the
        percent-encoded folder earlier versions read (`dao%3Avaultmesh`), then the shared
        folder itself, whose newest *.json the original VaultMesh service anchors for
        every namespace. Chosen at each read (core.sources.source_folder)."""
        if self.namespaces[namespace].source is not None:
            return ()
        shared = shared or self.shared_batches_dir
        safe = safe_name(namespace)
        return (shared / safe, shared) if safe != namespace else (shared,)

    def batch_limits(self) -> KeyedLimits:
        """How each namespace's batch folder may be read (for core.sources.configure), by
        the folder's text as core.sources keys it (`folder_key`: a configured Path's own,
        shared with the job's spec). The shared folder, read for many namespaces, has the
        scheduler's own limits. A folder without fallbacks has one of two objects (their
        symlink setting's): 100,000 namespaces made 100,000 equal limits, each keyed by a
        hashed Path, 0.3 s of a start."""
        size, shared = self.scheduler.max_batch_bytes, self.shared_batches_dir
        plain = {follow: BatchLimits(size, follow) for follow in (False, True)}
        out = KeyedLimits()
        if any(ns.source is None for ns in self.namespaces.values()):
            out[str(shared)] = plain[self.scheduler.follow_symlinks]
        for name, ns in self.namespaces.items():
            follow = ns.follow_symlinks
            if follow is None:
                follow = self.scheduler.follow_symlinks
            fallbacks = self.batch_fallbacks(name, shared)
            for legacy in fallbacks[:-1]:
                out[str(legacy)] = plain[follow]
            out[str(self.batches_dir(name, shared))] = BatchLimits(size, follow, fallbacks) if fallbacks else plain[follow]
        return out

    def jobs(self) -> list[JobSpec]:
        """One job per namespace and configured cadence, in file order."""
        out: list[JobSpec] = []
        of_target: dict[str, tuple[int, str | None]] = {}  # a few targets, thousands of jobs
        # A load holds equal cadence sets once (core/config/sharing.py): what a job takes
        # of its set is worked out once per set, not once per namespace.
        of_set: dict[int, list[tuple[str, str, int, int, bool, str | None]]] = {}
        shared = self.shared_batches_dir
        for name, ns in self.namespaces.items():
            source = self.batches_dir(name, shared)
            settings = of_set.get(id(ns.cadence))
            if settings is None:
                settings = of_set[id(ns.cadence)] = self._job_settings(ns.cadence, of_target)
            for cadence_name, target, every, confirmations, unchanged, policy in settings:
                out.append(JobSpec(JobKey(name, cadence_name), target, every, source, confirmations, unchanged, policy))
        return out

    def _job_settings(
        self, cadences: CadenceSet, of_target: dict[str, tuple[int, str | None]]
    ) -> list[tuple[str, str, int, int, bool, str | None]]:
        """(cadence, target, every, confirmations, anchor_unchanged, policyOID) of each
        cadence of a set, as its jobs take them."""
        out = []
        for cadence_name, cadence in cadences.items():
            confirmations = cadence.confirmations
            policy = cadence.policy_oid
            deepest = 0
            for member in cadence.members:
                if member not in of_target:
                    of_target[member] = self._target_depth_and_policy(member)
                depth, target_policy = of_target[member]
                deepest = max(deepest, depth)
                policy = policy or target_policy
            out.append((
                cadence_name, cadence.job_target, cadences.seconds(cadence_name),
                deepest if confirmations is None else confirmations,
                cadence.anchor_unchanged,
                # The cadence's policyOID, else its TSA target's: the policy requested.
                policy,
            ))
        return out

    def _target_depth_and_policy(self, target: str) -> tuple[int, str | None]:
        """A target's own confirmations (schemes that count them) and policyOID."""
        try:
            settings: TargetSettings | None = self.resolve_target(target)
        except TargetNotFound:
            settings = None
        depth = int(getattr(settings, "confirmations", 0)) if SCHEMES[target.partition(":")[0]].confirmations else 0
        return depth, getattr(settings, "policy_oid", None)


# --------------------------------------------------------------------------- hashing


@functools.cache
def fields_holding(model: type[BaseModel], kind: type) -> tuple[str, ...]:
    """The fields of `model` that may hold a `kind` (Path, SecretStr), directly or inside
    their models, lists, dicts and unions; a walk over the values looks at these only."""
    return tuple(name for name, f in model.model_fields.items() if _may_hold(f.annotation, kind, set()))


def _may_hold(annotation: Any, kind: type, seen: set[type]) -> bool:
    if annotation is Any:
        return True
    if isinstance(annotation, type):
        if issubclass(annotation, kind):
            return True
        if issubclass(annotation, BaseModel) and annotation not in seen:
            seen.add(annotation)
            return any(_may_hold(f.annotation, kind, seen) for f in annotation.model_fields.values())
        return False
    return any(_may_hold(arg, kind, seen) for arg in typing.get_args(annotation))


def config_hash(config: Config) -> str:
    """sha256 hex of a canonical JSON form of the model (keys sorted, no spaces, UTF-8);
    secrets enter as their sha256. The namespaces' part is written model by model, each
    distinct model once (thousands of namespaces share a few cadences): the same text as
    json.dumps of the whole dump, a fraction of its time (issue 24)."""
    doc = _canonical(config, skip="namespaces")
    # Where this process keeps its state and where it is reached are not what is anchored,
    # nor how: replicas of one cluster, each with its own data dir, port and control socket
    # and reaching one database by different names, run the same config (their batch
    # folder, which data_dir may imply, is `_batches_root` below).
    for name in ("store", "lease", "data_dir", "state_file"):
        doc["scheduler"].pop(name, None)
    doc["http"].pop("listen", None)
    doc.pop("control", None)
    # The shared batch folder counts only when some namespace reads it (has no `source`).
    reads_root = any(ns.source is None for ns in config.namespaces.values())
    doc["_batches_root"] = str(config._batches_root) if config._batches_root and reads_root else None
    doc["namespaces"] = None  # its text is _namespaces_text's
    text = "{" + ",".join(
        f"{_json_string(key)}:{_namespaces_text(config.namespaces) if key == 'namespaces' else _json(value)}"
        for key, value in sorted(doc.items())
    ) + "}"
    return hashlib.sha256(text.encode()).hexdigest()


def _path_text(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} has no canonical form")


# The canonical form's encoder and its strings (what json.dumps(sort_keys=True,
# separators=(",", ":"), ensure_ascii=False) writes).
_json = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_path_text).encode
_json_string: Callable[[str], str] = json.encoder.encode_basestring


def _namespaces_text(namespaces: dict[str, Namespace]) -> str:
    """The canonical text of the namespaces mapping."""
    of, string = _ModelTexts().of, _json_string
    return "{" + ",".join([string(name) + ":" + of(namespaces[name]) for name in sorted(namespaces)]) + "}"


_IS_CADENCE: dict[type, bool] = {}  # by model class (isinstance with a model class is slow)


class _ModelTexts:
    """The canonical text of models (in a namespace: a cadence of one target leaves out
    `targets` and `min`, as it hashed before redundant anchoring existed), each distinct
    model object written once."""

    def __init__(self) -> None:
        self.texts: dict[int, str] = {}  # by id: the models outlive this object

    def of(self, model: BaseModel) -> str:
        text = self.texts.get(id(model))
        if text is None:
            text = self.texts[id(model)] = self._text(model)
        return text

    def _text(self, model: BaseModel) -> str:
        kind = type(model)
        cadence = _IS_CADENCE.get(kind)
        if cadence is None:
            cadence = _IS_CADENCE[kind] = issubclass(kind, Cadence)
        if cadence:
            doc = _canonical(model)
            if doc.get("targets") is None:
                del doc["targets"], doc["min"]
            return _json(doc)
        fields = _dumped_as_fields(kind)
        if fields is None or model.__pydantic_extra__:
            return _json(_canonical(model))
        values, texts, parts = model.__dict__, self.texts, []
        for name, prefix in fields:
            value = values[name]
            kind = type(value)
            if kind is str:
                parts.append(prefix + _json_string(value))
            elif value is None:
                parts.append(prefix + "null")
            elif kind is bool:
                parts.append(prefix + ("true" if value else "false"))
            elif (text := texts.get(id(value))) is not None:  # a model written already
                parts.append(prefix + text)
            elif kind is PosixPath:
                parts.append(prefix + _json_string(str(value)))
            elif isinstance(value, BaseModel):
                parts.append(prefix + self.of(value))
            elif isinstance(value, Path):
                parts.append(prefix + _json_string(str(value)))
            else:
                parts.append(prefix + _json(_canonical(value)))
        return "{" + ",".join(parts) + "}"


@functools.cache
def _dumped_as_fields(model: type[BaseModel]) -> tuple[tuple[str, str], ...] | None:
    """The field names of `model`, sorted, each with its text as a key (`"name":`), when
    its dump holds each field's value under its name (no serializer, computed field,
    excluded field or alias in the dump); else None (its text is then made from its dump)."""
    decorators = model.__pydantic_decorators__
    if decorators.field_serializers or decorators.model_serializers or decorators.computed_fields:
        return None
    if model.model_config.get("serialize_by_alias"):
        return None
    for f in model.model_fields.values():
        if f.exclude or getattr(f, "exclude_if", None) or any(isinstance(m, (PlainSerializer, WrapSerializer)) for m in f.metadata):
            return None
    return tuple((name, _json_string(name) + ":") for name in sorted(model.model_fields))


def _canonical(value: Any, skip: str | None = None) -> Any:
    """A value's canonical data (`skip`: a model's field left out)."""
    if isinstance(value, BaseModel):
        # pydantic's own dump (Paths left to _path_text), but for the fields holding secrets
        secret = fields_holding(type(value), SecretStr)
        left_out = {*secret, skip} if skip else set(secret)
        doc: dict[str, Any] = value.model_dump(exclude=left_out) if left_out else value.model_dump()
        doc.update((name, _canonical(getattr(value, name))) for name in secret)
        return doc
    if isinstance(value, SecretStr):
        return "sha256:" + hashlib.sha256(value.get_secret_value().encode()).hexdigest()
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
