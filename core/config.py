"""Configuration: pydantic models, YAML loading with file:line:col errors, ${VAR}, hash.

Sources, highest precedence first:

1. ``overrides`` (the CLI flags: config path, data dir, log level, theme...)
2. the environment: ``ENV_TABLE`` below is the one list of its variables (``--help``
   and the README print it)
3. ``.env`` in the working directory (the real environment wins over it)
4. the config file (and the VaultMesh ``namespaces.yaml`` / ``anchors.yaml`` it includes)
5. the defaults in the models below

``load_config`` is a pipeline of named steps over one ``_Load``: locate the config file,
read it, include the VaultMesh files, apply the environment, apply the flags, validate,
resolve paths (and, for check-config, the thorough checks). Every problem is reported
with the file, line, column and field path of the value that caused it (``_Problems``
places them), and all problems of a load are reported at once (``ConfigError.issues``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import stat
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, BinaryIO, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

# The target schemes' settings models, re-exported: importable from here as before.
from core.anchors.btc import BtcTarget as BtcTarget
from core.anchors.evm import Eip155Target as Eip155Target
from core.anchors.local import LocalTarget as LocalTarget
from core.anchors.rfc3161 import Rfc3161Auth as Rfc3161Auth
from core.anchors.rfc3161 import Rfc3161Target as Rfc3161Target
from core.anchors.schemes import SCHEMES, Targets, TargetSettings
from core.cadence import CADENCES, CadenceError, parse_every
from core.jobs import JobKey, JobSpec, namespace_name_problem, safe_name
from core.model_types import Model as _Model
from core.model_types import OptPath, OptPolicyOID, OptStr
from core.sources import DEFAULT_MAX_BATCH_BYTES, BatchLimits

# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class EnvVar:
    """One environment variable the scheduler reads (a row of ENV_TABLE)."""

    name: str
    setting: str | None  # the config key load_config's environment step sets; None: see meaning
    kind: str  # how its text is read: a key of _ENV_READERS, or what it names
    meaning: str


# Every variable the scheduler reads by a fixed name, in the order --help and the README
# list them. ENV_VARS, --help's epilog (env_help), the README table (env_table_markdown)
# and the environment step of load_config come from here; tests/unit/test_env_table.py
# checks that the code reads no other and that the README shows this table.
ENV_TABLE: tuple[EnvVar, ...] = (
    EnvVar("VMSH_CONFIG", None, "path", "the config file, when no --config is given"),
    EnvVar("VMSH_ROOT", None, "path",
           "a VaultMesh checkout: without a config file, its vmsh/config/namespaces.yaml "
           "and anchors.yaml are the configuration; $VMSH_ROOT/out/batches is the shared "
           "batch folder"),
    EnvVar("VMSH_NAMESPACES", None, "path",
           "the VaultMesh namespaces.yaml to include, instead of namespaces_file "
           "(relative to VMSH_ROOT when set)"),
    EnvVar("VMSH_DATA_DIR", "scheduler.data_dir", "path", "state, receipts, journal, lock"),
    EnvVar("VMSH_STATE", "scheduler.state_file", "path",
           "the job state file; one in the original service's format is imported, and "
           "ours is then state/scheduler.json in the data dir"),
    EnvVar("VMSH_STORE", "scheduler.store", "url",
           "file (the data dir, the default) or a PostgreSQL URL shared by several "
           "schedulers (cluster mode); give no password in it"),
    EnvVar("VMSH_STORE_PASSWORD", None, "secret", "the PostgreSQL store's password (never logged)"),
    EnvVar("VMSH_STORE_PASSWORD_FILE", None, "path",
           "a file whose first line is the PostgreSQL store's password"),
    EnvVar("VMSH_TICK_MS", "scheduler.tick", "milliseconds",
           "longest the engine sleeps between checks"),
    EnvVar("VMSH_BASE_BACKOFF", "scheduler.base_backoff", "seconds", "base of the retry backoff"),
    EnvVar("VMSH_MAX_BACKOFF", "scheduler.max_backoff_level", "integer", "cap on the backoff level"),
    EnvVar("METRICS_PORT", "http.listen", "port", "the port of http.listen (its host is kept)"),
    EnvVar("LOG_LEVEL", "log.level", "level", "DEBUG, INFO, WARNING or ERROR"),
    EnvVar("VMSH_THEME", None, "theme name",
           "the dashboard's theme, between --theme and tui.theme (read by the dashboard)"),
)
ENV_VARS = tuple(var.name for var in ENV_TABLE)


def env_help() -> str:
    """The environment section of --help (core/cli.py builds its epilog from it)."""
    import textwrap

    lines = ["environment (each sets the config key after ->):"]
    for var in ENV_TABLE:
        text = f"-> {var.setting} ({var.kind})" if var.setting else var.meaning
        lines += textwrap.wrap(
            text, 88, initial_indent=f"  {var.name:<18} ", subsequent_indent=" " * 21
        )
    return "\n".join(lines)


def env_table_markdown() -> str:
    """The README's table of environment variables (tests/unit/test_env_table.py checks it)."""
    rows = ["| variable | sets | read as | meaning |", "|---|---|---|---|"]
    for var in ENV_TABLE:
        setting = f"`{var.setting}`" if var.setting else ""
        rows.append(f"| `{var.name}` | {setting} | {var.kind} | {var.meaning} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in the configuration, located as precisely as the source allows."""

    file: str | None
    line: int | None
    col: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
                if self.col is not None:
                    where += f":{self.col}"
            where += ": "
        path = f"{self.path}: " if self.path else ""
        return f"{where}{path}{self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class TargetNotFound(LookupError):
    """A target id that no settings in ``targets`` resolve."""


# --------------------------------------------------------------------------- models


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
        value = value.strip()
        if value == "file" or value.startswith(("postgresql://", "postgres://")):
            if "@" in value.partition("://")[2].partition("/")[0] and ":" in value.partition("://")[2].partition("@")[0]:
                raise PydanticCustomError(
                    "store", "the store URL holds a password: give it in VMSH_STORE_PASSWORD or "
                    "VMSH_STORE_PASSWORD_FILE instead", {},
                )
            return value
        raise PydanticCustomError(
            "store", "{v} is not a store: 'file' or a postgresql:// URL", {"v": repr(value[:60])}
        )


_LISTEN = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]*):(?P<port>\d{1,5})$")


