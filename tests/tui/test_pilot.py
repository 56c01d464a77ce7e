"""Pilot tests: press the keys an operator presses, check what the operator then sees.

Real anchoring through the embedded local TSA; time moves only with the FakeClock, and
the engine is driven with run_once() (or runs in its worker where the test says so).
"""

from __future__ import annotations

import re
import sys

from core.events import LogRecord
from tui.screens import ConfirmScreen, MessageScreen
from tui.widgets import DiffTable

from .conftest import NAMESPACES, World, actions_done, screen_text

ALL_JOBS = ["dao:vaultmesh/fast", "dao:vaultmesh/strong", "fin:clearing/fast", "ops:metrics/fast"]


def flat(text: str) -> str:
    """Screen text with line breaks, toast edges and runs of spaces made single spaces, so
    a notification wrapped over lines reads as one sentence."""
    return re.sub(r"[\s▌▐]+", " ", text)


async def settle(app, pilot) -> None:
    await app.host.runtime.engine.settle()
    app.flush_now()
    await pilot.pause()


def select(table: DiffTable, key: str) -> None:
    table.move_cursor(row=table.get_row_index(key), animate=False)


async def first_anchors(world: World, app, pilot) -> int:
    """Every job anchors once at start; then 10 s pass, in which nothing is due."""
    await world.runtime.engine.run_once()
    await settle(app, pilot)
    world.clock.advance(10)
    return world.receipt_count()


