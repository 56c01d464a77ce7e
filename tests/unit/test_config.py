"""Configuration: precedence, interpolation, .env, the VaultMesh files, error messages."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from core.config import (
    BtcTarget,
    Config,
    ConfigError,
    ConfigIssue,
    Eip155Target,
    LocalTarget,
    Rfc3161Target,
    TargetNotFound,
    load_config,
)
from core.jobs import JobKey

MINIMAL = """\
namespaces:
  "demo:a":
    cadence:
      fast: {target: "local:dev", every: "10s"}
"""

VAULTMESH_ENV = {
    "EVM_RPC": "https://rpc.example/v3/abc",
    "EVM_CHAIN_ID": "8453",
    "EVM_CONTRACT": "0x00000000000000000000000000000000000000aa",
    "EVM_ANCHOR_KEY": "0x" + "11" * 32,
    "BTC_RPC": "http://user:pw@127.0.0.1:18443",
    "TSA_URL": "https://tsa.example/tsr",
}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, env: dict | None = None, **kw):
    path = write(tmp_path, "config.yaml", text)
    return load_config(path, env=env or {}, cwd=tmp_path, **kw)


def errors(tmp_path: Path, text: str, env: dict | None = None, name: str = "config.yaml") -> list[str]:
    write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        load_config(Path(name), env=env or {}, cwd=tmp_path)
    return [str(i) for i in info.value.issues]


@pytest.fixture
def vmsh_root(tmp_path: Path, fixtures_dir: Path) -> Path:
    """A VaultMesh checkout layout holding unchanged copies of the real files."""
    root = tmp_path / "vaultmesh"
    (root / "vmsh" / "config").mkdir(parents=True)
    for name in ("namespaces.yaml", "anchors.yaml"):
        shutil.copyfile(fixtures_dir / name, root / "vmsh" / "config" / name)
    return root


# --------------------------------------------------------------------------- defaults


def test_defaults(tmp_path):
    loaded = load(tmp_path, MINIMAL)
    cfg = loaded.config
    assert cfg.scheduler.tick == 1.0
    assert cfg.scheduler.data_dir == tmp_path / ".vmsh"
    assert cfg.scheduler.state_file is None
    assert cfg.scheduler.base_backoff == 5.0
    assert cfg.scheduler.max_backoff_level == 7
    assert cfg.scheduler.concurrency == 8
    assert cfg.scheduler.stale_factor == 2.0
    assert cfg.http.listen == "127.0.0.1:9090"
    assert (cfg.http.host, cfg.http.port) == ("127.0.0.1", 9090)
    assert cfg.log.level == "INFO"
    assert cfg.tui.keys == {}
    assert loaded.files == [tmp_path / "config.yaml"]
    assert loaded.warnings == []
    assert loaded.path == tmp_path / "config.yaml"
    assert len(loaded.hash) == 64


def test_config_model_works_without_the_loader():
    cfg = Config.model_validate(
        {"namespaces": {"x": {"cadence": {"fast": {"target": "local:a", "every": "5s"}}}}}
    )
    [job] = cfg.jobs()
    assert job.key == JobKey("x", "fast")
    assert job.every == 5
    assert job.source == Path(".vmsh") / "batches" / "x"


def test_example_config_loads(tmp_path):
    example = Path(__file__).resolve().parents[2] / "config.example.yaml"
    loaded = load_config(example, env={}, cwd=tmp_path)
    cfg = loaded.config
    assert len(cfg.namespaces) == 5
    assert cfg.scheduler.data_dir.name == ".vmsh-demo"
    assert all(j.target.startswith("local:") for j in cfg.jobs())
    assert any(j.anchor_unchanged for j in cfg.jobs())
    assert loaded.warnings == []



@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_dotenv_that_is_a_fifo_or_a_folder_is_named_not_waited_on(tmp_path, kind):
    if kind == "fifo":
        os.mkfifo(tmp_path / ".env")  # no writer: opening it for reading would wait for ever
    else:
        (tmp_path / ".env").mkdir()
    result: list[BaseException] = []
    reader = threading.Thread(target=lambda: _catch(result, lambda: load(tmp_path, MINIMAL)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "loading the config waited on ./.env"
    assert result and isinstance(result[0], ConfigError), result
    assert ".env" in str(result[0]) and "not a regular file" in str(result[0]), str(result[0])


def _catch(into: list[BaseException], fn) -> None:
    try:
        fn()
    except BaseException as exc:
        into.append(exc)


# --------------------------------------------------------------------------- precedence


def test_precedence_cli_over_env_over_dotenv_over_file(tmp_path):
    text = MINIMAL + "scheduler: {data_dir: from-file}\nlog: {level: ERROR}\n"
    assert load(tmp_path, text).config.scheduler.data_dir == tmp_path / "from-file"

    write(tmp_path, ".env", "VMSH_DATA_DIR=from-dotenv\nLOG_LEVEL=warning\n")
    loaded = load(tmp_path, text)
    assert loaded.config.scheduler.data_dir == tmp_path / "from-dotenv"
    assert loaded.config.log.level == "WARNING"
    assert tmp_path / ".env" in loaded.files

    loaded = load(tmp_path, text, env={"VMSH_DATA_DIR": "from-env", "LOG_LEVEL": "DEBUG"})
    assert loaded.config.scheduler.data_dir == tmp_path / "from-env"
    assert loaded.config.log.level == "DEBUG"

    loaded = load(
        tmp_path,
        text,
        env={"VMSH_DATA_DIR": "from-env", "LOG_LEVEL": "DEBUG"},
        overrides={"data_dir": Path("from-cli"), "log_level": "INFO"},
    )
    assert loaded.config.scheduler.data_dir == tmp_path / "from-cli"
    assert loaded.config.log.level == "INFO"


def test_none_overrides_are_ignored(tmp_path):
    loaded = load(tmp_path, MINIMAL, env={"LOG_LEVEL": "DEBUG"}, overrides={"log_level": None})
    assert loaded.config.log.level == "DEBUG"


def test_vaultmesh_environment_variables(tmp_path):
    text = MINIMAL + 'http: {listen: "0.0.0.0:9000"}\n'
    env = {
        "VMSH_TICK_MS": "250",
        "VMSH_BASE_BACKOFF": "2.5",
        "VMSH_MAX_BACKOFF": "4",
        "METRICS_PORT": "9555",
        "VMSH_STATE": "/var/lib/vmsh/state.json",
    }
    cfg = load(tmp_path, text, env=env).config
    assert cfg.scheduler.tick == 0.25
    assert cfg.scheduler.base_backoff == 2.5
    assert cfg.scheduler.max_backoff_level == 4
    assert cfg.http.listen == "0.0.0.0:9555"  # METRICS_PORT keeps the host
    assert cfg.scheduler.state_file == Path("/var/lib/vmsh/state.json")


def test_env_relative_paths_resolve_against_cwd(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    write(sub, "config.yaml", MINIMAL + "scheduler: {state_file: st.json}\n")
    cfg = load_config(sub / "config.yaml", env={"VMSH_DATA_DIR": "d"}, cwd=tmp_path).config
    assert cfg.scheduler.data_dir == tmp_path / "d"  # env: cwd
    assert cfg.scheduler.state_file == sub / "st.json"  # file: the file's folder


def test_bad_environment_value_is_an_error(tmp_path):
    write(tmp_path, "config.yaml", MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(Path("config.yaml"), env={"VMSH_TICK_MS": "soon", "METRICS_PORT": "x"}, cwd=tmp_path)
    text = str(info.value)
    assert "env VMSH_TICK_MS: 'soon' is not a number" in text
    assert "env METRICS_PORT: 'x' is not an integer" in text


def test_config_path_precedence(tmp_path, vmsh_root):
    write(tmp_path, "config.yaml", MINIMAL.replace("demo:a", "cwd"))
    write(tmp_path, "other.yaml", MINIMAL.replace("demo:a", "vmsh-config"))
    write(tmp_path, "explicit.yaml", MINIMAL.replace("demo:a", "explicit"))
    env = {"VMSH_CONFIG": "other.yaml", "VMSH_ROOT": str(vmsh_root), **VAULTMESH_ENV}

    def names(**kw):
        return list(load_config(cwd=tmp_path, **kw).config.namespaces)

    assert names(path=Path("explicit.yaml"), env=env) == ["explicit"]
    assert names(overrides={"config": "explicit.yaml"}, env=env) == ["explicit"]
    assert names(env=env) == ["vmsh-config"]
    env.pop("VMSH_CONFIG")
    assert names(env=env) == ["dao:vaultmesh", "fin:clearing"]
    assert names(env={}) == ["cwd"]


def test_no_config_anywhere_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(env={}, cwd=tmp_path)
    assert "no configuration found" in str(info.value)
    assert "--config" in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(Path("nope.yaml"), env={}, cwd=tmp_path)
    assert str(info.value) == "nope.yaml: file not found"


# --------------------------------------------------------------------------- interpolation


def test_interpolation(tmp_path):
    text = """\
    targets:
      rfc3161:
        default:
          url: ${TSA_URL}
          policyOID: ${TSA_POLICY_OID:-""}
          hash: ${TSA_HASH:-sha512}
          timeout: ${TSA_TIMEOUT:-3}
          trustBundle: ${CERTS:-certs}/bundle.pem
          ca_bundle: "$${NOT_A_VAR}"
    namespaces:
      n:
        cadence:
          fast: {target: "rfc3161:tsa", every: "${FAST:-1m}", policyOID: "${OID:-''}"}
    """
    cfg = load(tmp_path, text, env={"TSA_URL": "https://tsa", "CERTS": "/etc/c"}).config
    tsa = cfg.resolve_target("rfc3161:tsa")
    assert isinstance(tsa, Rfc3161Target)
    assert tsa.url == "https://tsa"
    assert tsa.policy_oid is None
    assert tsa.hash == "sha512"
    assert tsa.timeout == 3.0
    assert tsa.trust_bundle == Path("/etc/c/bundle.pem")
    assert tsa.ca_bundle == tmp_path / "${NOT_A_VAR}"
    assert cfg.jobs()[0].every == 60
    assert cfg.jobs()[0].policy_oid is None


def test_dotenv_feeds_interpolation_and_real_env_wins(tmp_path):
    write(tmp_path, ".env", 'FAST=30s\nSTRONG="2*fast"\n')
    text = """\
    namespaces:
      n:
        cadence:
          fast: {target: "local:x", every: "${FAST}"}
          strong: {target: "local:x", every: "${STRONG}"}
    """
    assert [j.every for j in load(tmp_path, text).config.jobs()] == [30, 60]
    assert [j.every for j in load(tmp_path, text, env={"FAST": "1m"}).config.jobs()] == [60, 120]


# --------------------------------------------------------------------------- VaultMesh files


def test_vaultmesh_layout_loads_the_real_files(tmp_path, vmsh_root, fixtures_dir):
    before = {n: (fixtures_dir / n).read_bytes() for n in ("namespaces.yaml", "anchors.yaml")}
    env = {"VMSH_ROOT": str(vmsh_root), **VAULTMESH_ENV}
    loaded = load_config(env=env, cwd=tmp_path)
    cfg = loaded.config
    assert loaded.path is None
    assert loaded.files == [
        vmsh_root / "vmsh/config/namespaces.yaml",
        vmsh_root / "vmsh/config/anchors.yaml",
    ]
    assert list(cfg.namespaces) == ["dao:vaultmesh", "fin:clearing"]
    dao = cfg.namespaces["dao:vaultmesh"]
    assert dao.description == "VaultMesh DAO canonical ledger"
    assert dao.witnesses.min_required == 2
    assert len(dao.witnesses.allowlist) == 3
    assert "vote.cast@1.0.x" in dao.schema_policy.allow

    jobs = {str(j.key): j for j in cfg.jobs()}
    assert {k: (j.target, j.every, j.confirmations) for k, j in jobs.items()} == {
        "dao:vaultmesh/fast": ("eip155:8453", 89, 3),
        "dao:vaultmesh/strong": ("btc:mainnet", 34 * 89, 6),
        "dao:vaultmesh/cold": ("rfc3161:tsa", 86400, 0),
        "fin:clearing/fast": ("eip155:1", 120, 12),
        "fin:clearing/strong": ("btc:mainnet", 17 * 120, 6),
        "fin:clearing/cold": ("rfc3161:tsa", 43200, 0),
    }
    assert jobs["dao:vaultmesh/cold"].policy_oid is None
    # named exactly as the namespace; the shared out/batches is read while it is missing
    assert jobs["dao:vaultmesh/fast"].source == vmsh_root / "out/batches/dao:vaultmesh"
    assert cfg.batch_fallbacks("dao:vaultmesh")[-1] == vmsh_root / "out/batches"

    tsa = cfg.resolve_target("rfc3161:tsa")
    assert isinstance(tsa, Rfc3161Target)
    assert tsa.url == VAULTMESH_ENV["TSA_URL"]
    assert tsa.policy_oid is None
    assert tsa.trust_bundle == vmsh_root / "services/anchors/certs/tsa-bundle.pem"
    evm = cfg.resolve_target("eip155:8453")
    assert isinstance(evm, Eip155Target)
    assert evm.chain_id == 8453
    assert evm.rpc_url == VAULTMESH_ENV["EVM_RPC"]
    assert evm.key is not None and evm.key.get_secret_value() == VAULTMESH_ENV["EVM_ANCHOR_KEY"]
    assert evm.persist is False and evm.confirmations == 12
    btc = cfg.resolve_target("btc:mainnet")
    assert isinstance(btc, BtcTarget)
    assert btc.network == "regtest" and btc.confirmations == 6
    assert cfg.resolved_entry("rfc3161:tsa") == "rfc3161.default"
    assert cfg.scheduler.data_dir == vmsh_root / ".vmsh"

    # unchanged
    assert before == {n: (fixtures_dir / n).read_bytes() for n in before}


def test_eip155_chain_mismatch_is_a_warning_and_refused(tmp_path, vmsh_root):
    env = {"VMSH_ROOT": str(vmsh_root), **VAULTMESH_ENV}
    loaded = load_config(env=env, cwd=tmp_path)
    [warning] = [w for w in loaded.warnings if "chain" in w]
    assert warning.startswith("vaultmesh/vmsh/config/namespaces.yaml:42:25: ")
    assert "fin:clearing" in warning and "'fast'" in warning
    assert "chain id 1" in warning and "chainId 8453" in warning
    reason = loaded.config.target_mismatch("eip155:1")
    assert reason and "8453" in reason and "refusing" in reason
    assert loaded.config.target_mismatch("eip155:8453") is None
    assert loaded.config.target_mismatch("rfc3161:tsa") is None


def test_btc_jobs_are_refused_with_a_warning_naming_their_line(tmp_path, vmsh_root):
    """VaultMesh's anchors.yaml gives btc no key: its jobs are refused until it has one."""
    env = {"VMSH_ROOT": str(vmsh_root), **VAULTMESH_ENV}
    loaded = load_config(env=env, cwd=tmp_path)
    btc = [w for w in loaded.warnings if "btc" in w]
    assert [w.split(": ")[0] for w in btc] == [
        "vaultmesh/vmsh/config/namespaces.yaml:27:17",
        "vaultmesh/vmsh/config/namespaces.yaml:43:25",
    ]
    assert "needs a signing key" in (loaded.config.target_mismatch("btc:mainnet") or "")