class HttpSettings(_Model):
    listen: str = "127.0.0.1:9090"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        m = _LISTEN.match(value)
        if not m or not 0 <= int(m.group("port")) <= 65535:
            raise PydanticCustomError(
                "listen", "{v} is not a listen address (expected <host>:<port>)", {"v": repr(value)}
            )
        return value

    @property
    def host(self) -> str:
        return _LISTEN.match(self.listen).group("host").strip("[]") or "127.0.0.1"  # type: ignore[union-attr]

    @property
    def port(self) -> int:
        return int(_LISTEN.match(self.listen).group("port"))  # type: ignore[union-attr]


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

_TARGET = re.compile(r"^(?P<scheme>[A-Za-z0-9]+):(?P<name>[^\s:]+)$")


def _check_target(value: str) -> str:
    m = _TARGET.match(value)
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


class Cadence(_Model):
    cadence_kind: ClassVar[str] = "fast"

    target: str
    every: str
    confirmations: int | None = Field(None, ge=0)
    policy_oid: OptPolicyOID = Field(None, alias="policyOID")
    anchor_unchanged: bool = False

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        return _check_target(value)

    @field_validator("policy_oid")
    @classmethod
    def _policy_needs_a_tsa(cls, value: str | None, info: ValidationInfo) -> str | None:
        target = info.data.get("target")  # absent when the target itself was refused
        if value is not None and target and not SCHEMES[target.partition(":")[0]].policy:
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


class CadenceSet(_Model):
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


class Witnesses(_Model):
    min_required: int = Field(0, ge=0)
    allowlist: list[str] = Field(default_factory=list)


class SchemaPolicy(_Model):
    allow: list[str] = Field(default_factory=list)


class Namespace(_Model):
    description: str = ""
    witnesses: Witnesses = Field(default_factory=Witnesses)
    schema_policy: SchemaPolicy = Field(default_factory=SchemaPolicy)
    source: OptPath = None
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
            f"no settings for target {target_id!r} (add targets.{scheme}.{_seg(name)} "
            f"or targets.{scheme}.default)"
        )

    def resolved_entry(self, target_id: str) -> str | None:
        """Which settings entry a target uses, e.g. 'eip155.default'; None if unresolvable."""
        scheme, _, name = target_id.partition(":")
        if scheme not in SCHEMES:
            return None
        entries = self.targets.of(scheme)
        if name in entries:
            return f"{scheme}.{_seg(name)}"
        if "default" in entries:
            return f"{scheme}.default"
        return SCHEMES[scheme].default_entry

    def target_mismatch(self, target_id: str) -> str | None:
        """Why anchoring to ``target_id`` must be refused, or None when it is consistent
        (the scheme's spec decides: core/anchors/schemes.py)."""
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

    @property
    def shared_batches_dir(self) -> Path:
        """The shared batch folder: `$VMSH_ROOT/out/batches`, else `<data_dir>/batches`."""
        return self._batches_root or (Path(self.scheduler.data_dir) / "batches")

    def batches_dir(self, namespace: str) -> Path:
        """The namespace's own batch folder: `source`, else the shared batch folder's
        subfolder named exactly as the namespace (`out/batches/dao:vaultmesh`)."""
        ns = self.namespaces[namespace]
        if ns.source is not None:
            return ns.source
        return self.shared_batches_dir / namespace

    def batch_fallbacks(self, namespace: str) -> tuple[Path, ...]:
        """What a namespace without `source` reads while it has no folder of its own: the
        percent-encoded folder earlier versions read (`dao%3Avaultmesh`), then the shared
        folder itself, whose newest *.json the original VaultMesh service anchors for
        every namespace. Chosen at each read (core.sources.source_folder)."""
        if self.namespaces[namespace].source is not None:
            return ()
        shared = self.shared_batches_dir
        legacy = shared / safe_name(namespace)
        return (legacy, shared) if safe_name(namespace) != namespace else (shared,)

    def batch_limits(self) -> dict[Path, BatchLimits]:
        """How each namespace's batch folder may be read (for core.sources.configure). The
        shared folder, read for many namespaces, has the scheduler's own limits."""
        size = self.scheduler.max_batch_bytes
        out: dict[Path, BatchLimits] = {}
        if any(ns.source is None for ns in self.namespaces.values()):
            out[self.shared_batches_dir] = BatchLimits(size, self.scheduler.follow_symlinks)
        for name, ns in self.namespaces.items():
            follow = ns.follow_symlinks
            if follow is None:
                follow = self.scheduler.follow_symlinks
            fallbacks = self.batch_fallbacks(name)
            for legacy in fallbacks[:-1]:
                out[legacy] = BatchLimits(size, follow)
            out[self.batches_dir(name)] = BatchLimits(size, follow, fallbacks)
        return out

    def jobs(self) -> list[JobSpec]:
        """One job per namespace and configured cadence, in file order."""
        out: list[JobSpec] = []
        for name, ns in self.namespaces.items():
            source = self.batches_dir(name)
            for cadence_name, cadence in ns.cadence.items():
                try:
                    settings: TargetSettings | None = self.resolve_target(cadence.target)
                except TargetNotFound:
                    settings = None
                confirmations = cadence.confirmations
                if confirmations is None:  # the target's own depth, where its scheme has one
                    deepens = SCHEMES[cadence.target.partition(":")[0]].confirmations
                    confirmations = int(getattr(settings, "confirmations", 0)) if deepens else 0
                out.append(
                    JobSpec(
                        key=JobKey(name, cadence_name),
                        target=cadence.target,
                        every=ns.cadence.seconds(cadence_name),
                        source=source,
                        confirmations=confirmations,
                        anchor_unchanged=cadence.anchor_unchanged,
                        # The cadence's policyOID, else its TSA target's: the policy requested.
                        policy_oid=cadence.policy_oid or getattr(settings, "policy_oid", None),
                    )
                )
        return out


