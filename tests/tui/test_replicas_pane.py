"""The Replicas pane (issue 17): the cluster's registry as an operator sees it at 80x24.

A real Runtime on a FakeClock with the embedded TSA; its `cluster` attribute is set to
`StandInCluster`, a small object implementing exactly the seam core/cluster.py gives the
runtime (`kind`, `replicas()`, `store_problem`), so these tests need no database. The
real PostgreSQL cluster behind that seam is exercised by tests/cluster/.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from core.replicas import ReplicaInfo
from tui.screens import MessageScreen

from .conftest import World, screen_text

A_HASH = "a1" * 32
B_HASH = "b2" * 32


class StandInCluster:
    """The seam, nothing more: what the store kind is, the registry's rows as of the last
    heartbeat (one of them `this`), and why the store does not answer (None when it does)."""

    kind = "postgresql"

    def __init__(self, rows: list[ReplicaInfo], store_problem: str | None = None) -> None:
        self.rows = rows
        self.store_problem = store_problem

    def replicas(self) -> list[ReplicaInfo]:
        return list(self.rows)


def replica(host: str, pid: int, *, beat: float, config_hash: str = A_HASH, alive: bool = True,
            this: bool = False, in_flight: int = 0) -> ReplicaInfo:
    return ReplicaInfo(
        id=f"{host}-{pid}-x1y2", host=host, pid=pid, version="0.17.0", config_hash=config_hash,
        in_flight=in_flight, heartbeat_at=beat, started_at=beat - 3600, alive=alive, this=this,
    )


def three_replicas(now: float, *, b_hash: str = A_HASH) -> list[ReplicaInfo]:
    return [
        replica("vm-a", 4242, beat=now - 3, this=True, in_flight=2),
        replica("vm-b", 5151, beat=now - 7, config_hash=b_hash),
        replica("vm-c", 6060, beat=now - 95, alive=False),
    ]


def line_with(text: str, needle: str) -> str:
    lines = [line for line in text.splitlines() if needle in line]
    assert lines, f"{needle!r} not on screen:\n{text}"
    return lines[0]


async def show_replicas(app, pilot) -> str:
    await pilot.press("5")  # the Replicas tab at 80x24
    app.dashboard.refresh_views()
    await pilot.pause()
    return screen_text(app)


async def test_one_row_per_replica_with_heartbeat_age_and_state(world: World) -> None:
    now = world.clock.now()
    world.runtime.cluster = StandInCluster(three_replicas(now))
    app = world.app()
    async with app.run_test(size=(80, 24)) as pilot:
        text = await show_replicas(app, pilot)
        assert app.dashboard.body("replicas").shown_keys == ["vm-a-4242-x1y2", "vm-b-5151-x1y2", "vm-c-6060-x1y2"]
        this = line_with(text, "vm-a").split()
        assert this == ["vm-a", "4242", "0.17.0", A_HASH[:12], "2", "3s", "ago", "this"], this
        assert line_with(text, "vm-b").split()[-3:] == ["7s", "ago", "alive"]
        assert line_with(text, "vm-c").split()[-3:] == ["1m35s", "ago", "lost"]
        assert "Replicas (2)" in text  # the tab counts the live ones
        assert "CONFIGS DIFFER" not in text and "STORE DOWN" not in text
        # Ages move with the clock the snapshot is taken on.
        world.clock.advance(60)
        app.dashboard.refresh_views()
        await pilot.pause()
        assert line_with(screen_text(app), "vm-a").split()[-3:] == ["1m3s", "ago", "this"]


async def test_file_store_says_it_runs_alone(world: World) -> None:
    assert getattr(world.runtime, "cluster", None) is None
    app = world.app()
    async with app.run_test(size=(80, 24)) as pilot:
        text = await show_replicas(app, pilot)
        assert "file store: this scheduler runs alone (scheduler.store)" in text
        assert "Heartbeat" not in text and "STORE DOWN" not in text
        await pilot.press("enter")
        assert not isinstance(app.screen, MessageScreen)  # nothing to open: said in one line


async def test_different_config_hashes_warn_in_the_pane_and_the_header(world: World) -> None:
    now = world.clock.now()
    cluster = StandInCluster(three_replicas(now, b_hash=B_HASH))
    world.runtime.cluster = cluster
    app = world.app()
    async with app.run_test(size=(80, 24)) as pilot:
        text = await show_replicas(app, pilot)
        header = text.splitlines()[0]
        assert "CONFIGS DIFFER" in header
        assert "Replicas: replicas run different configs: a1a1a1a1a1a1 on vm-a" in text
        config = app.dashboard.body("replicas").all_rows["vm-b-5151-x1y2"][3]
        assert (config.text, config.role) == (B_HASH[:12], "warning")
        # The lost replica's different config does not count: only live ones are compared.
        cluster.rows = three_replicas(now)
        cluster.rows[2] = replica("vm-c", 6060, beat=now - 95, alive=False, config_hash=B_HASH)
        text = await show_replicas(app, pilot)
        assert "CONFIGS DIFFER" not in text and "different configs" not in text
        assert "5 Replicas" in text
        lost = app.dashboard.body("replicas").all_rows["vm-c-6060-x1y2"][3]
        assert (lost.text, lost.role) == (B_HASH[:12], "muted")


async def test_store_down_shows_in_the_header_and_title_without_credentials(world: World) -> None:
    now = world.clock.now()
    problem = "connection to postgresql://vmsh:hunter2@db.internal:5432/vmsh failed: refused"
    world.runtime.cluster = StandInCluster(three_replicas(now), store_problem=problem)
    app = world.app()
    async with app.run_test(size=(160, 48)) as pilot:
        app.dashboard.refresh_views()
        await pilot.pause()
        text = screen_text(app)
        assert "STORE DOWN" in text.splitlines()[0]
        # The header says why it is degraded, as /health does (the pane's title is cut at half width).
        assert "postgresql store unreachable: connection to postgresql://db.internal:5432 failed" in text.splitlines()[0]
        assert "hunter2" not in text and "vmsh:" not in text


async def test_enter_on_a_replica_shows_all_the_registry_says(world: World) -> None:
    now = world.clock.now()
    world.runtime.cluster = StandInCluster(three_replicas(now))
    app = world.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await show_replicas(app, pilot)
        await pilot.press("j", "enter")  # the second row: vm-b
        assert isinstance(app.screen, MessageScreen)
        text = screen_text(app)
        assert "Replica vm-b:5151" in text and B_HASH not in text and A_HASH in text
        assert "vm-b-5151-x1y2" in text and "7s ago" in text


# The header's config hash covers the resolved data dir, so the world lives at one fixed
# path (as in test_snapshots.py).
FIXED = Path(tempfile.gettempdir()) / "vmsh-replicas-snapshot-world"


def test_snapshot_replicas_with_different_configs_at_80x24(snap_compare) -> None:
    """The colours: the differing hash in the warning colour, the lost replica muted with
    its age in red, `this` in the accent colour; the title's warning cut at 80 columns."""
    shutil.rmtree(FIXED, ignore_errors=True)
    FIXED.mkdir(parents=True)
    try:
        world = World(FIXED)
        world.runtime.cluster = StandInCluster(three_replicas(world.clock.now(), b_hash=B_HASH))

        async def run_before(pilot) -> None:
            await world.runtime.engine.run_once()
            pilot.app.flush_now()
            await pilot.pause()

        assert snap_compare(world.app(), terminal_size=(80, 24), run_before=run_before, press=["5"])
    finally:
        shutil.rmtree(FIXED, ignore_errors=True)