def test_secrets_never_printed_and_hashed(tmp_path, vmsh_root):
    env = {"VMSH_ROOT": str(vmsh_root), **VAULTMESH_ENV}
    loaded = load_config(env=env, cwd=tmp_path)
    key = VAULTMESH_ENV["EVM_ANCHOR_KEY"]
    assert key not in repr(loaded.config)
    assert key not in loaded.config.model_dump_json()
    other = load_config(env={**env, "EVM_ANCHOR_KEY": "0x" + "22" * 32}, cwd=tmp_path)
    assert other.hash != loaded.hash


def test_vmsh_namespaces_points_elsewhere(tmp_path, vmsh_root, fixtures_dir):
    alt = tmp_path / "alt.yaml"
    shutil.copyfile(fixtures_dir / "namespaces.yaml", alt)
    (vmsh_root / "vmsh/config/namespaces.yaml").unlink()
    env = {"VMSH_ROOT": str(vmsh_root), "VMSH_NAMESPACES": str(alt), **VAULTMESH_ENV}
    loaded = load_config(env=env, cwd=tmp_path)
    assert alt in loaded.files
    assert len(loaded.config.jobs()) == 6


def test_config_file_can_include_vaultmesh_files(tmp_path, fixtures_dir):
    text = f"""\
    namespaces_file: {fixtures_dir / "namespaces.yaml"}
    anchors_file: {fixtures_dir / "anchors.yaml"}
    targets:
      local:
        dev: {{}}
    namespaces:
      "own:ns":
        source: batches/own
        cadence:
          fast: {{target: "local:dev", every: "1m"}}
    """
    loaded = load(tmp_path, text, env={**VAULTMESH_ENV, "EVM_CHAIN_ID": "1"})
    cfg = loaded.config
    assert list(cfg.namespaces) == ["own:ns", "dao:vaultmesh", "fin:clearing"]
    assert cfg.namespaces["own:ns"].source == tmp_path / "batches/own"
    assert isinstance(cfg.resolve_target("local:dev"), LocalTarget)
    assert len(loaded.files) == 3
    # With EVM_CHAIN_ID=1, now eip155:8453 is the one refused.
    [chain] = [w for w in loaded.warnings if "chain" in w]
    assert "8453" in chain
    assert cfg.target_mismatch("eip155:1") is None