@dataclass
class LoadedConfig:
    config: Config
    hash: str
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    path: Path | None = None  # the main config file; None in the bare VaultMesh layout
    # --import-state: the original service's state file, imported on the first start
    # (core/migrate.py); not part of the config's hash, never read on reload.
    import_state: Path | None = None


# --------------------------------------------------------------------------- hashing


def config_hash(config: Config) -> str:
    """sha256 hex of a canonical JSON form of the model; secrets enter as their sha256."""
    doc = _canonical(config)
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
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {name: _canonical(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, SecretStr):
        return "sha256:" + hashlib.sha256(value.get_secret_value().encode()).hexdigest()
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- positions


class _Pos:
    """Where a value came from: file, line/col of its key and of its value (1-based)."""

    __slots__ = ("file", "key", "parent", "key_mark", "mark", "children", "base", "label")

    def __init__(
        self,
        file: str | None,
        key: Any = None,
        parent: _Pos | None = None,
        key_mark: tuple[int, int] | None = None,
        mark: tuple[int, int] | None = None,
        base: Path | None = None,
        label: str | None = None,
    ) -> None:
        self.file = file
        self.key = key
        self.parent = parent
        self.key_mark = key_mark
        self.mark = mark
        self.children: dict[Any, _Pos] = {}
        self.base = base
        self.label = label  # a full display path that overrides the computed one

    def segments(self) -> list[Any]:
        if self.label is not None:
            return self.label.split(".")
        segs: list[Any] = []
        node: _Pos | None = self
        while node is not None and node.parent is not None:
            segs.append(node.key)
            node = node.parent
        return list(reversed(segs))


def _norm(key: Any) -> str:
    return str(key).replace("_", "").replace("-", "").lower()


def _find(root: _Pos, loc: tuple[Any, ...]) -> tuple[_Pos, int]:
    """Deepest node along ``loc`` and how many segments matched (names ~ aliases)."""
    node, matched = root, 0
    for seg in loc:
        child = node.children.get(seg)
        if child is None:
            wanted = _norm(seg)
            child = next((c for k, c in node.children.items() if _norm(k) == wanted), None)
        if child is None:
            break
        node, matched = child, matched + 1
    return node, matched


_PLAIN_SEG = re.compile(r"^[A-Za-z0-9_-]+$")


def _seg(seg: Any) -> str:
    text = str(seg)
    if _PLAIN_SEG.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_path(segments: list[Any] | tuple[Any, ...]) -> str:
    out = ""
    for seg in segments:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif seg is not None and str(seg).startswith(("env ", "--")):
            out += ("." if out else "") + str(seg)
        else:
            out += ("." if out else "") + _seg(seg)
    return out


class _Problems:
    """The problems of one load, each placed where its value came from.

    ``root`` is the position tree of the main file (of an empty document until it is
    read). ``add`` takes a file, a (line, col) mark and field path segments; ``at`` a node
    of a tree (its value's position, or its key's with ``key=True``); ``in_file`` a
    problem with a whole file or variable; ``add_validation_errors`` pydantic's errors,
    placed by their location in ``root``.
    """

    def __init__(self, root: _Pos) -> None:
        self.issues: list[ConfigIssue] = []
        self.root = root

    def add(self, file: str | None, mark: tuple[int, int] | None, segments: list[Any], message: str) -> None:
        line, col = mark or (None, None)
        self.issues.append(ConfigIssue(file, line, col, format_path(segments), message))

    def in_file(self, file: str | None, message: str, mark: tuple[int, int] | None = None) -> None:
        self.add(file, mark, [], message)

    def at(self, node: _Pos | None, message: str, *, key: bool = False) -> None:
        """At ``node`` (None: a problem nothing in the files shows, reported without a place)."""
        if node is None:
            self.add(None, None, [], message)
        else:
            self.add(node.file, node.key_mark if key else node.mark, node.segments(), message)

    def add_validation_errors(self, exc: PydanticValidationError, failed: set[int]) -> None:
        self.issues.extend(_pydantic_issues(exc, self.root, failed))

    def error(self) -> ConfigError:
        """Every problem, each once, in file order."""
        return ConfigError(_sorted_unique(self.issues))


# --------------------------------------------------------------------------- YAML + ${VAR}

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-((?:[^}\\]|\\.)*))?\}")


