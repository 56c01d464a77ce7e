"""`make run`'s demo (core/demo.py): seeded batches, then a writer that keeps writing new
roots for demo:live and demo:flaky, whose newest batch is broken now and then (its job
fails) and then good again (it recovers). Real files, read by the real batch reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import sources
from core.config import load_config
from core.demo import BROKEN_STEPS, CYCLE, FLAKY, KEEP, LIVE, broken, demo_root, live_step, seed

REPO = Path(__file__).resolve().parents[2]


def test_the_example_config_has_the_live_namespaces_reading_the_data_dir(tmp_path):
    cfg = load_config(REPO / "config.example.yaml", overrides={"data_dir": tmp_path / "data"}, env={}).config
    for name in (LIVE, FLAKY):
        assert cfg.batches_dir(name) == tmp_path / "data" / "batches" / name


def test_the_writer_goes_on_from_the_seeds_and_flaky_fails_then_recovers(tmp_path):
    folders = {LIVE: tmp_path / LIVE, FLAKY: tmp_path / FLAKY}
    assert seed({name: (folder, ()) for name, folder in folders.items()}) == 6
    sources.clear_cache()
    failing: list[int] = []
    for step in range(1, 2 * CYCLE + 1):
        assert live_step(folders, step) == [f"{LIVE}: {3 + step:06d}.json", f"{FLAKY}: {3 + step:06d}.json"]
        sources.clear_cache()
        assert sources.latest_batch(folders[LIVE]).root == demo_root(LIVE, 3 + step)
        if broken(step):
            with pytest.raises(sources.SourceError, match='missing "root"'):
                sources.latest_batch(folders[FLAKY])
            failing.append(step)
        else:
            assert sources.latest_batch(folders[FLAKY]).root == demo_root(FLAKY, 3 + step)
    assert len(failing) == 2 * BROKEN_STEPS  # twice in two cycles, each run followed by a good batch
    assert not broken(failing[BROKEN_STEPS - 1] + 1) and not broken(failing[-1] + 1)


def test_a_demo_left_running_keeps_only_the_newest_batches(tmp_path):
    folders = {LIVE: tmp_path / LIVE}
    for step in range(1, KEEP + 11):
        live_step(folders, step)
    names = sorted(p.name for p in folders[LIVE].glob("*.json"))
    assert len(names) == KEEP and names[-1] == f"{KEEP + 10:06d}.json"
