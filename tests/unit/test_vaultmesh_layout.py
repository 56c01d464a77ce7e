"""Batches where VaultMesh writes them: a namespace without `source` reads
`out/batches/<namespace>/` (named exactly as the namespace) when that folder exists, else
the shared `out/batches/` (its newest *.json), decided at each read."""

from __future__ import annotations

import dataclasses
import random
import shutil
from pathlib import Path

import pytest

from cli.main import main
from core import sources
from core.anchors.local.backend import LocalTSA
from core.backoff import BackoffPolicy
from core.clock import FakeClock
from core.config import ENV_VARS, load_config
from core.engine import Scheduler
from core.events import AnchorFailed, EventBus, ReceiptWritten
from core.receipts import load_receipt
from core.sources import write_batch
from core.store.files.journal import IntentJournal
from core.store.files.receipts import ReceiptStore
from core.store.files.state import StateStore
from tests.pki import make_root

VAULTMESH_ENV = {
    "EVM_RPC": "https://rpc.example/v3/abc",
    "EVM_CHAIN_ID": "8453",
    "EVM_CONTRACT": "0x00000000000000000000000000000000000000aa",
    "EVM_ANCHOR_KEY": "0x" + "11" * 32,
    "BTC_RPC": "http://127.0.0.1:18443",
    "TSA_URL": "https://tsa.example/tsr",
}
NAMESPACES = ["dao:vaultmesh", "fin:clearing"]  # tests/fixtures/vaultmesh/namespaces.yaml


def root(n: int) -> str:
    return "sha256:" + f"{n:064x}"