def _interpolate(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand ${VAR} and ${VAR:-default}; ``$$`` is a literal ``$``. Returns (text, missing)."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is None:
            missing.append(name)
            return ""
        if len(default) >= 2 and default[0] == default[-1] and default[0] in "\"'":
            return default[1:-1]
        return default

    return _VAR.sub(sub, text), missing


# libyaml's composer when PyYAML was built with it: same nodes and marks, a fraction of the
# time and of the peak memory (the pure-Python scanner makes a token object per character run).
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Bounds on one YAML file, so that a hostile or broken file is refused in milliseconds
# instead of freezing (or killing) the scheduler that reads it. A composed document shares
# an aliased value between its uses; building plain data expands every use, so ten lines of
# aliases (the "billion laughs") would expand to 10**9 values. The composed graph is
# measured first, each node once, and refused past these limits.
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # about 30,000 namespaces; checked before reading
MAX_YAML_DEPTH = 64  # levels of nesting, aliases expanded (a config needs about 6)
MAX_YAML_ALIASES = 10_000  # uses of `*name` in one file
MAX_YAML_ALIAS_VALUES = 250_000  # values that aliases add once expanded


class NotRegularFile(ValueError):
    """A config file that is a FIFO, a device, a directory or a socket: refused unread."""


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages: "a FIFO", "a directory", ..."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading without ever blocking in open() or read(): O_NONBLOCK (a
    FIFO opens at once instead of waiting for a writer), then fstat on what was opened
    (no race with a rename) must say a regular file, else NotRegularFile."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(
                f"not a regular file ({file_kind(mode)}): a config file must be a regular file"
            )
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_config_text(path: Path) -> str:
    """The file's text; ValueError when it is larger than MAX_CONFIG_BYTES (never read past
    it), NotRegularFile (a ValueError) when it is a FIFO, a device or a directory."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(MAX_CONFIG_BYTES + 1) if size <= MAX_CONFIG_BYTES else b""
    if size > MAX_CONFIG_BYTES or len(data) > MAX_CONFIG_BYTES:
        raise ValueError(
            f"the file is {max(size, len(data))} bytes, more than the {MAX_CONFIG_BYTES} bytes "
            "a config file may have"
        )
    return data.decode("utf-8")


def _yaml_children(node: yaml.Node) -> list[tuple[yaml.Node, yaml.Node]]:
    """(child, where an alias there is reported) pairs: an aliased node carries only the
    position of its anchor, so a use is reported at its key, or at the list holding it."""
    if isinstance(node, yaml.MappingNode):
        out: list[tuple[yaml.Node, yaml.Node]] = []
        for key, value in node.value:
            out += [(key, key), (value, key)]
        return out
    if isinstance(node, yaml.SequenceNode):
        return [(item, node) for item in node.value]
    return []


def _yaml_refusal(document: yaml.Node) -> tuple[yaml.Node, str] | None:
    """Why a composed document must not be built, and the node to report it at; or None.

    One pass over the distinct nodes (an alias is the node it names, met again): the
    expanded size and height of each node are kept, so an alias costs one look-up.
    """
    sizes: dict[int, int] = {}  # values under a node once aliases are expanded, itself included
    heights: dict[int, int] = {}  # levels from a node down, aliases expanded
    open_nodes: set[int] = set()  # the node being measured and its ancestors
    distinct = aliases = 0
    stack: list[tuple[yaml.Node, yaml.Node, int, bool]] = [(document, document, 1, False)]
    while stack:
        node, where, depth, leaving = stack.pop()
        nid = id(node)
        if leaving:
            kids = [id(k) for k, _ in _yaml_children(node)]
            sizes[nid] = 1 + sum(sizes[k] for k in kids)
            heights[nid] = 1 + max((heights[k] for k in kids), default=0)
            open_nodes.discard(nid)
            if sizes[nid] - distinct > MAX_YAML_ALIAS_VALUES:
                return node, (
                    f"aliases here expand to {sizes[nid]} values; aliases may add at most "
                    f"{MAX_YAML_ALIAS_VALUES} to a file (an alias bomb?)"
                )
            continue
        if nid in open_nodes:
            return where, "an alias refers to a value that contains it (a recursive alias)"
        if nid in sizes:
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                return where, f"more than {MAX_YAML_ALIASES} aliases (*name) in one file"
            if depth - 1 + heights[nid] > MAX_YAML_DEPTH:
                return where, f"nested more than {MAX_YAML_DEPTH} levels deep (aliases expanded)"
            continue
        if depth > MAX_YAML_DEPTH:
            return node, f"nested more than {MAX_YAML_DEPTH} levels deep"
        distinct += 1
        open_nodes.add(nid)
        stack.append((node, where, depth, True))
        # In document order, so an anchor is measured before its aliases and those are
        # reported where they are used.
        stack.extend((kid, at, depth + 1, False) for kid, at in reversed(_yaml_children(node)))
    return None


class _YamlReader:
    """Composes a YAML file, builds plain data and a position tree, expands ${VAR}."""

    def __init__(self, env: Mapping[str, str], problems: _Problems, *, allow_unset: bool = False) -> None:
        self.env = env
        self.problems = problems
        self.failed: set[int] = set()  # ids of _Pos whose value failed interpolation
        self.allow_unset = allow_unset  # unset ${VAR}: "" and a warning instead of an error
        self.unset: list[str] = []

    def read(self, path: Path, display: str, base: Path) -> tuple[Any, _Pos] | None:
        try:
            text = _read_config_text(path)
        except FileNotFoundError:
            self.problems.in_file(display, "file not found")
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.in_file(display, f"cannot read: {exc}")
            return None
        except ValueError as exc:  # too large
            self.problems.in_file(display, str(exc))
            return None
        try:
            node = yaml.compose(text, Loader=_COMPOSER)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or "invalid YAML"
            if exc.context:
                problem = f"{problem} ({exc.context}"
                if exc.context_mark and mark is not exc.context_mark:
                    problem += f" at line {exc.context_mark.line + 1}"
                problem += ")"
            where = (mark.line + 1, mark.column + 1) if mark else None
            self.problems.in_file(display, f"YAML syntax error: {problem}", where)
            return None
        except yaml.YAMLError as exc:
            self.problems.in_file(display, f"YAML error: {exc}")
            return None
        except RecursionError:  # the pure-Python composer (no libyaml) recurses per level
            self.problems.in_file(display, "YAML nested too deeply")
            return None
        root = _Pos(display, base=base)
        if node is None:
            return {}, root
        refusal = _yaml_refusal(node)
        if refusal is not None:
            at, message = refusal
            self.problems.in_file(display, message, (at.start_mark.line + 1, at.start_mark.column + 1))
            return None
        self.file = display
        self.base = base
        self.constructor = yaml.SafeLoader("")  # constructs scalars with YAML's own rules
        root.mark = (node.start_mark.line + 1, node.start_mark.column + 1)
        return self._build(node, root), root

    def _build(self, node: yaml.Node, pos: _Pos) -> Any:
        if isinstance(node, yaml.MappingNode):
            self.constructor.flatten_mapping(node)
            out: dict[Any, Any] = {}
            first: dict[Any, tuple[int, int]] = {}
            for key_node, value_node in node.value:
                key_mark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                if not isinstance(key_node, yaml.ScalarNode):
                    self.problems.add(pos.file, key_mark, pos.segments(), "a key must be a plain value, not a list or mapping")
                    continue
                key = self.constructor.construct_object(key_node)
                if key in first:
                    child = _Pos(self.file, key, pos, key_mark, None, self.base)
                    self.problems.at(child, f"duplicate key {str(key)!r} (first at line {first[key][0]}, column {first[key][1]})", key=True)
                    continue
                first[key] = key_mark
                value_mark = (value_node.start_mark.line + 1, value_node.start_mark.column + 1)
                child = _Pos(self.file, key, pos, key_mark, value_mark, self.base)
                pos.children[key] = child
                out[key] = self._build(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                mark = (item.start_mark.line + 1, item.start_mark.column + 1)
                child = _Pos(self.file, i, pos, mark, mark, self.base)
                pos.children[i] = child
                items.append(self._build(item, child))
            return items
        value = self.constructor.construct_object(node)
        if isinstance(value, int) and isinstance(node, yaml.ScalarNode) and not node.style and node.value.lower().startswith(("0x", "+0x", "-0x")):
            value = node.value  # 0x... are addresses and keys here, not numbers: keep the text
        if isinstance(value, str) and "$" in value:
            value, missing = _interpolate(value, self.env)
            for name in missing:
                if self.allow_unset:
                    self.unset.append(f"{pos.file}: {format_path(pos.segments())}: variable {name} is not set")
                    continue
                self.failed.add(id(pos))
                self.problems.at(pos, f"variable {name} is not set (set it, or write ${{{name}:-default}})")
        return value


# --------------------------------------------------------------------------- loader


def _resolve(path_text: str | Path, base: Path) -> Path:
    p = Path(os.path.expanduser(str(path_text)))
    return p if p.is_absolute() else (base / p)


def _display(path: Path, cwd: Path) -> str:
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


_OVERRIDE_KEYS = {
    "data_dir": ("scheduler", "data_dir"),
    "state_file": ("scheduler", "state_file"),
    "tick": ("scheduler", "tick"),
    "log_level": ("log", "level"),
    "log_file": ("log", "file"),
    "listen": ("http", "listen"),
    "theme": ("tui", "theme"),
    "theme_file": ("tui", "theme_file"),
}


def load_config(
    path: Path | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    cwd: Path | None = None,
    allow_unset: bool = False,
    thorough: bool = False,
) -> LoadedConfig:
    """Load, merge and validate the configuration; raise ConfigError listing every problem.

    ``allow_unset``: an unset ``${VAR}`` becomes an empty value and a warning, not an error
    (``verify`` reads trust bundles and node URLs, never the secrets such variables hold).

    ``thorough`` (check-config): also check what only the dashboard reads and open the
    files the config names (core/config_check.py).

    ``overrides`` holds CLI flags: ``config`` (path), ``data_dir``, ``state_file``, ``tick``,
    ``log_level``, ``log_file``, ``listen``, ``theme``, ``theme_file``, or any dotted
    ``section.field``. None values are ignored.
    """
    load = _Load.start(env, overrides, cwd, allow_unset=allow_unset)
    _locate(load, path if path is not None else load.flags.get("config"))
    _read_main_file(load)
    _include_vaultmesh_files(load)
    _apply_environment(load)
    _apply_flags(load)
    config = _validate(load, allow_unset=allow_unset)
    _resolve_paths(config, load)
    if thorough:
        _check_thoroughly(config, load)
    # verify (allow_unset) reads targets only; the warnings about running concern others
    warnings = load.reader.unset + ([] if allow_unset else _warnings(config, load.problems.root))
    return LoadedConfig(
        config=config,
        hash=config_hash(config),
        files=_unique_paths(load.files),
        warnings=warnings,
        path=load.config_path,
    )


@dataclass
class _Load:
    """One load_config in progress: its inputs, the raw data merged so far, its problems."""

    cwd: Path
    real_env: dict[str, str]  # the process environment (or load_config's env=)
    env: dict[str, str]  # ./.env under real_env: what ${VAR} and ENV_TABLE read
    flags: dict[str, Any]  # load_config's overrides, without the None values
    reader: _YamlReader
    problems: _Problems
    files: list[Path] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    vmsh_root: Path | None = None  # VMSH_ROOT, absolute
    config_path: Path | None = None  # None: the bare VaultMesh layout
    config_origin: str = ""  # what named config_path, for "not a file (...)"

    @classmethod
    def start(
        cls, env: Mapping[str, str] | None, overrides: dict[str, Any] | None, cwd: Path | None,
        *, allow_unset: bool,
    ) -> _Load:
        """The inputs: the environment over ./.env, the flags given, VMSH_ROOT."""
        cwd = (cwd or Path.cwd()).resolve()
        real_env = dict(os.environ if env is None else env)
        files: list[Path] = []
        dotenv: dict[str, str] = {}
        if (cwd / ".env").is_file():
            from dotenv import dotenv_values

            dotenv = {k: v for k, v in dotenv_values(cwd / ".env").items() if v is not None}
            files.append(cwd / ".env")
        envs = {**dotenv, **real_env}  # the real environment wins over .env
        problems = _Problems(_Pos(None, base=cwd))
        load = cls(
            cwd=cwd,
            real_env=real_env,
            env=envs,
            flags={k: v for k, v in (overrides or {}).items() if v is not None},
            reader=_YamlReader(envs, problems, allow_unset=allow_unset),
            problems=problems,
            files=files,
        )
        if envs.get("VMSH_ROOT"):
            root = Path(os.path.expanduser(envs["VMSH_ROOT"]))
            load.vmsh_root = root if root.is_absolute() else cwd / root
        return load

    @property
    def base_dir(self) -> Path:
        """What relative paths in the main file (or the bare layout) are relative to."""
        return self.config_path.parent if self.config_path is not None else self.vmsh_root  # type: ignore[return-value]

    @property
    def vault_base(self) -> Path:
        """What relative paths in the VaultMesh files are relative to."""
        return self.vmsh_root or self.base_dir

    def origin(self, name: str) -> str:
        """Where a variable's value came from, as problems name it."""
        return f"env {name}" if name in self.real_env else f".env {name}"

    def put(self, section: str, key: str, value: Any, origin: str) -> None:
        """Set ``section.key`` from the environment or a flag; problems name ``origin``."""
        self.raw.setdefault(section, {})
        if not isinstance(self.raw[section], dict):
            return  # the file's own type error is reported by validation
        self.raw[section][key] = value
        root = self.problems.root
        sec = root.children.get(section)
        if sec is None:
            sec = root.children[section] = _Pos(None, section, root, base=self.cwd)
        sec.children[key] = _Pos(origin, key, sec, base=self.cwd, label=f"{section}.{key}")