def test_resolve_target(tmp_path):
    text = MINIMAL + textwrap.dedent("""\
    targets:
      rfc3161:
        tsa: {url: "https://a"}
        default: {url: "https://b"}
    """)
    cfg = load(tmp_path, text).config
    assert cfg.resolve_target("rfc3161:tsa").url == "https://a"
    assert cfg.resolve_target("rfc3161:other").url == "https://b"
    assert isinstance(cfg.resolve_target("local:whatever"), LocalTarget)
    with pytest.raises(TargetNotFound, match="targets.eip155.default"):
        cfg.resolve_target("eip155:1")
    with pytest.raises(TargetNotFound):
        cfg.resolve_target("nonsense")


def test_snake_case_target_settings(tmp_path):
    text = MINIMAL + textwrap.dedent("""\
    targets:
      eip155:
        base:
          rpc_url: http://x
          chain_id: 8453
          key_env: EVM_ANCHOR_KEY
          max_fee_gwei: 2.5
          gas_limit: 100000
          contract: ""
      rfc3161:
        default:
          url: https://tsa
          auth: {type: basic, username: u, password_env: TSA_PW}
          max_clock_skew: 60
    """)
    cfg = load(tmp_path, text).config
    evm = cfg.targets.eip155["base"]
    assert (evm.rpc_url, evm.chain_id, evm.key_env, evm.contract) == ("http://x", 8453, "EVM_ANCHOR_KEY", None)
    assert evm.max_fee_gwei == 2.5 and evm.gas_limit == 100000
    tsa = cfg.targets.rfc3161["default"]
    assert tsa.auth.type == "basic" and tsa.max_clock_skew == 60


# --------------------------------------------------------------------------- hash


