"""The environment variables the scheduler reads: ENV_TABLE is the one list of them.

ENV_VARS, --help's epilog (env_help), the README table (env_table_markdown) and the
environment step of load_config (core/config/load.py) come from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    """One environment variable the scheduler reads (a row of ENV_TABLE)."""

    name: str
    setting: str | None  # the config key load_config's environment step sets; None: see meaning
    kind: str  # how its text is read: a key of load.py's _ENV_READERS, or what it names
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
    EnvVar("MALLOC_ARENA_MAX", None, "read by glibc",
           "glibc's own: when set, the malloc arenas it allows; unset, the scheduler keeps one for "
           "all its threads (less memory held after a pass: core/heap.py)"),
    EnvVar("VMSH_THEME", None, "theme name",
           "the dashboard's theme, between --theme and tui.theme (read by the dashboard)"),
)
ENV_VARS = tuple(var.name for var in ENV_TABLE)


def env_help() -> str:
    """The environment section of --help (cli/parser.py builds its epilog from it)."""
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