def _fail(file: str | None, message: str) -> ConfigError:
    """A problem that ends the load at once: there is nothing to read further."""
    return ConfigError([ConfigIssue(file, None, None, "", message)])


def _locate(load: _Load, explicit: Path | str | None) -> None:
    """Which config file: --config, VMSH_CONFIG, none under VMSH_ROOT, ./config.yaml."""
    if explicit:
        load.config_path, load.config_origin = _resolve(explicit, load.cwd), "--config"
    elif load.env.get("VMSH_CONFIG"):
        load.config_path = _resolve(load.env["VMSH_CONFIG"], load.cwd)
        load.config_origin = load.origin("VMSH_CONFIG")
    elif load.vmsh_root is None:
        if not (load.cwd / "config.yaml").is_file():
            raise _fail(
                None,
                "no configuration found: pass --config FILE (or check-config FILE), "
                "set VMSH_CONFIG, set VMSH_ROOT to a VaultMesh checkout, "
                "or create ./config.yaml",
            )
        load.config_path, load.config_origin = load.cwd / "config.yaml", "./config.yaml"


def _read_main_file(load: _Load) -> None:
    """The config file's mapping becomes the raw data and its tree the problems' root."""
    path = load.config_path
    if path is None:
        return
    shown = _display(path, load.cwd)
    if not path.is_file() and path.exists():
        raise _fail(shown, f"not a file ({load.config_origin})")
    load.files.append(path)
    got = load.reader.read(path, shown, path.parent)
    if got is None:
        return
    data, pos = got
    if isinstance(data, dict):
        load.raw, load.problems.root = data, pos
        pos.base = path.parent
    else:
        load.problems.at(pos, "the top level must be a mapping")


