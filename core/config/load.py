"""load_config: the load pipeline, from the files and the environment to a LoadedConfig.

Sources, highest precedence first:

1. ``overrides`` (the CLI flags: config path, data dir, log level, theme...)
2. the environment: ``ENV_TABLE`` (core/config/env.py) is the one list of its variables
   (``--help`` and the README print it)
3. ``.env`` in the working directory (the real environment wins over it)
4. the config file (and the VaultMesh ``namespaces.yaml`` / ``anchors.yaml`` it includes)
5. the defaults in the models (core/config/models.py)

``load_config`` is a pipeline of named steps over one ``_Load``: locate the config file,
read it, include the VaultMesh files, apply the environment, apply the flags, validate,
resolve paths (and, for check-config, the thorough checks). Every problem is reported
with the file, line, column and field path of the value that caused it (``Problems``
places them), and all problems of a load are reported at once (``ConfigError.issues``).
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from core.anchors.schemes import SCHEMES
from core.cadence import CADENCES, CadenceError, parse_every
from core.config.check import thorough_issues
from core.config.env import ENV_TABLE
from core.config.errors import ConfigError, ConfigIssue, NoConfigFound
from core.config.models import (
    LISTEN,
    TARGET_ID,
    CadenceSet,
    Config,
    HttpSettings,
    config_hash,
    fields_holding,
)
from core.config.positions import (
    Pos,
    Problems,
    find_pos,
    format_path,
    format_segment,
    sorted_unique,
)
from core.config.reader import YamlReader, read_config_text
from core.config.sharing import defaults_shared, share_equal_settings, validation_pool
from core.config.vaultmesh import merge_namespaces, merge_targets
from core.jobs import namespace_name_problem
from core.model_types import UNSET_ALLOWED


def _read_dotenv(path: Path, problems: Problems) -> dict[str, str] | None:
    """./.env's variables; None when there is none. Read as a config file is: a FIFO, a
    device or a folder named .env is a problem naming it, never a wait (nor is a huge one
    read past MAX_CONFIG_BYTES)."""
    try:
        text = read_config_text(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # NotRegularFile, too large, not UTF-8
        problems.in_file(str(path), f"cannot read: {getattr(exc, 'strerror', None) or exc}")
        return None
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


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
    files the config names (core/config/check.py).

    ``overrides`` holds CLI flags: ``config`` (path), ``data_dir``, ``state_file``, ``tick``,
    ``log_level``, ``log_file``, ``listen``, ``theme``, ``theme_file``, or any dotted
    ``section.field``. None values are ignored.
    """
    with _no_gc_pauses():
        return _load_config(path, env, overrides, cwd, allow_unset=allow_unset, thorough=thorough)