async def test_f_confirmed_writes_a_receipt_shown_in_the_receipts_pane(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        assert app.dashboard.body("jobs").shown_keys == ALL_JOBS
        assert app.dashboard.body("receipts").shown_keys == []
        before = await first_anchors(world, app, pilot)
        select(app.dashboard.body("jobs"), "fin:clearing/fast")
        await pilot.press("f")
        assert isinstance(app.screen, ConfirmScreen)
        assert "Force-anchor fin:clearing/fast now?" in screen_text(app)
        await pilot.press("y")
        await world.runtime.engine.run_once()
        await settle(app, pilot)
        assert world.receipt_count() == before + 1
        await pilot.press("3")  # the Receipts tab at 80x24
        newest = app.dashboard.body("receipts").shown_keys[0]
        assert "fin%3Aclearing" in newest and "T000010000Z" in newest
        first_row = screen_text(app).splitlines()[5]
        assert "00:00:10" in first_row and "fin:clearing" in first_row and "confirmed" in first_row


async def test_receipts_pane_at_the_top_follows_new_receipts_and_keeps_a_selection(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await first_anchors(world, app, pilot)
        await pilot.press("3")  # the Receipts tab: the cursor on the newest receipt, at the top
        await pilot.press("1")  # back to Namespaces while anchors happen
        world.clock.advance(50)  # 00:01:00: dao:vaultmesh/fast and ops:metrics/fast are due
        await world.runtime.engine.run_once()
        await settle(app, pilot)
        await pilot.press("3")
        rows = screen_text(app).splitlines()
        assert "00:01:00" in rows[5], rows[4:8]  # the new receipts show, not the old top row
        assert app.dashboard.body("receipts").cursor_row == 0

        # An operator who selected an older receipt keeps it while new ones arrive.
        select(app.dashboard.body("receipts"), app.dashboard.body("receipts").shown_keys[3])
        chosen = app.dashboard.body("receipts").selected_key
        world.clock.advance(60)
        await world.runtime.engine.run_once()
        await settle(app, pilot)
        assert "T000200000Z" in app.dashboard.body("receipts").shown_keys[0]
        assert app.dashboard.body("receipts").selected_key == chosen


async def test_a_library_printing_to_stdout_does_not_break_the_dashboard(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24)) as pilot:
        print("a warning some library prints", flush=True)  # Textual captures and flushes it
        print("and one on stderr", file=sys.stderr, flush=True)
        await first_anchors(world, app, pilot)
        assert app.is_running
        assert len(app.dashboard.body("receipts").shown_keys) == len(ALL_JOBS)


async def test_f_cancelled_anchors_nothing(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        before = await first_anchors(world, app, pilot)
        await pilot.press("f", "n")
        assert not isinstance(app.screen, ConfirmScreen)
        await world.runtime.engine.run_once()
        await settle(app, pilot)
        assert world.receipt_count() == before


async def test_F_forces_every_cadence_of_the_namespace(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        before = await first_anchors(world, app, pilot)
        select(app.dashboard.body("jobs"), "dao:vaultmesh/fast")
        await pilot.press("F")
        assert "Force-anchor all of dao:vaultmesh now?" in screen_text(app)
        await pilot.press("y")
        await world.runtime.engine.run_once()
        await settle(app, pilot)
        assert world.receipt_count() == before + 2


async def test_R_after_an_edit_adds_the_new_namespace_rows(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        world.write_config({**NAMESPACES, "new:space": {"fast": "45s", "cold": "1d"}})
        await pilot.press("R")
        await actions_done(app)
        app.flush_now()
        await pilot.pause()
        assert app.dashboard.body("jobs").shown_keys == ALL_JOBS[:3] + ["new:space/fast", "new:space/cold", ALL_JOBS[3]]
        text = screen_text(app)
        assert "config applied" in text and "added 2: new:space/fast, new:space/cold" in flat(text)
        assert world.runtime.loaded.hash[:8] in text  # the header shows the new hash


async def test_R_after_a_broken_edit_shows_the_error_and_keeps_the_old_rows(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        old_hash = world.runtime.loaded.hash
        broken = {**NAMESPACES, "new:space": {"fast": "0s"}}
        world.write_config(broken)
        await pilot.press("R")
        await actions_done(app)
        app.flush_now()
        await pilot.pause()
        assert isinstance(app.screen, MessageScreen)
        text = screen_text(app)
        assert "Config reload rejected" in text
        assert "config.yaml:" in text and "zero" in text  # file:line and the reason
        await pilot.press("escape")
        assert app.dashboard.body("jobs").shown_keys == ALL_JOBS
        assert world.runtime.loaded.hash == old_hash
        assert old_hash[:8] in screen_text(app)


async def test_space_stops_new_anchors_until_resumed(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await world.runtime.engine.run_once()
        await settle(app, pilot)
        anchored = world.receipt_count()
        await pilot.press("space")
        app.flush_now()
        await pilot.pause()
        assert world.runtime.engine.paused
        assert "PAUSED" in screen_text(app)
        world.clock.advance(3600)  # every job is long overdue
        await world.runtime.engine.run_once()
        await settle(app, pilot)
        assert world.receipt_count() == anchored
        assert "paused" in screen_text(app)
        await pilot.press("space")
        await world.runtime.engine.run_once()
        await settle(app, pilot)
        assert world.receipt_count() == anchored + len(ALL_JOBS)
        assert "PAUSED" not in screen_text(app)


async def test_slash_filters_rows_and_esc_clears(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("slash", "f", "i", "n")
        assert app.dashboard.body("jobs").shown_keys == ["fin:clearing/fast"]
        await pilot.press("enter")
        assert app.dashboard.body("jobs").shown_keys == ["fin:clearing/fast"]  # the filter stays
        assert "/fin" in screen_text(app)  # and says so
        await pilot.press("escape")
        assert app.dashboard.body("jobs").shown_keys == ALL_JOBS


async def test_q_with_nothing_in_flight_exits(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0
    assert app.host.stopped_cleanly
    assert (world.tmp / "data" / "state" / "scheduler.json").exists()  # state flushed


async def test_engine_worker_anchors_then_q_exits_cleanly(world: World) -> None:
    app = world.app(start_engine=True)
    async with app.run_test(size=(160, 48), notifications=True) as pilot:
        for _ in range(200):  # first anchors of every job, on the fake clock's "now"
            await pilot.pause()
            if world.receipt_count() == len(ALL_JOBS) and not world.runtime.engine.in_flight():
                break
        app.flush_now()
        await pilot.pause()
        assert len(app.dashboard.body("receipts").shown_keys) == len(ALL_JOBS)
        assert app.host.engine_state == "running"
        assert "healthy" in screen_text(app)
        await pilot.press("q")
        await pilot.pause()
    assert app.host.stopped_cleanly and app.host.engine_state == "stopped"


class LosableTerminal:
    """Stands in for tui.terminal.TerminalGuard: its loss is reported from another thread,
    as the real guard's poll thread does."""

    def __init__(self) -> None:
        self.on_lost = None

    def watch(self, on_lost) -> None:
        self.on_lost = on_lost

    def lose(self, reason: str) -> None:
        import threading

        thread = threading.Thread(target=self.on_lost, args=(reason,))
        thread.start()
        thread.join()


async def test_terminal_lost_from_another_thread_stops_with_exit_0(world: World, monkeypatch) -> None:
    """The stop runs in the app's context although a thread asked for it: the timers it starts
    (the 'stopping' log line's render) used to fail at shutdown, and the process exited 1."""
    monkeypatch.setattr("tui.dashboard.FLUSH_DELAY", 0.001)  # renders due before the stop ends
    app = world.app(start_engine=True)
    app.host.terminal = LosableTerminal()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        for _ in range(200):
            await pilot.pause()
            if world.receipt_count() == len(ALL_JOBS) and not world.runtime.engine.in_flight():
                break
        app.flush_now()  # nothing pending: the stop's own log line arms the next render
        await pilot.pause()
        app.host.terminal.lose("terminal hung up (stdin)")
        for _ in range(200):
            await pilot.pause(0.02)
            if app._exit:
                break
    assert app.return_code == 0
    assert app.host.stopped_cleanly
    assert app.host.exit_reason == "terminal hung up (stdin)"


async def test_v_verifies_the_selected_receipt(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await world.runtime.engine.run_once()
        await settle(app, pilot)
        await pilot.press("3", "v")
        await actions_done(app)
        await pilot.pause()
        await pilot.pause()
        key = app.dashboard.body("receipts").selected_key
        assert app.dashboard.body("receipts").all_rows[key][-1].text == "OK"
        assert "verify OK" in screen_text(app)


async def test_enter_opens_the_namespace_detail_and_esc_returns(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await world.runtime.engine.run_once()
        await settle(app, pilot)
        from tui.screens import DetailScreen

        assert "Namespace dao:vaultmesh" not in screen_text(app)
        await pilot.press("enter")
        text = screen_text(app)
        assert isinstance(app.screen, DetailScreen) and "Namespace dao:vaultmesh" in text
        assert "did:vm:arbiter:test" in text and "allow ledger.append@1.0.x" in text
        await pilot.press("escape")
        await pilot.pause()
        text = screen_text(app)  # the dashboard again, not the detail behind a stale body
        assert not isinstance(app.screen, DetailScreen) and "Namespace dao:vaultmesh" not in text
        assert all(key.split("/")[0] in text for key in ALL_JOBS)
        assert app.dashboard.body("jobs").shown_keys == ALL_JOBS


async def test_readonly_disables_force_reload_pause(world: World) -> None:
    app = world.app(readonly=True)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        assert "READONLY" in screen_text(app)
        world.write_config({**NAMESPACES, "new:one": {"fast": "60s"}})  # what R would apply
        for key, action in (("f", "force"), ("R", "reload"), ("space", "pause")):
            await pilot.press(key)
            await actions_done(app)  # a reload, had one started
            await pilot.pause()
            assert f"read-only: {action} is disabled" in flat(screen_text(app))
        assert not isinstance(app.screen, ConfirmScreen | MessageScreen)
        assert not world.runtime.engine.paused
        assert sorted(str(key) for key in world.runtime.engine.jobs) == ALL_JOBS  # not reloaded


async def test_backing_off_job_shows_in_backoff_pane_and_degrades_health(tmp_path) -> None:
    world = World(tmp_path, no_batches=("ops:metrics",))
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await world.runtime.engine.run_once()
        await settle(app, pilot)
        assert app.dashboard.body("backoff").shown_keys == ["ops:metrics/fast"]
        await pilot.press("2")
        text = screen_text(app)
        assert "degraded" in text and "1/7" in text and "validation" in text
        assert str(tmp_path) not in text  # paths shown relative to the data dir


async def test_log_burst_is_bounded(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        for n in range(10_000):
            world.runtime.bus.publish(LogRecord(at=world.clock.now(), level="INFO", msg=f"line {n}"))
        app.flush_now()
        await pilot.press("4")
        assert len(app.dashboard.body("logs").records) == 5000
        assert app.dashboard.body("logs").line_count <= 5000
        assert "line 9999" in screen_text(app)
        await pilot.press("slash", "9", "9", "9", "8", "enter")
        assert app.dashboard.body("logs").line_count == 1


async def test_keys_remapped_in_config(tmp_path) -> None:
    world = World(tmp_path, extra="tui:\n  keys: {force: x}\n")
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)


async def test_bad_theme_file_is_a_message_not_a_crash(tmp_path) -> None:
    (tmp_path / "bad.toml").write_text('name = "mine"\nprimary = "not-a-colour"\n')
    world = World(tmp_path, extra="tui:\n  theme_file: bad.toml\n")
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.pause()
        await pilot.pause()
        text = screen_text(app)
        assert "tui.theme_file" in text and "primary = 'not-a-colour' is not a" in text
        assert app.theme == "vaultmesh-dark"


async def test_t_cycles_themes_and_help_lists_keys(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("t")
        assert app.theme == "vaultmesh-light"
        await pilot.press("t")
        assert app.theme == "vaultmesh-ansi"
        await pilot.press("question_mark")
        text = screen_text(app)
        assert "force-anchor the selected job" in text
        await pilot.press("escape")