def _include_vaultmesh_files(load: _Load) -> None:
    """namespaces.yaml (VMSH_NAMESPACES > namespaces_file > the VMSH_ROOT layout's) and
    anchors.yaml (anchors_file > the layout's, when it exists), merged into the raw data."""
    bare_layout = load.config_path is None and load.vmsh_root is not None
    ns_file: Path | None = None
    if load.env.get("VMSH_NAMESPACES"):
        ns_file = _resolve(load.env["VMSH_NAMESPACES"], load.vmsh_root or load.cwd)
        load.raw["namespaces_file"] = str(ns_file)
    elif (given := _file_key(load, "namespaces_file")) is not None:
        ns_file = _resolve(given, load.base_dir)
    elif bare_layout:
        ns_file = load.vmsh_root / "vmsh" / "config" / "namespaces.yaml"  # type: ignore[operator]
    if ns_file is not None:
        _include(load, ns_file, _merge_namespaces)

    an_file: Path | None = None
    if (given := _file_key(load, "anchors_file")) is not None:
        an_file = _resolve(given, load.base_dir)
    elif bare_layout:
        an_file = load.vmsh_root / "vmsh" / "config" / "anchors.yaml"  # type: ignore[operator]
        if not an_file.exists():
            an_file = None  # the layout's anchors.yaml is optional (local: targets need none)
    if an_file is not None:
        _include(load, an_file, _merge_targets)


def _file_key(load: _Load, key: str) -> str | None:
    """The main file's ``namespaces_file`` / ``anchors_file``, if it is a path."""
    value = load.raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        load.problems.at(load.problems.root.children.get(key), "expected a file path")
        return None
    return value


def _include(
    load: _Load, path: Path, merge: Callable[[dict[str, Any], Any, _Pos, _Problems], None]
) -> None:
    """Read one VaultMesh file (relative paths in it: VMSH_ROOT) and merge it."""
    load.files.append(path)
    got = load.reader.read(path, _display(path, load.cwd), load.vault_base)
    if got is not None:
        merge(load.raw, *got, load.problems)


# How ENV_TABLE's kinds are read; a ValueError is "<text> is not <what>" (see
# _apply_environment). "path" and "level" are taken as text (the model checks them).
_ENV_READERS: dict[str, tuple[Any, str]] = {
    "path": (lambda text: text, ""),
    "url": (str.strip, ""),
    "level": (str.strip, ""),
    "milliseconds": (lambda text: float(text.strip()) * 0.001, "a number"),
    "seconds": (lambda text: float(text.strip()), "a number"),
    "integer": (lambda text: int(text.strip()), "an integer"),
    "port": (lambda text: int(text.strip()), "an integer"),
}


def _apply_environment(load: _Load) -> None:
    """The ENV_TABLE variables that set a config key (the environment, then ./.env)."""
    for var in ENV_TABLE:
        text = load.env.get(var.name)
        if var.setting is None or not text:
            continue
        read, what = _ENV_READERS[var.kind]
        try:
            value = read(text)
        except ValueError:
            load.problems.in_file(load.origin(var.name), f"{text.strip()!r} is not {what}")
            continue
        if var.kind == "port":
            value = f"{_listen_host(load.raw)}:{value}"
        section, key = var.setting.split(".")
        load.put(section, key, value, load.origin(var.name))


def _listen_host(raw: dict[str, Any]) -> str:
    """The host part of the listen address so far (METRICS_PORT sets only the port)."""
    http = raw.get("http")
    listen = http.get("listen", HttpSettings().listen) if isinstance(http, dict) else HttpSettings().listen
    m = _LISTEN.match(listen) if isinstance(listen, str) else None
    return m.group("host") if m else "127.0.0.1"


def _apply_flags(load: _Load) -> None:
    """The command-line flags (load_config's overrides), over everything else."""
    for name, value in load.flags.items():
        if name == "config":
            continue
        dotted = _OVERRIDE_KEYS.get(name) or tuple(name.split("."))
        if len(dotted) != 2:
            raise ValueError(f"unknown override {name!r}")
        if isinstance(value, Path):
            value = str(_resolve(value, load.cwd))
        load.put(dotted[0], dotted[1], value, f"--{name.replace('_', '-')}")


