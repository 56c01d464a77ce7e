"""The vmsh-scheduler command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cli.main import main
from core import __version__
from core.config import ENV_VARS
from tests.pki import make_root

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"
VAULTMESH_ENV = {
    "EVM_RPC": "https://rpc.example/v3/apikey123",
    "EVM_CHAIN_ID": "8453",
    "EVM_CONTRACT": "0x00000000000000000000000000000000000000aa",
    "EVM_ANCHOR_KEY": "0x" + "11" * 32,
    "BTC_RPC": "http://127.0.0.1:18443",
    "TSA_URL": "https://tsa.example/tsr",
}
TYPO = """\
namespaces:
  "dao:vaultmesh":
    cadence:
      fast:
        target: "local:dev"
        evry: "89s"
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in (*ENV_VARS, *VAULTMESH_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_version(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_help_has_examples(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for text in ("examples:", "check-config", "--no-ui", "--config FILE", "--data-dir DIR",
                 "--theme NAME", "--no-mouse", "--readonly", "--log-level", "VMSH_ROOT"):
        assert text in out


def test_usage_error_exits_2(capsys):
    assert main(["--bogus"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_check_config_example(capsys):
    assert main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "namespaces (5):" in out  # demo:live and demo:flaky are written by `make run`
    assert "demo:ledger/strong" in out and "local:dev" in out and "every 30s" in out
    assert "targets (1):" in out
    assert "config hash: " in out
    assert out.rstrip().endswith("configuration OK")


def test_check_config_uses_config_flag_and_data_dir(capsys, tmp_path):
    assert main(["--config", str(EXAMPLE), "--data-dir", "elsewhere", "check-config"]) == 0
    assert f"data dir: {tmp_path / 'elsewhere'}" in capsys.readouterr().out


def test_check_config_names_the_store_without_its_user_or_password(capsys, monkeypatch):
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert "store: file (the data dir; one scheduler)" in capsys.readouterr().out
    monkeypatch.setenv("VMSH_STORE", "postgresql://scheduler@db.internal:6432/vmsh")
    monkeypatch.setenv("VMSH_STORE_PASSWORD", "s3cret-pw")
    assert main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "store: postgresql://db.internal:6432/vmsh (cluster mode, lease 15s)" in out
    assert "scheduler@" not in out and "s3cret-pw" not in out


def test_check_config_flags_after_subcommand(capsys, tmp_path):
    assert main(["check-config", "--config", str(EXAMPLE), "--log-level", "debug"]) == 0
    assert "log level: DEBUG" in capsys.readouterr().out


def test_check_config_errors_exit_2(capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text(TYPO + "scheduler: {tick: soon}\n")
    assert main(["check-config", "bad.yaml"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines == [
        "bad.yaml:4:7: namespaces.\"dao:vaultmesh\".cadence.fast: missing required key 'every'",
        "bad.yaml:6:9: namespaces.\"dao:vaultmesh\".cadence.fast.evry: "
        "unknown key 'evry' (did you mean 'every'?)",
        "bad.yaml:7:19: scheduler.tick: Input should be a valid number, unable to parse string "
        "as a number (got 'soon')",
        "configuration invalid: 3 errors",
    ]


def test_check_config_without_any_config(capsys):
    assert main(["check-config"]) == 2
    assert "no configuration found" in capsys.readouterr().err


def test_ctl_status_without_any_config_says_so_and_names_the_socket_it_tried(capsys):
    assert main(["ctl", "status"]) == 2
    err = capsys.readouterr().err
    assert "configuration invalid" not in err
    assert "no configuration found" in err
    assert ".vmsh/control.sock: no scheduler is running there" in err
    assert "--socket PATH" in err


def test_attach_without_any_config_says_so_on_a_terminal(tmp_path):
    import pty

    main_fd, child = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS} | {"PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run([sys.executable, "-m", "cli", "attach"], stdin=child, stdout=child, stderr=child,
                              cwd=tmp_path, env=env, timeout=60)
        os.close(child)
        out = b""
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # the other side is closed: all read
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(main_fd)
    text = out.decode(errors="replace")
    assert done.returncode == 2
    assert "configuration invalid" not in text
    assert "no configuration found" in text and "--socket PATH" in text


def test_a_tab_in_yaml_is_named_with_its_file_line_and_column(capsys, tmp_path):
    (tmp_path / "tabs.yaml").write_text("scheduler:\n  tick: 1\nnamespaces:\n  a:\n\tcadence: {}\n")
    assert main(["check-config", "tabs.yaml"]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("tabs.yaml:5:1: YAML syntax error: a tab character")


def test_check_config_vaultmesh_layout(capsys, monkeypatch, tmp_path, fixtures_dir):
    root = tmp_path / "vm"
    (root / "vmsh/config").mkdir(parents=True)
    for name in ("namespaces.yaml", "anchors.yaml"):
        shutil.copyfile(fixtures_dir / name, root / "vmsh/config" / name)
    # anchors.yaml names the TSA's trust bundle; check-config opens it (a checkout has it)
    (root / "services/anchors/certs").mkdir(parents=True)
    (root / "services/anchors/certs/tsa-bundle.pem").write_bytes(make_root().pem)
    monkeypatch.setenv("VMSH_ROOT", str(root))
    for name, value in VAULTMESH_ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "jobs (6):" in out
    assert "eip155:1 -> eip155.default" in out
    assert "disabled: target eip155:1 resolves to eip155.default whose chainId is 8453" in out
    assert "warnings (3):" in out and "chainId 8453" in out
    assert out.count("disabled: btc target btc:mainnet (btc.default) needs a signing key") == 2  # the btc jobs
    # no secrets and no URL paths (API keys live there)
    assert VAULTMESH_ENV["EVM_ANCHOR_KEY"] not in out
    assert "apikey123" not in out


def test_the_vaultmesh_layout_needs_no_btc_rpc_and_says_where_its_data_dir_is(capsys, monkeypatch, tmp_path, fixtures_dir):
    root = tmp_path / "vm"
    (root / "vmsh/config").mkdir(parents=True)
    for name in ("namespaces.yaml", "anchors.yaml"):
        shutil.copyfile(fixtures_dir / name, root / "vmsh/config" / name)
    (root / "services/anchors/certs").mkdir(parents=True)
    (root / "services/anchors/certs/tsa-bundle.pem").write_bytes(make_root().pem)
    monkeypatch.setenv("VMSH_ROOT", str(root))
    for name, value in VAULTMESH_ENV.items():
        if name != "BTC_RPC":
            monkeypatch.setenv(name, value)
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert f"data dir: {root / '.vmsh'}" in out
    assert ("vm/vmsh/config/anchors.yaml:11:13: btc.default.rpcUrl: variable BTC_RPC is not set, "
            "and need not be: btc jobs stay disabled until it is set") in out
    # an unset variable that a used target names is still an error
    monkeypatch.delenv("TSA_URL")
    assert main(["check-config"]) == 2
    assert "variable TSA_URL is not set" in capsys.readouterr().err


def test_run_mode_with_bad_config_exits_2(capsys, tmp_path):
    (tmp_path / "config.yaml").write_text(TYPO)
    assert main(["--no-ui"]) == 2
    assert "config.yaml:6:9:" in capsys.readouterr().err


def test_verify_of_a_missing_or_broken_file_fails_naming_it(capsys, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(["verify", str(tmp_path / "gone.json"), str(broken)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"FAIL {tmp_path / 'gone.json'}: cannot read: No such file or directory"
    assert out[1] == f"FAIL {broken}:1:2: not valid JSON: Expecting property name enclosed in double quotes"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["verify", str(empty)]) == 1
    assert capsys.readouterr().out == f"FAIL {empty}: no receipt files (*.json) below this folder\n"


def _script() -> Path:
    here = Path(sys.executable).parent / "vmsh-scheduler"
    return here if here.exists() else REPO / ".venv" / "bin" / "vmsh-scheduler"


def test_console_script_check_config(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    ok = subprocess.run(
        [str(_script()), "check-config", "config.example.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "configuration OK" in ok.stdout

    bad = tmp_path / "typo.yaml"
    bad.write_text(textwrap.dedent(TYPO))
    failed = subprocess.run(
        [str(_script()), "check-config", str(bad)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert failed.returncode == 2
    assert (
        "typo.yaml:6:9: namespaces.\"dao:vaultmesh\".cadence.fast.evry: "
        "unknown key 'evry' (did you mean 'every'?)"
    ) in failed.stderr


ESC = "\x1b"


def test_check_config_prints_no_terminal_escape_from_names_or_values(capsys, tmp_path):
    (tmp_path / "c.yaml").write_text(
        "scheduler:\n"
        '  data_dir: "data\\e]0;owned\\a"\n'
        "namespaces:\n"
        '  "dao:vaultmesh":\n'
        '    description: "ledger \\e[2J\\e[31mred"\n'
        "    cadence:\n"
        '      fast: {target: "local:dev", every: "10s"}\n'
    )
    assert main(["check-config", "c.yaml"]) == 0
    out = capsys.readouterr().out
    assert ESC not in out and "\a" not in out
    assert "  dao:vaultmesh  ledger \\x1b[2J\\x1b[31mred" in out
    assert "data\\x1b]0;owned\\x07" in out


def test_check_config_errors_print_no_terminal_escape(capsys, tmp_path):
    (tmp_path / "c.yaml").write_text(
        'scheduler: {tick: "\\e[2Jsoon"}\n'
        "namespaces:\n"
        '  "\\e[31mred":\n'
        "    cadence:\n"
        '      fast: {target: "local:dev", every: "10s"}\n'
    )
    assert main(["check-config", "c.yaml"]) == 2
    err = capsys.readouterr().err
    assert ESC not in err
    assert 'c.yaml:3:3: namespaces."\\x1b[31mred": a namespace name cannot contain control' in err
    assert "\\x1b[2Jsoon" in err


@pytest.mark.parametrize(("name", "words"), [('""', "cannot be empty"), ("n" * 300, "300 bytes")])
def test_check_config_refuses_a_namespace_name_no_folder_can_have(capsys, tmp_path, name, words):
    (tmp_path / "c.yaml").write_text(
        f'namespaces:\n  {name}:\n    cadence:\n      fast: {{target: "local:dev", every: "10s"}}\n'
    )
    assert main(["check-config", "c.yaml"]) == 2
    first, last = capsys.readouterr().err.splitlines()
    assert first.startswith("c.yaml:2:3: namespaces.") and words in first
    assert last == "configuration invalid: 1 error"


# --- check-config checks what the dashboard reads and the files the config names ----------------

LOCAL_JOB = 'namespaces:\n  "demo:a":\n    cadence:\n      fast: {target: "local:dev", every: "10s"}\n'


def test_check_config_refuses_a_mistyped_key_remap_with_its_line_and_a_suggestion(capsys, tmp_path):
    (tmp_path / "c.yaml").write_text(LOCAL_JOB + "tui:\n  keys: {forse: x}\n")
    assert main(["check-config", "c.yaml"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "c.yaml:6:10: tui.keys.forse: unknown action 'forse' (did you mean 'force'?)",
        "configuration invalid: 1 error",
    ]


# A config whose targets name files (a trust bundle, a key file) that check-config opens;
# the tests add their `tui:` lines after it (line numbers in messages count from here).
NAMED_FILES = (
    'namespaces:\n  "demo:a":\n    cadence:\n'
    '      fast: {target: "rfc3161:tsa", every: "10s"}\n'
    '      strong: {target: "eip155:1", every: "3*fast"}\n'
    "targets:\n"
    "  rfc3161:\n    tsa: {url: https://tsa.example/tsr, trustBundle: certs/tsa.pem}\n"
    "  eip155:\n    default: {rpcUrl: https://rpc.example, chainId: 1, keyFile: anchor.key}\n"
)


def test_check_config_refuses_what_would_only_fail_later(capsys, tmp_path):
    """An unknown theme, a theme file that does not parse, a trust bundle that is not there
    and a signing key file that is not a key: all at once, each at its line; the key file's
    content is never printed."""
    (tmp_path / "broken.toml").write_text("primary = \n")
    (tmp_path / "anchor.key").write_text("my-secret-passphrase\n")
    (tmp_path / "c.yaml").write_text(
        NAMED_FILES
        + "tui:\n  theme: solarised\n  theme_file: broken.toml\n"
    )
    assert main(["check-config", "c.yaml"]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == (
        f"c.yaml:8:54: targets.rfc3161.tsa.trustBundle: cannot read trust bundle {tmp_path / 'certs/tsa.pem'}: "
        "No such file or directory"
    )
    assert lines[1] == (
        f"c.yaml:10:65: targets.eip155.default.keyFile: key file {tmp_path / 'anchor.key'} does not hold "
        "a valid secp256k1 private key (64 hex digits)"
    )
    assert lines[2].startswith(f"c.yaml:13:15: tui.theme_file: {tmp_path / 'broken.toml'}: not valid TOML")
    assert lines[3:] == ["configuration invalid: 3 errors"]  # the theme name waits for its file
    assert "my-secret-passphrase" not in err

    (tmp_path / "broken.toml").write_text('name = "mine"\nprimary = "#101418"\n')
    assert main(["check-config", "c.yaml"]) == 2
    err = capsys.readouterr().err
    assert "c.yaml:12:10: tui.theme: no theme named 'solarised'; available: " in err
    assert "mine, monokai, nord" in err and "vaultmesh-dark" in err and "solarized-dark" in err


def test_check_config_passes_a_config_whose_named_files_and_dashboard_settings_are_valid(capsys, tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs/tsa.pem").write_bytes(make_root().pem)
    (tmp_path / "anchor.key").write_text("0x" + "11" * 32 + "\n")
    (tmp_path / "mine.toml").write_text('name = "mine"\nprimary = "ansi_blue"\nansi = true\n')
    (tmp_path / "c.yaml").write_text(
        NAMED_FILES
        + "tui:\n  theme: mine\n  theme_file: mine.toml\n  keys: {force: x, reload: 'ctrl+r', quit: 'q,f10'}\n"
    )
    assert main(["check-config", "c.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("configuration OK")
    assert "11" * 32 not in out