def test_hash_is_stable_across_key_order_and_runs(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
    write(a, "config.yaml", "scheduler: {tick: 2, concurrency: 3}\n" + MINIMAL)
    write(b, "config.yaml", MINIMAL + "scheduler:\n  concurrency: 3\n  tick: 2.0\n")
    # same folder name so the resolved data_dir is the same
    ha = load_config(a / "config.yaml", env={}, cwd=a).hash
    shutil.copyfile(b / "config.yaml", a / "config.yaml")
    hb = load_config(a / "config.yaml", env={}, cwd=a).hash
    assert ha == hb == load_config(a / "config.yaml", env={}, cwd=a).hash
    write(a, "config.yaml", MINIMAL + "scheduler: {tick: 3}\n")
    assert load_config(a / "config.yaml", env={}, cwd=a).hash != ha


# Every kind of namespace field, redundant and single targets, a secret, a float: paths
# absolute, so that the hash does not depend on where the test runs.
PINNED_HASH_CONFIG = """\
scheduler: {tick: 2.5, concurrency: 3, data_dir: /srv/vmsh/data}
log: {level: debug, file: /var/log/vmsh.log}
targets:
  eip155:
    "8453": {rpc_url: "https://rpc.example/v3", chain_id: 8453, contract: "0x00000000000000000000000000000000000000aa", key: "${KEY}"}
  rfc3161:
    tsa: {url: "https://tsa.example/tsr", trust_bundle: /etc/vmsh/tsa.pem, max_clock_skew: 60}
  local:
    dev: {}
namespaces:
  "fin:a": {source: /srv/batches/a, cadence: {fast: {target: "local:dev", every: 10s}}}
  "fin:b": {source: /srv/batches/b, cadence: {fast: {target: "local:dev", every: 10s}}}
  "dao:vaultmesh":
    description: "Zählwerk \\"one\\""
    source: /srv/batches/dao
    follow_symlinks: true
    witnesses: {min_required: 2, allowlist: [alice, bob]}
    schema_policy: {allow: [receipt.v1]}
    cadence:
      fast: {targets: ["eip155:8453", "rfc3161:tsa", "local:dev"], min: 2, every: 90s, confirmations: 3}
      strong: {target: "rfc3161:tsa", every: "10*fast", policyOID: "1.2.3.4"}
      cold: {target: "local:dev", every: 1d, anchor_unchanged: true}
"""


def test_the_hash_receipts_carry_is_the_one_earlier_versions_computed(tmp_path):
    """Receipts and replicas compare config hashes: a faster way to compute it (issue 24)
    must give the very hash earlier versions gave for the same config (pinned here)."""
    loaded = load(tmp_path, PINNED_HASH_CONFIG, env={"KEY": "0x" + "11" * 32})
    assert loaded.hash == "2e5a22cc82be58355d3a16e2a60ed6073a24e259045195eee6d2ed2a21668ff9"
    changed = PINNED_HASH_CONFIG.replace('"fin:b": {source: /srv/batches/b', '"fin:b": {source: /srv/batches/c')
    assert load(tmp_path, changed, env={"KEY": "0x" + "11" * 32}).hash != loaded.hash


def test_replicas_with_their_own_data_dir_and_store_name_have_one_hash(tmp_path):
    """Cluster mode: each replica has a data dir of its own and may reach the database by
    another name; the dashboard warns when live replicas' hashes differ, so these must not
    count. What is anchored, and where its batches come from, does."""
    write(tmp_path, "config.yaml", MINIMAL + "scheduler: {tick: 2}\n")
    env = {"VMSH_STORE": "postgresql://vmsh@db-a:5432/vmsh"}
    one = load_config(tmp_path / "config.yaml", env={**env, "VMSH_DATA_DIR": "a"}, cwd=tmp_path).hash
    env = {"VMSH_STORE": "postgresql://vmsh@10.0.0.5:5432/vmsh", "VMSH_DATA_DIR": "b", "METRICS_PORT": "9202"}
    assert load_config(tmp_path / "config.yaml", env=env, cwd=tmp_path).hash == one
    write(tmp_path, "config.yaml", MINIMAL + "scheduler: {tick: 3}\n")
    assert load_config(tmp_path / "config.yaml", env=env, cwd=tmp_path).hash != one
    # Namespaces that name their `source`: the data dir's batches folder is not read at all.
    sourced = MINIMAL.replace('"demo:a":', '"demo:a":\n    source: /srv/batches/demo', 1)
    write(tmp_path, "config.yaml", sourced)
    a = load_config(tmp_path / "config.yaml", env={"VMSH_DATA_DIR": "a"}, cwd=tmp_path)
    b = load_config(tmp_path / "config.yaml", env={"VMSH_DATA_DIR": "b"}, cwd=tmp_path)
    assert a.config.namespaces["demo:a"].source is not None and a.hash == b.hash


# --------------------------------------------------------------------------- error messages


def test_issue_format():
    issue = ConfigIssue("config.yaml", 14, 7, 'namespaces."dao:vaultmesh".cadence.strong.every',
                        "'34*fats' is not a cadence (expected <n>s|m|h|d or <n>*fast)")
    assert str(issue) == (
        "config.yaml:14:7: namespaces.\"dao:vaultmesh\".cadence.strong.every: "
        "'34*fats' is not a cadence (expected <n>s|m|h|d or <n>*fast)"
    )
    assert str(ConfigIssue(None, None, None, "", "x")) == "x"


def test_bad_cadence_message(tmp_path):
    text = """\
    namespaces:
      "dao:vaultmesh":
        cadence:
          fast:
            target: "local:x"
            every: "89s"
          strong:
            target: "local:x"
            every: '34*fats'
    """
    assert errors(tmp_path, text) == [
        "config.yaml:9:16: namespaces.\"dao:vaultmesh\".cadence.strong.every: "
        "'34*fats' is not a cadence (expected <n>s|m|h|d or <n>*fast)"
    ]


def test_fast_multiple_of_itself_and_overflow(tmp_path):
    text = """\
    namespaces:
      a:
        cadence:
          fast: {target: "local:x", every: "3*fast"}
      b:
        cadence:
          fast: {target: "local:x", every: "1000d"}
          cold: {target: "local:x", every: "100000*fast"}
    """
    assert errors(tmp_path, text) == [
        "config.yaml:4:40: namespaces.a.cadence.fast.every: "
        "'3*fast': the fast cadence cannot be a multiple of itself",
        "config.yaml:8:40: namespaces.b.cadence.cold.every: "
        "'100000*fast' is longer than 100 years; check the number",
    ]


def test_yaml_syntax_error(tmp_path):
    text = "namespaces:\n  a:\n    cadence: [1,\n  b: 2\n"
    [message] = errors(tmp_path, text)
    assert message.startswith("config.yaml:5:1: ")
    assert "YAML syntax error: " in message


def test_yaml_syntax_error_bad_indent(tmp_path):
    [message] = errors(tmp_path, "scheduler:\n  tick: 1\n data_dir: x\n")
    assert message.startswith("config.yaml:3:2: YAML syntax error: ")


def test_unknown_key_with_suggestion(tmp_path):
    text = """\
    namespaces:
      n:
        cadence:
          fast:
            target: "local:x"
            evry: "10s"
    """
    assert errors(tmp_path, text) == [
        "config.yaml:4:7: namespaces.n.cadence.fast: missing required key 'every'",
        "config.yaml:6:9: namespaces.n.cadence.fast.evry: unknown key 'evry' (did you mean 'every'?)",
    ]


def test_unknown_key_without_close_match_lists_the_keys(tmp_path):
    [message] = errors(tmp_path, "http: {listen: '1.2.3.4:1', zzz: 1}\n")
    assert message == "config.yaml:1:29: http.zzz: unknown key 'zzz' (expected one of: listen)"


def test_unknown_alias_key_suggests_camel_case(tmp_path):
    text = MINIMAL + "targets:\n  rfc3161:\n    default: {url: http://u, trustBundel: x}\n"
    [message] = errors(tmp_path, text)
    assert message == (
        "config.yaml:7:30: targets.rfc3161.default.trustBundel: "
        "unknown key 'trustBundel' (did you mean 'trustBundle'?)"
    )


def test_unknown_scheme_in_targets(tmp_path):
    [message] = errors(tmp_path, MINIMAL + "targets:\n  rfc3616: {}\n")
    assert message == "config.yaml:6:3: targets.rfc3616: unknown key 'rfc3616' (did you mean 'rfc3161'?)"


def test_wrong_type(tmp_path):
    text = MINIMAL + "scheduler:\n  tick: soon\n  concurrency: [1]\n"
    assert errors(tmp_path, text) == [
        "config.yaml:6:9: scheduler.tick: Input should be a valid number, "
        "unable to parse string as a number (got 'soon')",
        "config.yaml:7:16: scheduler.concurrency: Input should be a valid integer (got a list)",
    ]


def test_wrong_type_never_echoes_a_secret(tmp_path):
    text = MINIMAL + "targets:\n  eip155:\n    default: {rpcUrl: x, chainId: 1, key: [supersecret]}\n"
    [message] = errors(tmp_path, text)
    assert "targets.eip155.default.key" in message
    assert "supersecret" not in message


def test_unresolved_target(tmp_path):
    text = """\
    namespaces:
      "dao:x":
        cadence:
          fast: {target: "rfc3161:tsa", every: "10s"}
    """
    assert errors(tmp_path, text) == [
        'config.yaml:4:22: namespaces."dao:x".cadence.fast.target: target \'rfc3161:tsa\' has no '
        "settings (add targets.rfc3161.tsa or targets.rfc3161.default, or a VaultMesh anchors.yaml)"
    ]


def test_malformed_target(tmp_path):
    text = """\
    namespaces:
      n:
        cadence:
          fast: {target: "eth:1", every: "10s"}
          cold: {target: "eip155:base", every: "10s"}
    """
    assert errors(tmp_path, text) == [
        "config.yaml:4:22: namespaces.n.cadence.fast.target: 'eth:1' is not a target "
        "(expected <scheme>:<name>, scheme one of local|rfc3161|eip155|btc)",
        "config.yaml:5:22: namespaces.n.cadence.cold.target: 'eip155:base' needs a numeric "
        "chain id, for example 'eip155:8453'",
    ]


def test_unset_variable(tmp_path):
    text = MINIMAL + "targets:\n  rfc3161:\n    default:\n      url: ${TSA_URL}\n"
    assert errors(tmp_path, text) == [
        "config.yaml:8:12: targets.rfc3161.default.url: variable TSA_URL is not set "
        "(set it, or write ${TSA_URL:-default})"
    ]


def test_unset_variables_in_vaultmesh_anchors(tmp_path, vmsh_root):
    env = {"VMSH_ROOT": str(vmsh_root), **VAULTMESH_ENV}
    del env["EVM_RPC"], env["TSA_URL"]
    with pytest.raises(ConfigError) as info:
        load_config(env=env, cwd=tmp_path)
    assert [str(i) for i in info.value.issues] == [
        "vaultmesh/vmsh/config/anchors.yaml:3:13: eip155.default.rpcUrl: variable EVM_RPC is "
        "not set (set it, or write ${EVM_RPC:-default})",
        "vaultmesh/vmsh/config/anchors.yaml:16:10: rfc3161.default.url: variable TSA_URL is "
        "not set (set it, or write ${TSA_URL:-default})",
    ]


def test_duplicate_key(tmp_path):
    text = MINIMAL + "scheduler:\n  tick: 1\n  tick: 2\n"
    assert errors(tmp_path, text) == [
        "config.yaml:7:3: scheduler.tick: duplicate key 'tick' (first at line 6, column 3)"
    ]


def test_several_errors_at_once_sorted_by_position(tmp_path):
    text = """\
    scheduler:
      tick: -1
      dat_dir: x
    namespaces:
      "a:b":
        cadence:
          fast: {target: "local:x", every: "0s"}
          strong: {target: "btc:mainnet", every: "34*fats"}
      c:
        cadence:
          strong: {target: "local:x", every: "1d"}
      d:
        cadence:
          fast: {target: "local:x", every: "${NOPE}"}
    """
    got = errors(tmp_path, text)
    assert got == [
        "config.yaml:2:9: scheduler.tick: Input should be greater than 0 (got -1)",
        "config.yaml:3:3: scheduler.dat_dir: unknown key 'dat_dir' (did you mean 'data_dir'?)",
        "config.yaml:7:40: namespaces.\"a:b\".cadence.fast.every: '0s' is zero; a period must be positive",
        "config.yaml:8:24: namespaces.\"a:b\".cadence.strong.target: target 'btc:mainnet' has no "
        "settings (add targets.btc.mainnet or targets.btc.default, or a VaultMesh anchors.yaml)",
        "config.yaml:8:46: namespaces.\"a:b\".cadence.strong.every: '34*fats' is not a cadence "
        "(expected <n>s|m|h|d or <n>*fast)",
        "config.yaml:10:5: namespaces.c.cadence: missing required key 'fast'",
        "config.yaml:14:40: namespaces.d.cadence.fast.every: variable NOPE is not set "
        "(set it, or write ${NOPE:-default})",
    ]


def test_top_level_must_be_a_mapping(tmp_path):
    [message] = errors(tmp_path, "- a\n- b\n")
    assert message == "config.yaml:1:1: the top level must be a mapping"


def test_empty_file_is_valid(tmp_path):
    loaded = load(tmp_path, "")
    assert loaded.config.namespaces == {} and loaded.config.jobs() == []


def test_namespace_defined_twice(tmp_path, fixtures_dir):
    text = f"""\
    namespaces_file: {fixtures_dir / "namespaces.yaml"}
    anchors_file: {fixtures_dir / "anchors.yaml"}
    namespaces:
      "dao:vaultmesh":
        cadence:
          fast: {{target: "local:dev", every: "1m"}}
    """
    got = errors(tmp_path, text, env=VAULTMESH_ENV)
    assert len(got) == 1
    assert 'namespaces."dao:vaultmesh": namespace \'dao:vaultmesh\' is also defined in config.yaml' in got[0]
    assert got[0].startswith(str(fixtures_dir / "namespaces.yaml") + ":3:3: ")


def test_bad_value_from_env_or_cli_names_its_origin(tmp_path):
    write(tmp_path, "config.yaml", MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(Path("config.yaml"), env={"LOG_LEVEL": "verbose"}, cwd=tmp_path,
                    overrides={"tick": -1})
    assert [str(i) for i in info.value.issues] == [
        "--tick: scheduler.tick: Input should be greater than 0 (got -1)",
        "env LOG_LEVEL: log.level: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR' "
        "(got 'VERBOSE')",
    ]


def test_dotted_overrides(tmp_path):
    cfg = load(tmp_path, MINIMAL, overrides={"scheduler.concurrency": 2, "listen": "0.0.0.0:1"}).config
    assert cfg.scheduler.concurrency == 2
    assert cfg.http.listen == "0.0.0.0:1"


def test_hex_values_stay_text_and_numbers_become_text(tmp_path):
    text = MINIMAL.replace('every: "10s"}', 'every: "10s", policyOID: 1.2}') + textwrap.dedent("""\
    targets:
      eip155:
        default: {rpcUrl: x, chainId: 8453, contract: 0x00000000000000000000000000000000000000aa}
      btc:
        default: {rpcUrl: x, network: 1}
    """)
    cfg = load(tmp_path, text).config
    assert cfg.targets.eip155["default"].contract == "0x00000000000000000000000000000000000000aa"
    assert cfg.targets.btc["default"].network == "1"
    assert cfg.jobs()[0].policy_oid == "1.2"


def test_every_without_unit(tmp_path):
    text = MINIMAL.replace('every: "10s"', "every: 89")
    assert errors(tmp_path, text) == [
        "config.yaml:4:42: namespaces.\"demo:a\".cadence.fast.every: "
        "89 has no unit (expected <n>s|m|h|d or <n>*fast)"
    ]


# --- namespace names become folder names: check-config refuses the ones that cannot --------------

NAMED = """\
namespaces:
  "demo:a":
    cadence:
      fast: {{target: "local:dev", every: "10s"}}
  {name}:
    cadence:
      fast: {{target: "local:dev", every: "10s"}}
"""


@pytest.mark.parametrize(
    ("yaml_name", "message"),
    [
        ('""', 'namespaces."": a namespace name cannot be empty'),
        ('"."', "namespaces.\".\": '.' cannot be a namespace name"),
        ('".."', "namespaces.\"..\": '..' cannot be a namespace name"),
        ('"dao/vaultmesh"', "a namespace name cannot contain '/'"),
        ('"a\\0b"', "cannot contain control or invisible characters (U+0000)"),
        ('"red\\e[31m"', "cannot contain control or invisible characters (U+001B)"),
        ('"tab\\there"', "cannot contain control or invisible characters (U+0009)"),
        ('"rtl\\u202Eoverride"', "cannot contain control or invisible characters (U+202E)"),
        ('"' + "一" * 29 + '"', "would be 261 bytes, over the 255-byte file name limit"),
        ("a" * 256, "would be 256 bytes, over the 255-byte file name limit"),
    ],
    ids=["empty", "dot", "dotdot", "slash", "nul", "escape", "tab", "bidi", "29-cjk", "256-ascii"],
)
def test_a_namespace_name_that_cannot_be_a_folder_is_refused_at_its_line(tmp_path, yaml_name, message):
    [error] = errors(tmp_path, NAMED.format(name=yaml_name))
    assert error.startswith("config.yaml:5:3: namespaces.")
    assert message in error


@pytest.mark.parametrize(
    "name",
    ["dao:vaultmesh", "a" * 255, "一" * 28, "name with spaces", "émoji-🙂", ".hidden", "..x"],
)
def test_names_that_fit_load_and_write_real_receipts(tmp_path, name):
    """The limit is the real one: a name at it writes a receipt and its pending marker, with
    the longest cadence and a collision suffix, on this machine's file system."""
    from core.receipts import build_receipt
    from core.store.files.receipts import ReceiptStore

    loaded = load(tmp_path, NAMED.format(name='"' + name + '"'))
    assert name in loaded.config.namespaces
    store = ReceiptStore(tmp_path / "receipts")
    receipt = build_receipt(
        namespace=name,
        cadence="strong",
        target="local:dev",
        batch_id="000001",
        batch_root="sha256:" + "ab" * 32,
        anchored_root="sha256:" + "ab" * 32,
        proof=[],
        leaf_index=0,
        tree_size=1,
        anchored_at=1_700_000_000.123,
        attestation={},
        status="pending",
        confirmations_required=1,
        confirmations_observed=0,
        version="test",
        config_hash="0" * 64,
    )
    first = store.write(receipt)
    second = store.write(receipt)  # same name: the "-1" suffix
    assert first.exists() and second.exists() and first != second
    assert [p for p, _ in store.pending()] and store.namespace_of(first) == name


def test_namespaces_from_the_vaultmesh_file_are_checked_at_their_own_line(tmp_path):
    write(tmp_path, "ns.yaml", 'namespaces:\n  ok:\n    cadence:\n      fast: {target: "local:dev", every: "10s"}\n'
          '  "":\n    cadence:\n      fast: {target: "local:dev", every: "10s"}\n')
    [error] = errors(tmp_path, "namespaces_file: ns.yaml\n")
    assert error == 'ns.yaml:5:3: namespaces."": a namespace name cannot be empty'


# --- hostile YAML: refused at its line, quickly, by check-config and by every load --------------

LAUGHS = ["lol1: &lol1 [" + ", ".join(['"lol"'] * 9) + "]"] + [
    f"lol{n}: &lol{n} [" + ", ".join([f"*lol{n - 1}"] * 9) + "]" for n in range(2, 10)
]
BILLION_LAUGHS = "\n".join(LAUGHS) + "\n"  # 9**9 values once expanded, from 600 bytes


def check_config(path: Path) -> subprocess.CompletedProcess:
    """`vmsh-scheduler check-config FILE` as an operator runs it, in at most 2 GiB of memory."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    exe = Path(sys.executable).parent / "vmsh-scheduler"
    return subprocess.run(
        [str(exe), "check-config", str(path)], capture_output=True, text=True, timeout=120,
        cwd=path.parent, preexec_fn=limit_memory, env={**os.environ, "NO_COLOR": "1"},
    )


def test_an_alias_bomb_is_refused_at_its_line_with_exit_2(tmp_path):
    path = write(tmp_path, "config.yaml", MINIMAL + BILLION_LAUGHS)
    done = check_config(path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "config.yaml:10:" in done.stderr  # lol6, the first level past the limit
    assert "aliases here expand to" in done.stderr and "(an alias bomb?)" in done.stderr


def test_nesting_990_deep_is_a_file_line_error_with_exit_2(tmp_path):
    nested = "\n".join(" " * i + "-" for i in range(990)) + " x\n"
    path = write(tmp_path, "config.yaml", "")
    path.write_text("namespaces:\n" + nested)
    done = check_config(path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "config.yaml:65:64: nested more than 64 levels deep" in done.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &a [1, *a]\n", "config.yaml:1:4: an alias refers to a value that contains it (a recursive alias)"),
        ("a: &a " + "[" * 30 + "1" + "]" * 30 + "\nb: " + "[" * 40 + "*a" + "]" * 40 + "\n",
         "config.yaml:2:43: nested more than 64 levels deep (aliases expanded)"),
        ("a: &a x\nb: [" + ", ".join(["*a"] * 10_001) + "]\n", "more than 10000 aliases (*name) in one file"),
    ],
    ids=["recursive", "deep-through-alias", "too-many-aliases"],
)
def test_alias_abuse_is_refused_at_its_line(tmp_path, text, expected):
    [error] = errors(tmp_path, text)
    assert expected in error


def test_a_config_file_over_the_size_limit_is_refused_unread(tmp_path):
    from core.config import MAX_CONFIG_BYTES

    path = write(tmp_path, "config.yaml", MINIMAL)
    with open(path, "r+b") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)  # sparse: nothing to read
    with pytest.raises(ConfigError) as info:
        load_config(path, env={}, cwd=tmp_path)
    assert [str(i) for i in info.value.issues] == [
        f"config.yaml: the file is {MAX_CONFIG_BYTES + 1} bytes, more than the {MAX_CONFIG_BYTES} bytes "
        "a config file may have"
    ]


def test_ordinary_anchors_aliases_and_merges_still_load(tmp_path):
    first = (
        "namespaces:\n"
        "  first:\n"
        "    cadence: &std\n"
        '      fast: {<<: &dev {target: "local:dev"}, every: "10s"}\n'
        '      strong: {<<: *dev, every: "3*fast"}\n'
    )
    others = "".join(f"  ns{i}: {{cadence: *std}}\n" for i in range(2000))
    loaded = load(tmp_path, first + others)
    assert len(loaded.config.namespaces) == 2001
    assert loaded.config.namespaces["ns1999"].cadence.seconds("strong") == 30


def test_batch_read_settings(tmp_path):
    from core.sources import BatchLimits

    loaded = load(tmp_path, """\
        scheduler: {max_batch_bytes: 4096, follow_symlinks: true}
        namespaces:
          a: {source: a, cadence: {fast: {target: "local:dev", every: "10s"}}}
          b: {source: b, follow_symlinks: false, cadence: {fast: {target: "local:dev", every: "10s"}}}
          c: {source: c, cadence: {fast: {target: "local:dev", every: "10s"}}}
        """)
    limits = loaded.config.batch_limits()
    assert limits == {
        str(tmp_path / "a"): BatchLimits(4096, True),
        str(tmp_path / "b"): BatchLimits(4096, False),
        str(tmp_path / "c"): BatchLimits(4096, True),
    }
    # Equal limits are one object: 100,000 namespaces do not keep 100,000 copies.
    assert limits[str(tmp_path / "a")] is limits[str(tmp_path / "c")]
    default = load(tmp_path, MINIMAL).config
    limits = default.batch_limits().values()
    assert {(lim.max_bytes, lim.follow_symlinks) for lim in limits} == {(1024 * 1024, False)}
    [error] = errors(tmp_path, "scheduler: {max_batch_bytes: 10}\n")
    assert error.startswith("config.yaml:1:30: scheduler.max_batch_bytes: Input should be greater than or equal to 128")


# --- check-config (thorough): what the dashboard reads, and the files the config names ----------

GOOD_THEME = 'name = "mine"\nprimary = "#4EA8DE"\ndark = true\n[variables]\n"footer-key-foreground" = "#F2AB41"\n'
KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"  # a throwaway test key


def thorough_errors(tmp_path: Path, text: str, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env=env, thorough=True)
    return [str(i) for i in info.value.issues]


def test_a_mistyped_dashboard_action_is_an_error_with_a_suggestion_at_its_line(tmp_path):
    text = MINIMAL + "tui:\n  keys: {forse: x, filter: '/'}\n"
    assert thorough_errors(tmp_path, text) == [
        "config.yaml:6:10: tui.keys.forse: unknown action 'forse' (did you mean 'force'?)"
    ]
    [error] = thorough_errors(tmp_path, MINIMAL + "tui:\n  keys:\n    frobnicate: x\n")
    assert error.startswith("config.yaml:7:5: tui.keys.frobnicate: unknown action 'frobnicate'; known: ")
    assert "force_namespace" in error and "log_follow" in error


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("escpae", "'escpae' is not a key name (did you mean 'escape'?)"),
        ("cmd+r", "'cmd' in 'cmd+r' is not a modifier"),
        ("j,,k", "has an empty key between commas"),
        ("''", "expected a key such as 'x'"),
    ],
)
def test_a_key_textual_cannot_bind_is_an_error_at_its_value(tmp_path, key, words):
    [error] = thorough_errors(tmp_path, MINIMAL + f"tui:\n  keys:\n    reload: {key}\n")
    assert error.startswith("config.yaml:7:13: tui.keys.reload: ") and words in error


def test_an_unknown_theme_name_lists_the_known_ones(tmp_path):
    [error] = thorough_errors(tmp_path, MINIMAL + "tui: {theme: vaultmesh-drak}\n")
    assert error.startswith("config.yaml:5:14: tui.theme: no theme named 'vaultmesh-drak'; available: ")
    for name in ("vaultmesh-dark", "vaultmesh-light", "vaultmesh-ansi", "nord", "textual-dark"):
        assert name in error


def test_a_theme_file_that_does_not_parse_names_the_file(tmp_path):
    theme = write(tmp_path, "themes/mine.toml", 'name = "mine"\nprimary = #4EA8DE\n')
    [error] = thorough_errors(tmp_path, MINIMAL + "tui: {theme_file: themes/mine.toml, theme: mine}\n")
    assert error.startswith(f"config.yaml:5:19: tui.theme_file: {theme}: not valid TOML")
    theme.write_text('name = "mine"\nprimary = "not-a-colour"\n')
    [error] = thorough_errors(tmp_path, MINIMAL + "tui: {theme_file: themes/mine.toml}\n")
    assert error.endswith(f"{theme}: primary = 'not-a-colour' is not a colour (try #RRGGBB or ansi_blue)")
    [error] = thorough_errors(tmp_path, MINIMAL + "tui: {theme_file: themes/none.toml}\n")
    assert error.endswith(f"{tmp_path / 'themes/none.toml'}: theme file not found")


def rfc3161_config(bundle: str) -> str:
    return (
        MINIMAL.replace("local:dev", "rfc3161:tsa")
        + f"targets:\n  rfc3161:\n    tsa:\n      url: https://tsa.example/tsr\n      trustBundle: {bundle}\n"
    )


def test_a_trust_bundle_that_is_missing_or_holds_no_certificate_is_an_error(tmp_path):
    [error] = thorough_errors(tmp_path, rfc3161_config("certs/tsa.pem"))
    assert error == (
        "config.yaml:9:20: targets.rfc3161.tsa.trustBundle: cannot read trust bundle "
        f"{tmp_path / 'certs/tsa.pem'}: No such file or directory"
    )
    write(tmp_path, "certs/tsa.pem", "not a certificate\n")
    [error] = thorough_errors(tmp_path, rfc3161_config("certs/tsa.pem"))
    assert error == (
        f"config.yaml:9:20: targets.rfc3161.tsa.trustBundle: trust bundle {tmp_path / 'certs/tsa.pem'} "
        "holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)"
    )
    write(tmp_path, "certs/tsa.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    [error] = thorough_errors(tmp_path, rfc3161_config("certs/tsa.pem"))
    assert error.endswith("tsa.pem holds a certificate that does not parse")


def eip155_config(key_file: str) -> str:
    return MINIMAL.replace("local:dev", "eip155:8453") + (
        "targets:\n  eip155:\n    \"8453\":\n      rpcUrl: https://rpc.example\n      chainId: 8453\n"
        f"      keyFile: {key_file}\n"
    )


def test_a_key_file_that_is_missing_or_not_a_key_is_an_error_that_never_shows_it(tmp_path):
    [error] = thorough_errors(tmp_path, eip155_config("keys/anchor.key"))
    assert error == (
        "config.yaml:10:16: targets.eip155.8453.keyFile: cannot read key file "
        f"{tmp_path / 'keys/anchor.key'}: No such file or directory"
    )
    secret = "0x" + "zz" * 32
    write(tmp_path, "keys/anchor.key", secret + "\n")
    [error] = thorough_errors(tmp_path, eip155_config("keys/anchor.key"))
    assert error.endswith("anchor.key does not hold a valid secp256k1 private key (64 hex digits)")
    assert "zz" not in error


def test_what_check_config_opens_does_not_stop_a_run_or_a_reload(tmp_path):
    """Without thorough (a run, a reload), the files are the backends' and the dashboard's
    to read when they need them: missing ones do not refuse the config."""
    text = rfc3161_config("certs/missing.pem") + "tui: {theme_file: none.toml, keys: {forse: x}}\n"
    assert load(tmp_path, text).config.tui.keys == {"forse": "x"}


def test_a_config_with_every_dashboard_setting_and_named_file_valid_passes(tmp_path):
    from tests.pki import make_root

    write(tmp_path, "mine.toml", GOOD_THEME)
    write(tmp_path, "certs/tsa.pem", (make_root().pem + make_root("Second CA").pem).decode())
    write(tmp_path, "anchor.key", "0x" + KEY_HEX + "\n")
    text = (
        "namespaces:\n"
        '  "demo:a":\n'
        "    cadence:\n"
        '      fast: {target: "rfc3161:tsa", every: "10s"}\n'
        '      strong: {target: "eip155:8453", every: "3*fast"}\n'
        "targets:\n"
        "  rfc3161:\n    tsa: {url: https://tsa.example/tsr, trustBundle: certs/tsa.pem}\n"
        "  eip155:\n    \"8453\": {rpcUrl: https://rpc.example, chainId: 8453, key_file: anchor.key}\n"
        "tui:\n"
        "  theme: mine\n"
        "  theme_file: mine.toml\n"
        "  keys: {force: x, force_namespace: 'ctrl+f', help: question_mark, next_pane: 'tab,l', sort: o, quit: '!'}\n"
    )
    loaded = load(tmp_path, text, thorough=True)
    assert loaded.config.tui.theme == "mine"
    assert load(tmp_path, MINIMAL + "tui: {theme: nord}\n", thorough=True).config.tui.theme == "nord"


# The dashboard and check-config share core.dashboard_settings; these keep it true to the
# dashboard's bindings and to Textual (which core may not import).


def test_the_remappable_actions_are_exactly_the_dashboards_binding_ids():
    from textual.binding import Binding

    from core.dashboard_settings import KEYMAP_ACTIONS
    from tui.app import VaultMeshApp
    from tui.dashboard import DashboardScreen
    from tui.widgets import DiffTable, LogView

    ids = {
        b.id
        for cls in (VaultMeshApp, DashboardScreen, DiffTable, LogView)
        for b in cls.BINDINGS
        if isinstance(b, Binding) and b.id
    }
    assert ids == set(KEYMAP_ACTIONS)
    assert len(KEYMAP_ACTIONS) == len(set(KEYMAP_ACTIONS))


def test_theme_fields_names_and_key_names_agree_with_textual():
    from dataclasses import fields

    from textual.keys import Keys, _character_to_key
    from textual.theme import BUILTIN_THEMES, Theme

    from core import dashboard_settings as ds

    assert set(ds.TEXTUAL_THEMES) == set(BUILTIN_THEMES)
    assert set(ds.THEME_FIELDS) == {f.name for f in fields(Theme)}
    assert set(ds.NAMED_KEYS) <= {k.value for k in Keys}
    for code in range(0x20, 0x7F):
        assert ds.character_key(chr(code)) == _character_to_key(chr(code))
        assert ds.key_problem(_character_to_key(chr(code))) is None


def test_policy_oid_is_checked_and_falls_back_to_the_target(tmp_path):
    loaded = load(
        tmp_path,
        """\
        targets:
          rfc3161:
            tsa: {url: "https://tsa.example/tsr", policyOID: "1.2.3.4"}
        namespaces:
          a:
            cadence:
              fast: {target: "rfc3161:tsa", every: "60s", policyOID: "1.2.3.5"}
              cold: {target: "rfc3161:tsa", every: "1d", policyOID: ""}
          b:
            cadence:
              fast: {target: "local:dev", every: "60s"}
        """,
    )
    policies = {str(j.key): j.policy_oid for j in loaded.config.jobs()}
    # the cadence's own, else its TSA target's ("" means none), else none at all
    assert policies == {"a/fast": "1.2.3.5", "a/cold": "1.2.3.4", "b/fast": None}

    found = errors(
        tmp_path,
        """\
        targets:
          local:
            dev: {policies: ["2.5.29.32.0", "tsa-policy"]}
        namespaces:
          a:
            cadence:
              fast: {target: "local:dev", every: "60s", policyOID: "1.2.x"}
              strong: {target: "eip155:8453", every: "2*fast", policyOID: "1.2.3"}
        """,
    )
    text = "\n".join(found)
    assert "namespaces.a.cadence.fast.policyOID: not an object identifier (expected dotted numbers" in text
    assert "targets.local.dev.policies[1]: not an object identifier" in text
    assert (
        "namespaces.a.cadence.strong.policyOID: a policy applies to time-stamp authorities "
        "(rfc3161:, local:) only; eip155:8453 has none (got '1.2.3')"
    ) in text
    assert all("config.yaml:" in line for line in found), found


@pytest.mark.parametrize("url", ["htps://tsa.example/tsr", "tsa.example/tsr", "https://"])
def test_an_rfc3161_url_that_is_not_http_is_refused_at_its_line(tmp_path, url):
    text = MINIMAL + f"targets:\n  rfc3161:\n    tsa:\n      url: '{url}'\n"
    [message] = errors(tmp_path, text)
    assert message.startswith("config.yaml:8:12: targets.rfc3161.tsa.url: url must be http:// or https://")


def test_a_bad_rfc3161_url_never_echoes_its_credentials(tmp_path):
    text = MINIMAL + "targets:\n  rfc3161:\n    tsa: {url: 'htps://ops:hunter2@tsa.example/tsr?k=v'}\n"
    [message] = errors(tmp_path, text)
    assert message.endswith("got htps://tsa.example")
    assert "hunter2" not in message


# --------------------------------------------------------------------------- memory at scale

def cadence_namespaces(everys: dict[str, str], extra: dict[str, str] | None = None) -> str:
    """A config of namespaces with one fast cadence each (`every` by name), each given the
    `extra` line if named there: namespace i's `every` is on line 3 * i + 1."""
    lines = ["namespaces:"]
    for name, every in everys.items():
        lines += [f'  "{name}":'] + ([f"    {extra[name]}"] if extra and name in extra else [])
        lines += ["    cadence:", f'      fast: {{target: "local:dev", every: "{every}"}}']
    return "\n".join(lines) + "\n"


SHARED_SETTINGS = cadence_namespaces(
    {"a": "10s", "b": "10s", "c": "20s", "d": "10s", "e": "10s"},
    extra={"d": "source: batches/d", "e": 'description: ""'},
)


def test_equal_namespace_settings_are_held_once_and_read_as_before(tmp_path, monkeypatch):
    """10,000 namespaces of a few shapes keep a few models, not 10,000 (issue 24's memory),
    and every namespace still reads its own settings, with the config's hash unchanged."""
    ns = load(tmp_path, SHARED_SETTINGS).config.namespaces
    assert ns["a"] is ns["b"]  # equal in every field: one model
    assert ns["a"].cadence is ns["d"].cadence  # equal cadences, other sources
    assert ns["d"] is not ns["a"] and ns["d"].source == tmp_path / "batches" / "d"
    assert ns["c"].cadence is not ns["a"].cadence and ns["c"].cadence.fast.every == "20s"
    assert ns["e"] is not ns["a"]  # a field set to its default is still a field set
    assert ns["e"].model_dump(exclude_unset=True) != ns["a"].model_dump(exclude_unset=True)
    shared = load(tmp_path, SHARED_SETTINGS)
    monkeypatch.setattr("core.config.load.share_equal_settings", lambda namespaces: None)
    monkeypatch.setattr("core.config.load.validation_pool", dict)
    unshared = load(tmp_path, SHARED_SETTINGS)
    assert unshared.config.namespaces["a"].cadence is not unshared.config.namespaces["b"].cadence
    assert shared.hash == unshared.hash
    assert shared.config.model_dump() == unshared.config.model_dump()


def test_namespaces_of_their_own_hold_one_set_of_the_fields_set(tmp_path, monkeypatch):
    """Namespaces of other sources (models of their own) hold one set of the fields set
    (232 bytes each at 10,000 namespaces, issue 24), and read as before: the same
    settings, fields set and hash."""
    text = cadence_namespaces({f"n{i}": "10s" for i in range(50)}, extra={f"n{i}": f"source: b/n{i}" for i in range(50)})
    loaded = load(tmp_path, text)
    ns = loaded.config.namespaces
    assert len({id(model.__pydantic_fields_set__) for model in ns.values()}) == 1
    assert ns["n0"].model_fields_set == {"source", "cadence"}
    monkeypatch.setattr("core.config.load.share_equal_settings", lambda namespaces: None)
    plain = load(tmp_path, text)
    assert list(ns) == list(plain.config.namespaces) and loaded.hash == plain.hash
    assert loaded.config.model_dump() == plain.config.model_dump()
    assert [m.model_dump(exclude_unset=True) for m in ns.values()] == [
        m.model_dump(exclude_unset=True) for m in plain.config.namespaces.values()
    ]
    assert all(model.cadence is ns["n0"].cadence for model in ns.values())  # shared parts kept


def test_an_invalid_cadence_repeated_is_reported_at_each_of_its_lines(tmp_path):
    """Equal cadences are validated once (issue 24), but an invalid one is never taken
    for valid, and each copy's error names its own line."""
    found = errors(tmp_path, cadence_namespaces({"a": "10s", "b": "often", "c": "often"}))
    assert len(found) == 2, found
    assert "config.yaml:7" in found[0] and "namespaces.b.cadence.fast.every" in found[0]
    assert "config.yaml:10" in found[1] and "namespaces.c.cadence.fast.every" in found[1]


def test_a_sources_path_made_from_its_folders_is_the_path_of_its_text():
    """100,000 namespaces' sources are read as each folder's Path joined with a name
    (issue 24: half the time of parsing each whole text), and each is the Path its text
    names, whatever the text."""
    from core.config.sharing import folder_path

    pool: dict = {}
    texts = ["/srv/b/x", "/srv/b/y%3A1", "srv/b/z", "x", "/x", "/", "//x", "//x/y", "/a//b", "a/b/", "a/./b", "a/b/.",
             "a/..", "~/b/c", " /a/b ", "a/ b", "./a", "../a", "a\\b/c", "/a/b/c/d/e"]
    for text in texts:
        assert folder_path(text, pool) == Path(text), text
        assert str(folder_path(text, pool)) == str(Path(text)), text
    many = [folder_path(f"/srv/b/ns{i}", pool) for i in range(100)]
    assert [p.parent for p in many] == [Path("/srv/b")] * 100
    assert len({id(folder) for folder in pool.values()}) < len(texts)  # a folder made once, not per name


def test_equal_cadences_out_of_range_or_without_settings_are_reported_at_each_namespace(tmp_path):
    """Equal cadence blocks are one mapping, judged once (issue 24), but a cadence out of
    range or naming a target without settings is still reported at every namespace
    that writes it, each at its own line, in file order."""
    block = ["    cadence:", "      fast:", "        target: local:x", "        every: 1000d",
             "      cold:", "        target: eip155:8453", "        every: 100000*fast"]
    text = "namespaces:\n" + "".join(f"  n{i}:\n" + "\n".join(block) + "\n" for i in range(3))
    found = errors(tmp_path, text)
    assert found == [
        line
        for i in range(3)
        for line in (
            f"config.yaml:{8 * i + 8}:17: namespaces.n{i}.cadence.cold.target: target 'eip155:8453' has no settings "
            "(add targets.eip155.8453 or targets.eip155.default, or a VaultMesh anchors.yaml)",
            f"config.yaml:{8 * i + 9}:16: namespaces.n{i}.cadence.cold.every: "
            "'100000*fast' is longer than 100 years; check the number",
        )
    ], found