def _validate(load: _Load, *, allow_unset: bool) -> Config:
    """The raw-data checks, then the models: every problem of the load, or the Config."""
    raw, problems = load.raw, load.problems
    # the cross-field checks that need only raw data (so they join the other errors)
    _check_namespace_names(raw, problems)
    _check_targets_resolve(raw, problems)
    _check_cadence_ranges(raw, problems)
    config: Config | None = None
    try:
        config = Config.model_validate(raw)
    except PydanticValidationError as exc:
        if allow_unset and _drop_broken_targets(raw, exc, load.reader.unset):
            try:
                config = Config.model_validate(raw)
            except PydanticValidationError as again:
                problems.add_validation_errors(again, load.reader.failed)
        else:
            problems.add_validation_errors(exc, load.reader.failed)
    if problems.issues or config is None:
        raise problems.error()
    return config


def _resolve_paths(config: Config, load: _Load) -> None:
    """Paths relative to the file that set them (VaultMesh files: VMSH_ROOT; env and
    flags: the working directory); the shared batch folder under VMSH_ROOT."""
    _resolve_model_paths(config, (), load.problems.root, load.base_dir)
    if load.vmsh_root is not None:
        config._batches_root = load.vmsh_root / "out" / "batches"


def _check_thoroughly(config: Config, load: _Load) -> None:
    """check-config: what the dashboard reads and the files the config names."""
    from core.config_check import thorough_issues

    if found := thorough_issues(config, load.problems.root):
        raise ConfigError(_sorted_unique(found))


def _drop_broken_targets(
    raw: dict[str, Any], exc: PydanticValidationError, warnings: list[str]
) -> bool:
    """For ``allow_unset`` (verify): when every error is inside target entries (an unset
    ``${EVM_CHAIN_ID}``), leave those entries out with a warning; True if it did."""
    locs = [tuple(e["loc"]) for e in exc.errors()]
    if not locs or any(len(loc) < 3 or loc[0] != "targets" for loc in locs):
        return False
    for _, scheme, name in sorted({loc[:3] for loc in locs}, key=str):
        raw["targets"][scheme].pop(name, None)
        warnings.append(f"targets.{scheme}.{name} left out: it is not valid without its variables")
    return True


def _unique_paths(paths: list[Path]) -> list[Path]:
    seen: list[Path] = []
    for p in paths:
        if p not in seen:
            seen.append(p)
    return seen


def _merge_namespaces(raw: dict[str, Any], data: Any, pos: _Pos, problems: _Problems) -> None:
    """A VaultMesh namespaces.yaml (``namespaces:`` only) into the raw data."""
    root = problems.root
    if data == {}:
        return
    if not isinstance(data, dict):
        problems.at(pos, "expected a mapping with a 'namespaces' key")
        return
    for key, child in pos.children.items():
        if key != "namespaces":
            problems.at(child, _unknown_key_message(key, ["namespaces"]), key=True)
    namespaces = data.get("namespaces")
    ns_pos = pos.children.get("namespaces")
    if namespaces is None or ns_pos is None:
        return
    if not isinstance(namespaces, dict):
        raw["namespaces"] = namespaces
        root.children["namespaces"] = ns_pos
        return
    existing = raw.get("namespaces")
    if existing is None:
        raw["namespaces"] = namespaces
        root.children["namespaces"] = ns_pos
        return
    if not isinstance(existing, dict):
        return
    target_pos = root.children["namespaces"]
    for name, value in namespaces.items():
        child = ns_pos.children[name]
        if name in existing:
            problems.at(child, f"namespace {name!r} is also defined in {target_pos.file}", key=True)
            continue
        existing[name] = value
        target_pos.children[name] = child


def _merge_targets(raw: dict[str, Any], data: Any, pos: _Pos, problems: _Problems) -> None:
    """A VaultMesh anchors.yaml (``<scheme>: {<name>: settings}``) into ``targets``."""
    root = problems.root
    if data == {}:
        return
    if not isinstance(data, dict):
        problems.at(pos, "expected a mapping of <scheme>: {<name>: settings}")
        return
    existing = raw.get("targets")
    if existing is None:
        raw["targets"] = data
        root.children["targets"] = pos
        return
    if not isinstance(existing, dict):
        return
    tpos = root.children["targets"]
    for scheme, entries in data.items():
        spos = pos.children[scheme]
        if scheme not in existing or not isinstance(existing[scheme], dict) or not isinstance(entries, dict):
            if scheme in existing:
                problems.at(spos, f"targets.{scheme} is also defined in {tpos.file}", key=True)
                continue
            existing[scheme] = entries
            tpos.children[scheme] = spos
            continue
        for name, settings in entries.items():
            npos = spos.children[name]
            if name in existing[scheme]:
                problems.at(npos, f"target {scheme}.{name} is also defined in {tpos.file}", key=True)
                continue
            existing[scheme][name] = settings
            tpos.children[scheme].children[name] = npos


def _iter_raw_cadences(
    raw: dict[str, Any], root: _Pos
) -> Iterator[tuple[Any, dict[str, Any], str, dict[str, Any], _Pos | None]]:
    """(namespace, its raw mapping, cadence name, the cadence's, its position) of each
    well-shaped cadence in the raw data."""
    namespaces = raw.get("namespaces")
    if not isinstance(namespaces, dict):
        return
    ns_pos = root.children.get("namespaces")
    for name, ns in namespaces.items():
        if not isinstance(ns, dict) or not isinstance(ns.get("cadence"), dict):
            continue
        for cname, cadence in ns["cadence"].items():
            if cname in CADENCES and isinstance(cadence, dict):
                cpos = None
                if ns_pos is not None:
                    cpos, matched = _find(ns_pos, (name, "cadence", cname))
                    if matched != 3:
                        cpos = None
                yield name, ns, cname, cadence, cpos


def _check_namespace_names(raw: dict[str, Any], problems: _Problems) -> None:
    """Every namespace name must make a usable folder name (core.jobs.namespace_name_problem).
    Cadence names need no check here: the CadenceSet model allows only fast, strong, cold."""
    namespaces = raw.get("namespaces")
    ns_pos = problems.root.children.get("namespaces")
    if not isinstance(namespaces, dict):
        return
    for name in namespaces:
        if not isinstance(name, str):
            continue  # numbers become digit strings; other keys are reported by validation
        problem = namespace_name_problem(name)
        if problem is None:
            continue
        child = ns_pos.children.get(name) if ns_pos is not None else None
        file, mark = (child.file, child.key_mark) if child else (None, None)
        problems.add(file, mark, ["namespaces", name], problem)


