"""Snapshots at 80x24 and 160x48: a FakeClock, fixed batches, a seeded backoff jitter,
the engine worker off and data fed through real anchoring before the screenshot.
Paths are shown relative to the data dir, so nothing depends on the tmp folder."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from .conftest import World

# The config hash in the header covers the resolved data dir and batch folders, so the
# world lives at one fixed path rather than a per-run tmp_path.
FIXED = Path(tempfile.gettempdir()) / "vmsh-snapshot-world"


@pytest.fixture
def world_dir():
    shutil.rmtree(FIXED, ignore_errors=True)
    FIXED.mkdir(parents=True)
    yield FIXED
    shutil.rmtree(FIXED, ignore_errors=True)


def prepared(world_dir):
    world = World(world_dir, no_batches=("ops:metrics",))

    async def run_before(pilot) -> None:
        app = pilot.app
        await world.runtime.engine.run_once()  # first anchors; ops:metrics has no batches
        world.clock.advance(42)
        await world.runtime.engine.run_once()  # ops:metrics retries and backs off again
        app.flush_now()
        await pilot.pause()

    return world, run_before


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_dashboard(snap_compare, world_dir, size) -> None:
    world, run_before = prepared(world_dir)
    assert snap_compare(world.app(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("pane", ["2", "3", "4"], ids=["backoff", "receipts", "logs"])
def test_tabs_at_80x24(snap_compare, world_dir, pane) -> None:
    world, run_before = prepared(world_dir)
    assert snap_compare(world.app(), terminal_size=(80, 24), run_before=run_before, press=[pane])


def test_ansi_theme_readonly_paused(snap_compare, world_dir) -> None:
    world, run_before = prepared(world_dir)

    async def before(pilot) -> None:
        world.runtime.engine.pause()
        await run_before(pilot)

    app = world.app(readonly=True, theme="vaultmesh-ansi")
    assert snap_compare(app, terminal_size=(80, 24), run_before=before)


def test_help_screen(snap_compare, world_dir) -> None:
    world, run_before = prepared(world_dir)
    assert snap_compare(world.app(), terminal_size=(80, 24), run_before=run_before, press=["question_mark"])