@pytest.fixture
def checkout(tmp_path: Path, fixtures_dir: Path) -> Path:
    """A VaultMesh checkout: the real vmsh/config files, unchanged, and no out/ yet."""
    vm = tmp_path / "vaultmesh"
    (vm / "vmsh" / "config").mkdir(parents=True)
    for name in ("namespaces.yaml", "anchors.yaml"):
        shutil.copyfile(fixtures_dir / name, vm / "vmsh" / "config" / name)
    # anchors.yaml names the TSA's trust bundle; check-config opens it (a checkout has it)
    (vm / "services/anchors/certs").mkdir(parents=True)
    (vm / "services/anchors/certs/tsa-bundle.pem").write_bytes(make_root().pem)
    return vm


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in (*ENV_VARS, *VAULTMESH_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield
    sources.configure({})


class Engine:
    """The layout's jobs, as configured, run by the real engine on a fake clock against
    the embedded TSA (the real targets are remote; the batch folders are what is tested)."""

    def __init__(self, tmp: Path, vm: Path) -> None:
        loaded = load_config(env={"VMSH_ROOT": str(vm), **VAULTMESH_ENV}, cwd=tmp)
        self.config = loaded.config
        sources.configure(self.config.batch_limits())  # what core.runtime does
        self.clock = FakeClock()
        self.events: list = []
        bus = EventBus()
        bus.subscribe(self.events.append)
        data = tmp / "data"
        backend = LocalTSA(data, "dev", self.clock)
        self.jobs = [dataclasses.replace(j, target="local:dev") for j in self.config.jobs()]
        self.scheduler = Scheduler(
            jobs=self.jobs,
            clock=self.clock,
            bus=bus,
            backend_for=lambda target: backend,
            state_store=StateStore(data / "state" / "scheduler.json"),
            journal=IntentJournal(data / "journal"),
            receipts=ReceiptStore(data / "receipts"),
            policy=BackoffPolicy(base=5.0, max_level=7, jitter=0.0, rng=random.Random(1)),
        )

    async def run(self) -> dict[str, str]:
        """One pass; the root each job's new receipt anchored ("namespace/cadence" -> root)."""
        start = len(self.events)
        await self.scheduler.run_once()
        await self.scheduler.settle()
        self.scheduler.flush()
        new = self.events[start:]
        failed = [f"{e.job}: {e.message}" for e in new if isinstance(e, AnchorFailed)]
        assert not failed, failed
        return {
            str(e.job): load_receipt(Path(e.path)).batch.root
            for e in new
            if isinstance(e, ReceiptWritten)
        }


async def test_flat_out_batches_anchors_every_namespace_without_a_source(tmp_path, checkout):
    shared = checkout / "out" / "batches"
    write_batch(shared, "000009", root(9))
    write_batch(shared, "000010", root(10))  # the newest, in natural order (9 < 10)
    e = Engine(tmp_path, checkout)
    anchored = await e.run()
    assert anchored == {str(j.key): root(10) for j in e.jobs}
    assert {j.namespace for j in e.jobs} == set(NAMESPACES)
    assert len(anchored) == 6  # three cadences of each namespace


async def test_a_folder_named_as_the_namespace_is_used_and_a_later_one_from_the_next_read(
    tmp_path, checkout
):
    shared = checkout / "out" / "batches"
    write_batch(shared, "000001", root(1))
    write_batch(shared / "dao:vaultmesh", "000001", root(2))  # literally named, as a user would
    e = Engine(tmp_path, checkout)
    anchored = await e.run()
    assert {k: v for k, v in anchored.items() if k.startswith("dao:")} == {
        "dao:vaultmesh/fast": root(2), "dao:vaultmesh/strong": root(2), "dao:vaultmesh/cold": root(2)
    }
    assert anchored["fin:clearing/fast"] == root(1)  # no folder of its own: the shared one

    # fin:clearing's own folder appears while running: its next read uses it
    write_batch(shared / "fin:clearing", "000001", root(3))
    write_batch(shared, "000002", root(4))
    e.clock.advance(120)  # fin:clearing/fast is due again (every 120s)
    anchored = await e.run()
    assert anchored["fin:clearing/fast"] == root(3)
    assert all(v != root(4) for v in anchored.values())


def test_without_vmsh_root_the_shared_folder_is_data_dir_batches(tmp_path):
    (tmp_path / "config.yaml").write_text(
        'scheduler: {data_dir: data}\nnamespaces:\n  "ops:metrics":\n'
        '    cadence: {fast: {target: "local:dev", every: "10s"}}\n'
    )
    cfg = load_config(tmp_path / "config.yaml", env={}, cwd=tmp_path).config
    sources.configure(cfg.batch_limits())
    source = cfg.jobs()[0].source
    assert source == tmp_path / "data" / "batches" / "ops:metrics"
    write_batch(tmp_path / "data" / "batches", "000001", root(1))
    assert sources.latest_batch(source).root == root(1)
    write_batch(source, "000001", root(2))  # created after the first read
    assert sources.latest_batch(source).root == root(2)


def test_the_percent_encoded_folder_of_earlier_versions_is_still_read(tmp_path, checkout):
    shared = checkout / "out" / "batches"
    write_batch(shared, "000001", root(1))
    write_batch(shared / "dao%3Avaultmesh", "000001", root(2))
    cfg = load_config(env={"VMSH_ROOT": str(checkout), **VAULTMESH_ENV}, cwd=tmp_path).config
    sources.configure(cfg.batch_limits())
    assert sources.latest_batch(cfg.batches_dir("dao:vaultmesh")).root == root(2)
    assert sources.latest_batch(cfg.batches_dir("fin:clearing")).root == root(1)


def test_no_folder_at_all_names_both_places(tmp_path, checkout):
    cfg = load_config(env={"VMSH_ROOT": str(checkout), **VAULTMESH_ENV}, cwd=tmp_path).config
    sources.configure(cfg.batch_limits())
    with pytest.raises(sources.SourceError) as info:
        sources.latest_batch(cfg.batches_dir("fin:clearing"))
    shared = checkout / "out" / "batches"
    assert str(info.value) == (
        f"batch folder {shared / 'fin:clearing'} does not exist, nor {shared}"
    )


def check_config(monkeypatch, capsys, vm: Path) -> dict[str, str]:
    """check-config's summary: each namespace's `batches:` line."""
    monkeypatch.setenv("VMSH_ROOT", str(vm))
    for name, value in VAULTMESH_ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {
        lines[i - 1].split()[0]: line.split("batches: ", 1)[1]
        for i, line in enumerate(lines)
        if line.startswith("    batches: ")
    }


def test_check_config_names_each_namespace_folder_and_says_missing_or_empty(
    monkeypatch, capsys, checkout
):
    shared = checkout / "out" / "batches"
    dao, fin = shared / "dao:vaultmesh", shared / "fin:clearing"
    assert check_config(monkeypatch, capsys, checkout) == {
        "dao:vaultmesh": f"MISSING: no folder {dao}, nor {shared} "
        "(each pass looks again)",
        "fin:clearing": f"MISSING: no folder {fin}, nor {shared} "
        "(each pass looks again)",
    }
    shared.mkdir(parents=True)
    assert check_config(monkeypatch, capsys, checkout) == {
        "dao:vaultmesh": f"{shared} (shared: no folder {dao})  EMPTY: no batch files (*.json) yet",
        "fin:clearing": f"{shared} (shared: no folder {fin})  EMPTY: no batch files (*.json) yet",
    }
    write_batch(shared, "000001", root(1))
    dao.mkdir()
    assert check_config(monkeypatch, capsys, checkout) == {
        "dao:vaultmesh": f"{dao}  EMPTY: no batch files (*.json) yet",
        "fin:clearing": f"{shared} (shared: no folder {fin})",
    }
    write_batch(dao, "000001", root(2))
    assert check_config(monkeypatch, capsys, checkout)["dao:vaultmesh"] == str(dao)


# --- witnesses: VaultMesh's gateway admission policy, shown as such, never enforced here ------


def test_check_config_and_the_detail_view_say_witnesses_are_not_enforced_by_the_scheduler(
    monkeypatch, capsys, checkout
):
    monkeypatch.setenv("VMSH_ROOT", str(checkout))
    for name, value in VAULTMESH_ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    said = "VaultMesh's admission policy for its event gateway, not for anchoring: the scheduler does not enforce it"
    dao = lines.index("  dao:vaultmesh  VaultMesh DAO canonical ledger")
    assert f"    witnesses: 2 of 3 ({said})" in lines[dao:dao + 4]
    # The dashboard's namespace detail (what Enter opens) says the same under its heading.
    from tui.detail import namespace_detail

    cfg = load_config(env={"VMSH_ROOT": str(checkout), **VAULTMESH_ENV}, cwd=checkout).config
    text = namespace_detail("dao:vaultmesh", cfg.namespaces["dao:vaultmesh"], [], [], [], now=0.0, max_level=7).plain
    witnesses = text.split("Witnesses\n", 1)[1]
    assert witnesses.startswith(f"  {said}\n  min required: 2\n")