def _check_targets_resolve(raw: dict[str, Any], problems: _Problems) -> None:
    """Every cadence's target has settings (a scheme that needs an entry has one)."""
    targets = raw.get("targets")
    if not isinstance(targets, dict):
        targets = {}
    for _name, _ns, _cname, cadence, cpos in _iter_raw_cadences(raw, problems.root):
        target = cadence.get("target")
        if not isinstance(target, str):
            continue
        m = _TARGET.match(target)
        if not m or m.group("scheme") not in SCHEMES:
            continue  # malformed targets are reported by validation
        scheme, tname = m.group("scheme"), m.group("name")
        spec = SCHEMES[scheme]
        if spec.default_entry is not None or spec.name_problem(tname):
            continue  # it needs no entry (local), or its name is reported by validation
        entries = targets.get(scheme)
        if isinstance(entries, dict) and (tname in entries or "default" in entries):
            continue
        problems.at(
            cpos.children.get("target") if cpos else None,
            f"target {target!r} has no settings (add targets.{scheme}.{_seg(tname)} or "
            f"targets.{scheme}.default, or a VaultMesh anchors.yaml)",
        )


def _check_cadence_ranges(raw: dict[str, Any], problems: _Problems) -> None:
    """'<n>*fast' can overflow only once the fast period is known."""
    for _name, ns, cname, cadence, cpos in _iter_raw_cadences(raw, problems.root):
        if cname == "fast":
            continue
        try:
            fast = parse_every(ns["cadence"].get("fast", {}).get("every"), cadence="fast")
            parse_every(cadence.get("every"), cadence=cname, fast_seconds=1)
        except (CadenceError, AttributeError):
            continue  # reported by validation
        try:
            parse_every(cadence.get("every"), cadence=cname, fast_seconds=fast)
        except CadenceError as exc:
            problems.at(cpos.children.get("every") if cpos else None, str(exc))


# --------------------------------------------------------------------------- pydantic -> issues

_SECRET_WORDS = ("key", "password", "token", "secret")


def _unknown_key_message(key: Any, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key {str(key)!r} (did you mean {close[0]!r}?)"
    if allowed:
        return f"unknown key {str(key)!r} (expected one of: {', '.join(allowed)})"
    return f"unknown key {str(key)!r} (this section takes no keys)"


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class a location points into, walking fields (by name or alias) and dicts."""
    current: Any = Config
    for seg in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = current.model_fields
            name = next((n for n, f in fields.items() if seg in (n, f.alias)), None)
            if name is None:
                return None
            current = fields[name].annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) is list:
            current = typing.get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _allowed_keys(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    keys: list[str] = []
    for name, f in model.model_fields.items():
        keys.append(name)
        if f.alias and f.alias != name:
            keys.append(f.alias)
    return keys


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pydantic_issues(exc: PydanticValidationError, root: _Pos, failed: set[int]) -> list[ConfigIssue]:
    out: list[ConfigIssue] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        node, matched = _find(root, loc)
        if id(node) in failed and matched == len(loc):
            continue  # an unset ${VAR} there is already reported
        segs = node.segments() + list(loc[matched:])
        if matched == len(loc):
            mark = node.key_mark if kind == "extra_forbidden" else (node.mark or node.key_mark)
        else:
            mark = node.key_mark or node.mark
        file = node.file or root.file  # a section only the environment touched: the main file
        line, col = mark or (None, None)
        if kind == "extra_forbidden":
            message = _unknown_key_message(loc[-1], _allowed_keys(_model_at(loc[:-1])))
        elif kind == "missing":
            message = f"missing required key {str(loc[-1])!r}"
            segs = segs[:-1]
        elif kind in ("cadence", "target", "listen", "key_source"):
            message = err["msg"]
        else:
            message = err["msg"]
            secret = any(w in str(s).lower() for s in loc for w in _SECRET_WORDS)
            if "input" in err and not secret and not isinstance(err["input"], (dict, list)):
                message += f" (got {_short(err['input'])})"
            elif isinstance(err.get("input"), dict):
                message += " (got a mapping)"
            elif isinstance(err.get("input"), list):
                message += " (got a list)"
        out.append(ConfigIssue(file, line, col, format_path(segs), message))
    return out


def _sorted_unique(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    unique = list(dict.fromkeys(issues))  # each once, first occurrence first
    return sorted(unique, key=lambda i: (i.file or "", i.line or 0, i.col or 0))


# --------------------------------------------------------------------------- after validation


def _resolve_model_paths(value: Any, loc: tuple[Any, ...], root: _Pos, default_base: Path) -> None:
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            item = getattr(value, name)
            here = (*loc, name)
            if isinstance(item, Path):
                if not item.is_absolute():
                    node, matched = _find(root, here)
                    base = node.base if matched == len(here) and node.base else default_base
                    item = _resolve(item, base)
                    setattr(value, name, item)
                elif str(item).startswith("~"):
                    setattr(value, name, Path(os.path.expanduser(str(item))))
            else:
                _resolve_model_paths(item, here, root, default_base)
    elif isinstance(value, dict):
        for key, item in value.items():
            _resolve_model_paths(item, (*loc, key), root, default_base)


def _warnings(config: Config, root: _Pos) -> list[str]:
    warnings: list[str] = []
    for name, ns in config.namespaces.items():
        for cname, cadence in ns.cadence.items():
            reason = config.target_mismatch(cadence.target)
            if reason is None:
                continue
            node, matched = _find(root, ("namespaces", name, "cadence", cname, "target"))
            where = ""
            if matched == 5 and node.file and node.mark:
                where = f"{node.file}:{node.mark[0]}:{node.mark[1]}: "
            say = SCHEMES[cadence.target.partition(":")[0]].refusal_warning
            if say is not None:
                settings = config.resolve_target(cadence.target)
                reason = say(cadence.target, settings, config.resolved_entry(cadence.target))
            msg = f"namespace {name!r} cadence {cname!r}: {reason}"
            path = format_path(["namespaces", name, "cadence", cname, "target"])
            warnings.append(f"{where}{path}: {msg}")
    return warnings