@contextlib.contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """The cyclic garbage collector off while a load builds its objects: a 10,000-namespace
    file makes about a million, and each full collection walked all of them again (more
    than half of the load's time, bench/config_bench.py). What a load leaves is collected
    afterwards as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load_config(
    path: Path | str | None,
    env: Mapping[str, str] | None,
    overrides: dict[str, Any] | None,
    cwd: Path | None,
    *,
    allow_unset: bool,
    thorough: bool,
) -> LoadedConfig:
    load = _Load.start(env, overrides, cwd, allow_unset=allow_unset)
    return _run_steps(load, path, allow_unset=allow_unset, thorough=thorough)


def _run_steps(load: _Load, path: Path | str | None, *, allow_unset: bool, thorough: bool) -> LoadedConfig:
    _locate(load, path if path is not None else load.flags.get("config"))
    _read_main_file(load)
    _include_vaultmesh_files(load)
    _apply_environment(load)
    _apply_flags(load)
    config = _validate(load, allow_unset=allow_unset)
    _resolve_paths(config, load)
    share_equal_settings(config.namespaces)
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
    reader: YamlReader
    problems: Problems
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
        problems = Problems(Pos(None, base=cwd))
        dotenv = _read_dotenv(cwd / ".env", problems)
        if dotenv is not None:
            files.append(cwd / ".env")
        envs = {**(dotenv or {}), **real_env}  # the real environment wins over .env
        load = cls(
            cwd=cwd,
            real_env=real_env,
            env=envs,
            flags={k: v for k, v in (overrides or {}).items() if v is not None},
            reader=YamlReader(envs, problems, allow_unset=allow_unset, unused=_unused_setting),
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
            sec = root.children[section] = Pos(None, section, root, base=self.cwd)
        sec.children[key] = Pos(origin, key, sec, base=self.cwd, label=f"{section}.{key}")


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
            raise NoConfigFound([ConfigIssue(
                None, None, None, "",
                "no configuration found: pass --config FILE (or check-config FILE), "
                "set VMSH_CONFIG, set VMSH_ROOT to a VaultMesh checkout, "
                "or create ./config.yaml",
            )])
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
        _include(load, ns_file, merge_namespaces)

    an_file: Path | None = None
    if (given := _file_key(load, "anchors_file")) is not None:
        an_file = _resolve(given, load.base_dir)
    elif bare_layout:
        an_file = load.vmsh_root / "vmsh" / "config" / "anchors.yaml"  # type: ignore[operator]
        if not an_file.exists():
            an_file = None  # the layout's anchors.yaml is optional (local: targets need none)
    if an_file is not None:
        _include(load, an_file, merge_targets)


def _unused_setting(segments: list[Any]) -> str | None:
    """Why a value at `segments` need not be set, else None: the settings of a scheme this
    build has no backend for, or of one whose jobs are refused until they are set (btc:
    `SchemeSpec.unset_ok`), in `targets:` or in a VaultMesh anchors.yaml."""
    inside = segments[1:] if segments[:1] == ["targets"] else segments
    spec = SCHEMES.get(str(inside[0])) if len(inside) >= 2 else None
    if spec is None:
        return None
    if spec.build is None:
        return f"{spec.name} targets are not anchored by this build (their jobs are disabled)"
    return spec.unset_ok or None


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
    load: _Load, path: Path, merge: Callable[[dict[str, Any], Any, Pos, Problems], None]
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
    m = LISTEN.match(listen) if isinstance(listen, str) else None
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
    _check_cadences(raw, problems)
    config: Config | None = None
    context = {UNSET_ALLOWED: allow_unset, **validation_pool()}
    with defaults_shared():
        try:
            config = Config.model_validate(raw, context=context)
        except PydanticValidationError as exc:
            if allow_unset and _drop_broken_targets(raw, exc, load.reader.unset):
                try:
                    config = Config.model_validate(raw, context=context)
                except PydanticValidationError as again:
                    problems.add_validation_errors(again, load.reader.failed, Config)
            else:
                problems.add_validation_errors(exc, load.reader.failed, Config)
    if problems.issues or config is None:
        raise problems.error()
    return config


def _resolve_paths(config: Config, load: _Load) -> None:
    """Paths relative to the file that set them (VaultMesh files: VMSH_ROOT; env and
    flags: the working directory); the shared batch folder under VMSH_ROOT."""
    _resolve_model_paths(config, (), load.problems.root, load.base_dir)
    if load.vmsh_root is not None:
        config.share_batches_under(load.vmsh_root / "out" / "batches")


def _check_thoroughly(config: Config, load: _Load) -> None:
    """check-config: what the dashboard reads and the files the config names."""
    if found := thorough_issues(config, load.problems.root):
        raise ConfigError(sorted_unique(found))


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



# --------------------------------------------------------------------------- raw-data checks

_RawCadence = tuple[Any, dict[str, Any], str, dict[str, Any]]  # (namespace, its mapping, name, cadence)


def _check_cadences(raw: dict[str, Any], problems: Problems) -> None:
    """Each cadence's target has settings, and its period is in range. Judged on each
    distinct cadences mapping first (the line reader gives equal ones one mapping: three
    for 10,000 namespaces), and only when one has a problem on every namespace's, each
    problem at its own line."""
    trial = Problems(problems.root)
    distinct = _raw_cadences(raw, distinct=True)
    _check_targets_resolve(raw, distinct, trial)
    _check_cadence_ranges(distinct, trial)
    if trial.issues:
        cadences = _raw_cadences(raw)  # 30,000 in a 10,000-namespace layout: listed once
        _check_targets_resolve(raw, cadences, problems)
        _check_cadence_ranges(cadences, problems)


def _raw_cadences(raw: dict[str, Any], *, distinct: bool = False) -> list[_RawCadence]:
    """(namespace, its raw mapping, cadence name, the cadence's) of each well-shaped
    cadence in the raw data (`distinct`: of the first namespace of each cadences mapping,
    by identity: what is judged of a cadence depends on that mapping only)."""
    namespaces = raw.get("namespaces")
    if not isinstance(namespaces, dict):
        return []
    found = []
    seen: set[int] = set()  # the cadences mappings listed (raw keeps them: ids stay theirs)
    for name, ns in namespaces.items():
        if not isinstance(ns, dict) or not isinstance(ns.get("cadence"), dict):
            continue
        if distinct:
            if id(ns["cadence"]) in seen:
                continue
            seen.add(id(ns["cadence"]))
        for cname, cadence in ns["cadence"].items():
            if cname in CADENCES and isinstance(cadence, dict):
                found.append((name, ns, cname, cadence))
    return found


def _cadence_field(root: Pos, name: Any, cname: str, key: str) -> Pos | None:
    """Where a cadence's `key` is written, for a problem with it (looked up only then)."""
    ns_pos = root.children.get("namespaces")
    if ns_pos is None:
        return None
    cpos, matched = find_pos(ns_pos, (name, "cadence", cname))
    return cpos.children.get(key) if matched == 3 else None


def _check_namespace_names(raw: dict[str, Any], problems: Problems) -> None:
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


def _check_targets_resolve(raw: dict[str, Any], cadences: list[_RawCadence], problems: Problems) -> None:
    """Every cadence's target has settings (a scheme that needs an entry has one)."""
    targets = raw.get("targets")
    if not isinstance(targets, dict):
        targets = {}
    verdicts: dict[str, str | None] = {}  # per target: thousands of namespaces share a few
    for name, _ns, cname, cadence in cadences:
        named = cadence.get("targets")
        if not isinstance(named, list):
            target = cadence.get("target")
            if type(target) is str and verdicts.get(target, "") is None:
                continue  # the usual case: one target, known to resolve
        members = list(enumerate(named)) if isinstance(named, list) else [(None, cadence.get("target"))]
        for index, target in members:
            if not isinstance(target, str):
                continue
            if target not in verdicts:
                verdicts[target] = _unresolved_target(target, targets)
            verdict = verdicts[target]
            if verdict is None:
                continue
            pos = _cadence_field(problems.root, name, cname, "target" if index is None else "targets")
            problems.at(pos if pos is None or index is None else pos.children.get(index, pos), verdict)


def _unresolved_target(target: str, targets: dict[str, Any]) -> str | None:
    """Why `target` has no settings in the raw `targets`, or None (also when validation
    reports it)."""
    m = TARGET_ID.match(target)
    if not m or m.group("scheme") not in SCHEMES:
        return None  # malformed targets are reported by validation
    scheme, tname = m.group("scheme"), m.group("name")
    spec = SCHEMES[scheme]
    if spec.default_entry is not None or spec.name_problem(tname):
        return None  # it needs no entry (local), or its name is reported by validation
    entries = targets.get(scheme)
    if isinstance(entries, dict) and (tname in entries or "default" in entries):
        return None
    return (
        f"target {target!r} has no settings (add targets.{scheme}.{format_segment(tname)} or "
        f"targets.{scheme}.default, or a VaultMesh anchors.yaml)"
    )


def _check_cadence_ranges(cadences: list[_RawCadence], problems: Problems) -> None:
    """'<n>*fast' can overflow only once the fast period is known."""
    verdicts: dict[Any, str | None] = {}  # thousands of namespaces repeat a few cadences
    for name, ns, cname, cadence in cadences:
        if cname == "fast":
            continue
        fast = ns["cadence"].get("fast", {})
        if not isinstance(fast, dict):
            continue  # reported by validation
        fast_every, every = fast.get("every"), cadence.get("every")
        key = (type(fast_every), fast_every, cname, type(every), every)
        try:
            problem = verdicts.get(key, _UNKNOWN)
        except TypeError:  # a list or a mapping (reported by validation)
            continue
        if problem is _UNKNOWN:
            problem = verdicts[key] = _cadence_range_problem(fast_every, cname, every)
        if problem is not None:
            problems.at(_cadence_field(problems.root, name, cname, "every"), problem)


_UNKNOWN: Any = object()


def _cadence_range_problem(fast_every: Any, cname: str, every: Any) -> str | None:
    """Why `every` of cadence `cname` is out of range once the fast period is known."""
    try:
        fast = parse_every(fast_every, cadence="fast")
        parse_every(every, cadence=cname, fast_seconds=1)
    except CadenceError:
        return None  # reported by validation
    try:
        parse_every(every, cadence=cname, fast_seconds=fast)
    except CadenceError as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------- after validation


def _resolve_model_paths(value: Any, loc: tuple[Any, ...], root: Pos, default_base: Path) -> None:
    if isinstance(value, BaseModel):
        for name in fields_holding(type(value), Path):  # the others hold no path
            item = getattr(value, name)
            if item is None:
                continue
            here = (*loc, name)
            if isinstance(item, Path):
                if not item.is_absolute():
                    node, matched = find_pos(root, here)
                    base = node.base if matched == len(here) and node.base else default_base
                    item = _resolve(item, base)
                    setattr(value, name, item)
                elif str(item).startswith("~"):
                    setattr(value, name, Path(os.path.expanduser(str(item))))
            else:
                _resolve_model_paths(item, here, root, default_base)
    elif isinstance(value, dict):
        holding: dict[type, tuple[str, ...] | None] = {}  # by class: the namespaces are of one
        for key, item in value.items():
            if item is None:
                continue
            kind = type(item)
            if kind not in holding:
                holding[kind] = fields_holding(kind, Path) if issubclass(kind, BaseModel) else None
            names = holding[kind]
            if names is not None:
                for name in names:
                    if not _settled(getattr(item, name)):
                        break
                else:
                    continue  # nothing to resolve in it (an absolute source, or none)
            _resolve_model_paths(item, (*loc, key), root, default_base)


def _settled(value: Any) -> bool:
    """True when _resolve_model_paths leaves the value as it is: none, or an absolute path."""
    return value is None or (isinstance(value, Path) and value.is_absolute())


def _warnings(config: Config, root: Pos) -> list[str]:
    """A warning for each cadence target whose jobs will be refused, at its line."""
    warnings: list[str] = []
    refused_in: dict[int, list[tuple[tuple[Any, ...], str, str]]] = {}  # by cadence set: shared ones recur
    reasons: dict[str, str | None] = {}  # per target: thousands of namespaces share a few
    written_names: dict[Any, Pos] | None = None  # where the namespaces are written
    for name, ns in config.namespaces.items():
        refused = refused_in.get(id(ns.cadence))
        if refused is None:
            refused = refused_in[id(ns.cadence)] = _refused_members(config, ns.cadence, reasons)
        if not refused:
            continue
        if written_names is None:  # looked up only for a warning (the line reader's are made then)
            written = root.children.get("namespaces")
            written_names = written.children if written is not None else {}
        # find_pos(root, ("namespaces", name)), its usual case first
        ns_node = written_names.get(name)
        ns_node, ns_matched = (ns_node, 2) if ns_node is not None else find_pos(root, ("namespaces", name))
        # format_path(["namespaces", name]), without its loop for the usual name
        ns_path = format_path(["namespaces", name]) if name.startswith(("env ", "--")) else "namespaces." + format_segment(name)
        for rest, rest_path, reason in refused:
            node, matched = ns_node, ns_matched
            if matched == 2:  # find_pos(root, whole path), walked from the namespace
                node, matched = find_pos(node, rest)
                matched += 2
            mark = node.mark
            if matched == 2 + len(rest) and node.file and mark:
                warnings.append(f"{node.file}:{mark[0]}:{mark[1]}: {ns_path}.{rest_path}: namespace {name!r} {reason}")
            else:
                warnings.append(f"{ns_path}.{rest_path}: namespace {name!r} {reason}")
    return warnings


def _refused_members(
    config: Config, cadences: CadenceSet, reasons: dict[str, str | None]
) -> list[tuple[tuple[Any, ...], str, str]]:
    """(field path in the namespace, its text, "cadence '<name>': <why>") of each target
    of `cadences` whose jobs will be refused."""
    refused = []
    for cname, cadence in cadences.items():
        for index, target in enumerate(cadence.members):
            if target not in reasons:
                reasons[target] = _refusal_reason(config, target)
            reason = reasons[target]
            if reason is not None:
                rest: tuple[Any, ...] = ("cadence", cname)
                rest += ("target",) if cadence.targets is None else ("targets", index)
                refused.append((rest, format_path(rest), f"cadence {cname!r}: {reason}"))
    return refused


def _refusal_reason(config: Config, target: str) -> str | None:
    """Why jobs on `target` will be refused, as the load warns (None: they will not be)."""
    reason = config.target_mismatch(target)
    if reason is None:
        return None
    say = SCHEMES[target.partition(":")[0]].refusal_warning
    if say is not None:
        reason = say(target, config.resolve_target(target), config.resolved_entry(target))
    return reason
