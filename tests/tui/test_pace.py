"""A job table too big to rebuild every second (100,000 jobs: a full refresh costs about
a second of CPU) still counts down every second, and its full refreshes are spaced so
that the dashboard answers keys (tui/pace.py)."""

from __future__ import annotations

import time

from tui.pace import LOOP_SHARE, SLOW_REFRESH, RefreshPace

from .conftest import World, screen_text
from .test_pilot import first_anchors

JOB = "ops:metrics/fast"  # every 30 s; anchored at 00:00:00


def cell_texts(app) -> list[str]:
    return [cell.text for cell in app.dashboard.body("jobs").all_rows[JOB]]


def countdown_timer(app):
    return next(t for t in app.dashboard._timers if t.name == "countdown")


def test_refreshes_are_spaced_only_once_they_are_slow() -> None:
    pace = RefreshPace()
    assert pace.wait(100.0) == 0.0  # none yet
    pace.ran(100.0, SLOW_REFRESH / 2)
    assert pace.wait(100.0) == 0.0  # cheap (up to ~10,000 jobs): every one runs when asked
    pace.ran(100.0, 1.0)
    assert pace.wait(101.0) == 1.0 / LOOP_SHARE - 1.0  # the next after 10 s: 10 % of the time
    assert pace.wait(100.0 + 1.0 / LOOP_SHARE) == 0.0


async def test_between_spaced_refreshes_the_rows_still_count_down_each_second(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(160, 48)) as pilot:
        countdown_timer(app).pause()  # ticked by hand below
        await first_anchors(world, app, pilot)  # anchored 10 s ago; next in 20 s
        app.refresh_views()
        await pilot.pause()
        assert "10s" in cell_texts(app) and "20s" in cell_texts(app)
        row = app.dashboard.body("jobs").all_rows[JOB]
        dashboard = app.dashboard
        dashboard.refresher.pace.ran(time.monotonic(), 1000.0)  # as if a full refresh cost 1,000 s
        world.clock.advance(5)
        dashboard.refresher.countdown()  # the 1 s tick: no full refresh allowed ...
        await pilot.pause()
        assert cell_texts(app)[4:6] == ["15s", "15s"]  # ... but Last and Next moved on screen
        assert "15s" in screen_text(app)
        assert app.dashboard.body("jobs").all_rows[JOB] is row  # the row itself was not rebuilt
        world.clock.advance(20)  # now due: only a full refresh can say so
        dashboard.refresher.countdown()
        await pilot.pause()
        assert cell_texts(app)[-1] != "due"
        dashboard.refresher.pace.ran(time.monotonic() - 1e6, 1000.0)  # its pause is over
        dashboard.refresher.countdown()
        await pilot.pause()
        assert cell_texts(app)[-1] == "due" and cell_texts(app)[4:6] == ["35s", "now"]


async def test_events_while_refreshes_are_spaced_are_shown_by_one_later_refresh(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(160, 48)) as pilot:
        countdown_timer(app).pause()
        app.dashboard.refresher.pace.ran(time.monotonic(), 1.0)  # a refresh costs 1 s: one in 10 s
        await world.runtime.engine.run_once()  # every job anchors: events
        app.flush_now()
        await pilot.pause()
        assert cell_texts(app)[4] == "never"  # not yet: the refresh is spaced ...
        timers = [t for t in app.dashboard._timers if t.name == "paced refresh"]
        assert len(timers) == 1  # ... armed once however many batches arrive
        app.flush_now()
        assert len([t for t in app.dashboard._timers if t.name == "paced refresh"]) == 1
        app.dashboard.refresher.armed()  # what that timer runs, 10 s on
        await pilot.pause()
        assert cell_texts(app)[4] == "0s"


async def test_a_filter_on_a_large_table_waits_for_the_typing_not_each_letter(world: World, monkeypatch) -> None:
    import tui.filter_box

    monkeypatch.setattr(tui.filter_box, "LARGE_TABLE", 2)  # the 4 jobs count as large
    app = world.app()
    async with app.run_test(size=(80, 24)) as pilot:
        jobs = app.dashboard.body("jobs")
        await pilot.press("slash", "f", "i", "n")
        assert len(jobs.shown_keys) == 4  # three letters typed, not three filters run
        await pilot.press("enter")  # enter filters at once
        assert jobs.shown_keys == ["fin:clearing/fast"]
        await pilot.press("slash", "o", "p", "s", "escape")  # esc: the waiting filter is dropped
        await pilot.pause(tui.filter_box.TYPING_PAUSE * 2)
        assert len(jobs.shown_keys) == 4
