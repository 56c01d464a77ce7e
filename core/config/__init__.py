"""The configuration: pydantic models, YAML loading with file:line:col errors, ${VAR}, hash.

Where things are (docs/architecture.md, "the configuration package"):

- ``models``: Config and its sections (the pydantic models), ``config_hash``
- ``env``: ENV_TABLE, the one list of environment variables (``env_help``, the README's table)
- ``errors``: ConfigIssue, ConfigError, NoConfigFound, TargetNotFound
- ``positions``: the position tree of a load (``Pos``, ``find_pos``) and its problems
  collector (``Problems``, ``issue_at``)
- ``reader``: the YAML reader (limits, ${VAR}, ``open_regular``)
- ``vaultmesh``: the VaultMesh namespaces.yaml / anchors.yaml merges
- ``load``: ``load_config``, the load pipeline, LoadedConfig
- ``check``: check-config's deeper look (``load_config(thorough=True)``)
- ``files``: the trust bundle and key file checks (imports nothing else of core.config)

The names below are the ones the rest of the code imports: ``from core.config import
Config, load_config, ConfigError`` works as before the package.
"""

from __future__ import annotations

from core.config.env import ENV_TABLE, ENV_VARS, EnvVar, env_help, env_table_markdown
from core.config.errors import ConfigError, ConfigIssue, NoConfigFound, TargetNotFound
from core.config.load import LoadedConfig, load_config
from core.config.models import (
    CLOUDEVENT_TYPES,
    WITNESSES_NOTE,
    BtcTarget,
    Cadence,
    CadenceSet,
    CloudEventsHttp,
    CloudEventsSettings,
    CloudEventType,
    Config,
    ControlSettings,
    Eip155Target,
    HttpSettings,
    LocalTarget,
    LogSettings,
    Namespace,
    Rfc3161Auth,
    Rfc3161Target,
    SchedulerSettings,
    TuiSettings,
    config_hash,
)
from core.config.positions import format_path
from core.config.reader import MAX_CONFIG_BYTES, NotRegularFile, file_kind, open_regular

__all__ = [
    "CLOUDEVENT_TYPES",
    "ENV_TABLE",
    "ENV_VARS",
    "MAX_CONFIG_BYTES",
    "WITNESSES_NOTE",
    "BtcTarget",
    "Cadence",
    "CadenceSet",
    "CloudEventType",
    "CloudEventsHttp",
    "CloudEventsSettings",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ControlSettings",
    "Eip155Target",
    "EnvVar",
    "HttpSettings",
    "LoadedConfig",
    "LocalTarget",
    "LogSettings",
    "Namespace",
    "NoConfigFound",
    "NotRegularFile",
    "Rfc3161Auth",
    "Rfc3161Target",
    "SchedulerSettings",
    "TargetNotFound",
    "TuiSettings",
    "config_hash",
    "env_help",
    "env_table_markdown",
    "file_kind",
    "format_path",
    "load_config",
    "open_regular",
]
