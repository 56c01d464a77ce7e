"""One list of environment variables: core.config.ENV_TABLE.

The code reads no variable by a fixed name that the table lacks; --help and the README
list exactly the table; each variable that sets a config key sets it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cli.main import main
from core.config import ENV_TABLE, ENV_VARS, env_table_markdown, load_config

REPO = Path(__file__).resolve().parents[2]
TABLE_NAMES = {var.name for var in ENV_TABLE}

# Read by a fixed name but not the operator's to set, so not in --help or the README.
NOT_IN_THE_TABLE = {
    "TERM": "the terminal's own (tui/themes.py picks the ANSI theme on 16-colour terminals)",
    "COLORTERM": "the terminal's own, as TERM",
    "VMSH_TEST_CRASH_AFTER_SEND": "a test hook of the eip155 and btc backends (crash-recovery tests)",
    "VMSH_TEST_CRASH_BEFORE_SEND": "a test hook of core/anchors/btc/backend.py (crash-recovery tests)",
}

_ENV_RECEIVER = re.compile(r"(^|\.)(environ|env|envs|real_env)$")
_VAR_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _names_read(path: Path) -> set[str]:
    """Variable names read from an environment mapping in one module: env.get("X"),
    env["X"], "X" in env, os.getenv("X"), a module constant naming X in their place."""
    tree = ast.parse(path.read_text(), str(path))
    constants = {
        t.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for t in node.targets
        if isinstance(t, ast.Name)
    }

    def text(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return expr.value
        if isinstance(expr, ast.Name):
            return constants.get(expr.id)
        return None

    def is_env(expr: ast.expr) -> bool:
        return bool(_ENV_RECEIVER.search(ast.unparse(expr)))

    found: set[str] = set()
    for node in ast.walk(tree):
        key: str | None = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            f = node.func
            if (f.attr == "get" and is_env(f.value)) or (f.attr == "getenv" and ast.unparse(f.value) == "os"):
                key = text(node.args[0])
        elif isinstance(node, ast.Subscript) and is_env(node.value):
            key = text(node.slice)
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            if is_env(node.comparators[0]):
                key = text(node.left)
        if key is not None and _VAR_NAME.match(key):
            found.add(key)
    return found


def names_the_code_reads() -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for path in sorted([*REPO.glob("core/**/*.py"), *REPO.glob("cli/**/*.py"), *REPO.glob("tui/**/*.py")]):
        for name in _names_read(path):
            where.setdefault(name, []).append(str(path.relative_to(REPO)))
    return where


def test_every_variable_the_code_reads_is_in_the_table():
    read = names_the_code_reads()
    # the scan sees the three ways variables are read: the config's steps, the dashboard, a hook
    assert {"VMSH_ROOT", "VMSH_THEME", "VMSH_TEST_CRASH_AFTER_SEND"} <= set(read)
    missing = {n: w for n, w in read.items() if n not in TABLE_NAMES and n not in NOT_IN_THE_TABLE}
    assert not missing, f"add these to ENV_TABLE in core/config/env.py: {missing}"
    assert not TABLE_NAMES & set(NOT_IN_THE_TABLE)


def test_every_variable_in_the_table_is_read_by_the_code():
    read = names_the_code_reads()
    # the environment step reads the rows that set a config key through the table itself
    unread = {v.name for v in ENV_TABLE if v.setting is None and v.name not in read}
    assert not unread, f"ENV_TABLE lists variables nothing reads: {unread}"


def test_env_vars_are_the_table_in_order():
    assert ENV_VARS == tuple(var.name for var in ENV_TABLE)


def _help_environment_section(capsys) -> str:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    return out.split("\nenvironment", 1)[1].split("\n\n", 1)[0]


def test_help_lists_exactly_the_tables_variables(capsys):
    section = _help_environment_section(capsys)
    listed = re.findall(r"^  ([A-Z][A-Z0-9_]+) ", section, flags=re.MULTILINE)
    assert listed == [var.name for var in ENV_TABLE]
    assert "VMSH_THEME" in listed
    for var in ENV_TABLE:
        if var.setting:
            assert f"{var.name:<18} -> {var.setting} ({var.kind})" in section


def test_readme_shows_the_generated_table_and_no_other_variable():
    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- generated from ENV_TABLE")
    start = readme.index("-->\n", start) + len("-->\n")
    end = readme.index("\n<!-- end of the generated table -->", start)
    assert readme[start:end] == env_table_markdown(), (
        "README.md's environment table differs from ENV_TABLE: paste the output of "
        'python -c "from core.config import env_table_markdown; print(env_table_markdown())"'
    )
    table_rows = re.findall(r"^\| `([A-Z0-9_]+)` \|", readme[start:end], flags=re.MULTILINE)
    assert table_rows == [var.name for var in ENV_TABLE]
    # prose elsewhere names only variables of the table (VMSH_ is ours; EVM_* are examples
    # of ${VAR} in a VaultMesh anchors.yaml)
    ours = set(re.findall(r"\bVMSH_[A-Z0-9_]+", readme)) | set(re.findall(r"\b(?:METRICS_PORT|LOG_LEVEL)\b", readme))
    assert ours <= TABLE_NAMES


SAMPLES = {
    # name: (value, the config key's value once loaded; paths relative to the working dir)
    "VMSH_DATA_DIR": ("data", lambda c, cwd: c.scheduler.data_dir == cwd / "data"),
    "VMSH_STATE": ("st.json", lambda c, cwd: c.scheduler.state_file == cwd / "st.json"),
    "VMSH_STORE": (" postgresql://vmsh@db:5432/vmsh ", lambda c, cwd: c.scheduler.store == "postgresql://vmsh@db:5432/vmsh"),
    "VMSH_TICK_MS": ("250", lambda c, cwd: c.scheduler.tick == 0.25),
    "VMSH_BASE_BACKOFF": (" 2.5 ", lambda c, cwd: c.scheduler.base_backoff == 2.5),
    "VMSH_MAX_BACKOFF": ("3", lambda c, cwd: c.scheduler.max_backoff_level == 3),
    "METRICS_PORT": ("9191", lambda c, cwd: c.http.listen == "0.0.0.0:9191"),
    "LOG_LEVEL": (" debug", lambda c, cwd: c.log.level == "DEBUG"),
}


@pytest.mark.parametrize("var", [v for v in ENV_TABLE if v.setting], ids=lambda v: v.name)
def test_each_variable_that_sets_a_key_sets_it_over_the_file(tmp_path, var):
    (tmp_path / "config.yaml").write_text(
        "http:\n  listen: 0.0.0.0:9090\n"
        "namespaces:\n  demo:\n    cadence:\n      fast: {target: 'local:dev', every: 60s}\n"
    )
    value, holds = SAMPLES[var.name]
    config = load_config(tmp_path / "config.yaml", env={var.name: value}, cwd=tmp_path).config
    assert holds(config, tmp_path)


@pytest.mark.parametrize("var", [v for v in ENV_TABLE if v.kind in ("integer", "port", "seconds", "milliseconds")],
                         ids=lambda v: v.name)
def test_a_variable_that_is_not_a_number_is_an_error_naming_it(tmp_path, var):
    (tmp_path / "config.yaml").write_text("namespaces: {}\n")
    with pytest.raises(Exception) as err:
        load_config(tmp_path / "config.yaml", env={var.name: "lots"}, cwd=tmp_path)
    assert f"env {var.name}: 'lots' is not a" in str(err.value)
