"""Issue 26: a view never shows a state it does not know, and the header says everything
at 80 columns. The attached cases run a real `vmsh-scheduler --no-ui` (tests/tui/test_attach.py's
Daemon); the in-process ones a real Runtime on a FakeClock (conftest.World)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.observe.health import health as http_health
from tui.app import VaultMeshApp

from .conftest import World, screen_text
from .test_attach import Daemon, attached_app, until


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def header(app: VaultMeshApp) -> str:
    return screen_text(app).splitlines()[0]


async def test_a_dashboard_that_lost_its_daemon_greys_its_tables_and_says_how_old_its_data_is(scheduler: Daemon) -> None:
    app = attached_app(scheduler)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(lambda: "● healthy" in header(app), what="the live header")
        assert not app.dashboard.has_class("stale")
        jobs = app.dashboard.query_one("#jobs")
        assert jobs.styles.text_opacity == 1.0
        scheduler.kill9()
        await until(lambda: "disconnected" in header(app), what="the header to say disconnected")
        await pilot.pause(1.2)
        app.refresh_views()
        await pilot.pause()
        line = header(app)
        assert "healthy" not in line, line
        assert "● unknown (data 1s old)" in line or "● unknown (data 2s old)" in line, line
        assert app.dashboard.has_class("stale")
        assert jobs.styles.text_opacity < 1.0  # the tables are greyed: old data
        scheduler.start()
        assert scheduler.proc is not None
        new_pid = scheduler.proc.pid
        await until(lambda: f"attached to pid {new_pid}" in header(app), what="the new daemon")
        await until(lambda: "● healthy" in header(app), what="healthy again once data is fresh")
        assert not app.dashboard.has_class("stale")


async def test_the_attached_header_at_80_columns_abbreviates_and_drops_nothing(scheduler: Daemon) -> None:
    assert scheduler.proc is not None
    app = attached_app(scheduler)
    async with app.run_test(size=(80, 24)):
        await until(lambda: "● healthy" in header(app), what="the live header")
        line = header(app)
        assert f"pid {scheduler.proc.pid}@" in line, line
        assert "bkoff 0" in line and "cfg " in line and "anch " in line, line
        assert not line.rstrip().endswith("…"), line
        scheduler.kill9()  # the longest header: unknown, its data's age, disconnected
        await until(lambda: "disconnected" in header(app), what="the header to say disconnected")
        line = header(app)
        assert "● unknown (" in line and " old)" in line and "bkoff 0" in line and "cfg " in line, line
        assert not line.rstrip().endswith("…"), line


async def test_header_and_health_agree_when_the_state_cannot_be_saved(world: World) -> None:
    """A real ENOTDIR: a file where the state folder should be. Every job anchors (no job is
    in a problem status), yet the scheduler cannot save its state: /health is degraded,
    and so is the header, for the same reason."""
    app = world.app()
    async with app.run_test(size=(160, 48)) as pilot:
        engine = world.runtime.engine
        await engine.run_once()
        await engine.settle()
        app.refresh_views()
        assert header(app).lstrip().startswith("● healthy")
        state = world.tmp / "data" / "state"
        shutil.rmtree(state)
        state.write_text("not a folder")
        world.clock.advance(60)
        await engine.run_once()
        await engine.settle()
        app.flush_now()
        await pilot.pause()
        body = http_health(engine, world.clock.now())[1]
        assert body["status"] == "degraded" and body.get("storage"), body
        assert header(app).lstrip().startswith("● degraded (file store unreachable: "), header(app)


async def test_the_footer_says_resume_while_paused(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        footer = screen_text(app).splitlines()[-1]
        assert "space Pause" in footer, footer
        await pilot.press("space")
        await pilot.pause()
        footer = screen_text(app).splitlines()[-1]
        assert "space Resume" in footer and "Pause" not in footer, footer
        await pilot.press("space")
        await pilot.pause()
        assert "space Pause" in screen_text(app).splitlines()[-1]


async def test_the_palette_lists_only_our_commands(world: World) -> None:
    from tui.actions import ACTIONS
    from tui.panes import PANES

    app = world.app()
    async with app.run_test(size=(160, 48)):
        titles = {command.title for command in app.get_system_commands(app.screen)}
        ours = {a.palette for a in ACTIONS if a.palette} | {f"Show {p.title}" for p in PANES}
        assert titles == ours, titles - ours


async def test_the_http_off_toast_is_small_esc_dismisses_it_and_R_tells_its_error_once(tmp_path: Path) -> None:
    import socket

    from tui.screens import MessageScreen

    from .test_pilot import flat

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        world = World(tmp_path, extra=f'http:\n  listen: "127.0.0.1:{port}"\n')
        app = world.app(start_engine=True)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            for _ in range(100):
                await pilot.pause()
                if app.host.services is not None:
                    break
            await pilot.pause()
            rows = [line for line in screen_text(app).splitlines() if "▌" in line]
            assert "/health off" in flat(screen_text(app))
            assert len(rows) <= 5, rows  # was 8 rows of 24, for a minute
            await pilot.press("escape")
            await pilot.pause()
            assert "/health off" not in flat(screen_text(app))
            assert "HTTP OFF" in header(app)  # the header keeps saying it
            # R on a broken config: its window, and no toast of the same errors under it,
            # neither from R nor from the file watcher seeing the same edit.
            world.config_path.write_text(world.config_path.read_text().replace("tick: 5.0", "tick: nope"))
            await pilot.press("R")
            for _ in range(40):
                await pilot.pause(0.05)
                if isinstance(app.screen, MessageScreen):
                    break
            assert isinstance(app.screen, MessageScreen)
            for _ in range(20):  # the watcher's event and the batched flush
                await pilot.pause(0.05)
            app.flush_now()
            await pilot.pause()
            assert flat(screen_text(app)).count("unable to parse string as a number") == 1, screen_text(app)
            await pilot.press("escape")
            await pilot.pause()
            assert "config edit rejected" not in flat(screen_text(app))
            await pilot.press("q")
            await pilot.pause()
    finally:
        taken.close()


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
async def test_the_backoff_pane_shows_the_whole_last_error_and_logs_use_the_width(world_dir_free, size) -> None:
    """The cause is at the end of a message that starts with where it happened: the
    Backoff pane shows the selected job's error whole; at 160x48 a log line is not cut at
    the half of the screen."""
    world = World(world_dir_free, no_batches=("ops:metrics",))
    app = world.app()
    async with app.run_test(size=size) as pilot:
        await world.runtime.engine.run_once()
        await world.runtime.engine.settle()
        app.flush_now()
        await pilot.press("2")
        await pilot.pause()
        from .test_pilot import flat

        text = flat(screen_text(app).replace("│", " "))  # the Backoff pane's lines, read on
        assert "ops:metrics/fast: batch folder batches has no batch files (*.json)" in text, text
        assert "there is no folder batches/ops:metrics" in text, text
        if size == (160, 48):
            widest = max(len(line.strip("│ ")) for line in screen_text(app).splitlines() if "anchored job=" in line)
            assert widest > 140, widest


@pytest.fixture
def world_dir_free(tmp_path: Path) -> Path:
    return tmp_path


async def test_c_copies_the_selected_receipt_path_and_root_by_osc52(world: World) -> None:
    import base64

    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        written: list[str] = []
        driver = app._driver
        assert driver is not None
        real_write = driver.write
        driver.write = lambda data: (written.append(data), real_write(data))[1]
        await world.runtime.engine.run_once()
        await world.runtime.engine.settle()
        app.flush_now()
        await pilot.press("3")  # Receipts: the newest selected
        path = app.dashboard.body("receipts").shown_keys[0]
        await pilot.press("c")
        assert app.clipboard == path
        osc = "\x1b]52;c;" + base64.b64encode(path.encode()).decode() + "\a"
        assert osc in written  # what the terminal (at the end of an ssh session) copies
        await pilot.press("c")  # again on the same row: its root
        assert app.clipboard.startswith("sha256:") and app.clipboard == app.dashboard.receipts_pane.infos[path].root
        await pilot.press("1")  # Namespaces: the selected job's last anchored root
        await pilot.press("c")
        view = next(v for v in app.control.snapshot().views if str(v.key) == "dao:vaultmesh/fast")
        assert app.clipboard == view.state.last_root and app.clipboard.startswith("sha256:")


async def test_w_writes_the_logs_pane_to_a_file_and_says_where(world: World, tmp_path: Path, monkeypatch) -> None:
    from .test_pilot import flat

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    app = world.app()
    async with app.run_test(size=(160, 48), notifications=True) as pilot:
        await world.runtime.engine.run_once()
        await world.runtime.engine.settle()
        app.flush_now()
        await pilot.press("w")
        await pilot.pause()
        saved = list(out.glob("vmsh-logs-*.txt"))
        assert [p.name for p in saved] == ["vmsh-logs-20260101T000000Z.txt"]
        lines = saved[0].read_text().splitlines()
        assert any("anchored job=dao:vaultmesh/fast" in line and "receipt=receipts/" in line for line in lines)
        toast = flat(screen_text(app))
        assert "logs saved:" in toast and "vmsh-logs-20260101T000000Z.txt" in toast.replace(" ", ""), toast


async def test_the_selected_targets_failures_and_latency_show_as_sparklines_over_five_minutes(world_dir_free) -> None:
    world = World(world_dir_free, no_batches=("ops:metrics",))
    app = world.app()
    async with app.run_test(size=(80, 24)) as pilot:
        engine = world.runtime.engine
        await engine.run_once()  # ops:metrics has no batch: its anchor fails on local:dev
        world.clock.advance(42)
        await engine.run_once()
        await engine.settle()
        app.flush_now()
        await pilot.pause()
        strip = app.dashboard.query_one("#trends")
        text = screen_text(app)
        assert "local:dev latency 5m" in text and "2 in 5m" in text, text
        assert "█" in [line for line in text.splitlines() if "failures" in line][0]
        world.clock.advance(301)  # out of the window: nothing old is kept or shown
        app.refresh_views()
        await pilot.pause()
        assert "0 in 5m" in screen_text(app)
        assert strip.display


def test_trends_stay_bounded_whatever_comes() -> None:
    from core.events import AnchorFailed, AnchorSucceeded
    from core.jobs import JobKey
    from tui.trends import BUCKETS, MAX_TARGETS, Trends

    trends = Trends()
    job = JobKey("a", "fast")
    for n in range(20_000):
        target = f"rfc3161:t{n % (MAX_TARGETS + 50)}"
        event: AnchorFailed | AnchorSucceeded
        if n % 3:
            event = AnchorFailed(at=n * 0.5, job=job, target=target, kind="network", message="x", duration=0.3)
        else:
            event = AnchorSucceeded(at=n * 0.5, job=job, target=target, root="r", duration=0.2 + n % 7, status="confirmed")
        trends.take([event])
    assert len(trends.targets()) == MAX_TARGETS
    shown = [trends.series(target, 10_000.0) for target in trends.targets()]
    assert all(len(latency) == len(failures) == BUCKETS for latency, failures, _ in shown)
    assert any(max(latency) > 1 and last is not None for latency, _, last in shown)
    assert any(sum(failures) > 0 for _, failures, _ in shown)


async def test_a_clusters_header_and_health_agree_on_its_clock_and_its_store(world: World) -> None:
    """Cluster mode (the registry's seam, tests/tui/test_replicas_pane.py): this replica's
    clock off the database's, then the store down. /health said degraded while the header
    said healthy; both now read core.status.overall with core.control.side_problems."""
    import dataclasses

    from .test_replicas_pane import StandInCluster, three_replicas

    now = world.clock.now()
    problem = "clock 3.1 s ahead of the database's (at most 2 s)"
    rows = three_replicas(now)
    rows[0] = dataclasses.replace(rows[0], refusal=problem)  # this replica's row
    cluster = StandInCluster(rows)
    cluster.clock_problem = problem  # type: ignore[attr-defined]
    world.runtime.cluster = cluster
    app = world.app()
    async with app.run_test(size=(160, 48)) as pilot:
        app.refresh_views()
        await pilot.pause()
        engine = world.runtime.engine
        assert http_health(engine, world.clock.now(), cluster)[1]["status"] == "degraded"
        assert header(app).lstrip().startswith(f"● degraded (claims nothing: {problem})"), header(app)
        cluster.store_problem = "connection to postgresql://db.internal:5432 failed: refused"
        app.refresh_views()
        await pilot.pause()
        assert http_health(engine, world.clock.now(), cluster)[1]["status"] == "degraded"
        assert header(app).lstrip().startswith("● degraded (postgresql store unreachable: connection to"), header(app)
