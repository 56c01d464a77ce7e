"""What operators reported (issue 12), each pressed as an operator would at 80x24.

Real anchoring through the embedded local TSA (and real refusals from addresses nothing
listens on); time moves only with the FakeClock.
"""

from __future__ import annotations

import asyncio
import socket

from core.events import LogRecord
from core.jobs import JobKey
from tui.rows import countdown
from tui.screens import ConfirmScreen, DetailScreen, HelpScreen, MessageScreen

from .conftest import NAMESPACES, World, actions_done, gate_anchors, screen_text
from .test_pilot import ALL_JOBS, first_anchors, flat, select, settle

REAL_TARGETS = {
    "dao:vaultmesh": {"fast": "60s", "strong": "300s@rfc3161:freetsa"},
    "fin:clearing": {"fast": "120s@eip155:11155111"},
    "ops:metrics": {"fast": "30s"},
}


def footer(app) -> str:
    return screen_text(app).splitlines()[-1]


def header(app) -> str:
    return screen_text(app).splitlines()[0]


async def test_tab_and_shift_tab_switch_panes_at_80x24(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24)) as pilot:
        assert "1 Namespaces" in screen_text(app)
        await pilot.press("tab")
        assert "2 Backoff" in screen_text(app) and "1 Namespaces" not in screen_text(app)
        await pilot.press("tab", "tab")
        assert "4 Logs" in screen_text(app)
        await pilot.press("tab")
        assert "5 Replicas" in screen_text(app)
        await pilot.press("tab")
        assert "1 Namespaces" in screen_text(app)
        await pilot.press("shift+tab")
        assert "5 Replicas" in screen_text(app)


async def test_readonly_hides_force_reload_pause_and_says_read_only_when_pressed(world: World) -> None:
    app = world.app(readonly=True)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await first_anchors(world, app, pilot)
        bar = footer(app)
        assert "Verify" in bar and "Help" in bar
        for hidden in ("Force", "Reload", "Pause"):
            assert hidden not in bar
        await pilot.press("f")
        assert not isinstance(app.screen, ConfirmScreen)
        assert "read-only: force is disabled (--readonly)" in flat(screen_text(app))
        await pilot.press("space", "R")
        await pilot.pause()
        text = flat(screen_text(app))
        assert "read-only: pause is disabled" in text and "read-only: reload is disabled" in text
        assert not world.runtime.engine.paused


async def test_v_in_namespaces_verifies_that_jobs_latest_receipt(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await first_anchors(world, app, pilot)
        await pilot.press("3")
        select(app.dashboard.body("receipts"), app.dashboard.body("receipts").shown_keys[-1])  # a receipt of another job, hidden below
        other = app.dashboard.body("receipts").selected_key
        await pilot.press("1")
        select(app.dashboard.body("jobs"), "fin:clearing/fast")
        await pilot.press("v")
        await actions_done(app)
        await pilot.pause()
        latest = str(world.runtime.receipts.for_job("fin:clearing", "fast", 1)[0][0])
        assert app.dashboard.body("receipts").all_rows[latest][-1].text == "OK"
        assert "fin%3Aclearing" not in other and app.dashboard.body("receipts").all_rows[other][-1].text == "-"
        assert "verify OK fin:clearing/fast" in flat(screen_text(app))


async def test_f_in_receipts_forces_the_selected_receipts_job(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await first_anchors(world, app, pilot)
        select(app.dashboard.body("jobs"), "dao:vaultmesh/fast")
        await pilot.press("3")
        fin = next(k for k in app.dashboard.body("receipts").shown_keys if "fin%3Aclearing" in k)
        select(app.dashboard.body("receipts"), fin)
        await pilot.press("f")
        assert isinstance(app.screen, ConfirmScreen)
        assert "Force-anchor fin:clearing/fast now?" in screen_text(app)


async def test_f_in_logs_forces_the_selected_lines_job_or_says_what_it_needs(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await first_anchors(world, app, pilot)
        await pilot.press("4")
        shown = list(app.dashboard.body("logs").shown)
        fin = max(i for i, r in enumerate(shown) if r.fields.get("job") == "fin:clearing/fast")
        await pilot.press(*["k"] * (len(shown) - 1 - fin))
        assert app.dashboard.body("logs").selected_record is shown[fin]
        await pilot.press("f")
        assert "Force-anchor fin:clearing/fast now?" in screen_text(app)
        await pilot.press("n")

        started = max(i for i, r in enumerate(shown) if r.msg == "anchor started")  # jobs=[...], no job
        await pilot.press(*["k"] * (fin - started))
        assert app.dashboard.body("logs").selected_record is shown[started]
        await pilot.press("f")
        assert not isinstance(app.screen, ConfirmScreen)
        assert "the selected log line names no job" in flat(screen_text(app))


async def test_a_config_edit_the_watcher_rejects_shows_its_file_line_errors(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        world.write_config({**NAMESPACES, "new:space": {"fast": "0s"}})
        world.runtime.reload()  # what core/observe/watch.py calls on a saved edit
        app.flush_now()
        await pilot.pause()
        text = flat(screen_text(app))
        assert "config edit rejected, the previous config stays live" in text
        assert "config.yaml:" in text and "zero" in text
        assert app.dashboard.body("jobs").shown_keys == ALL_JOBS


async def test_a_config_edit_the_watcher_applies_says_what_changed(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        world.write_config({"dao:vaultmesh": {"fast": "90s"}, "fin:clearing": {"fast": "120s"},
                            "ops:metrics": {"fast": "30s"}, "new:space": {"fast": "45s"}})
        world.runtime.reload()
        app.flush_now()
        await pilot.pause()
        text = flat(screen_text(app))
        assert "config applied" in text
        assert "added 1: new:space/fast" in text
        assert "removed 1: dao:vaultmesh/strong" in text
        assert "changed 1: dao:vaultmesh/fast" in text


async def test_help_fits_80x24_scrolls_with_a_hint_and_the_footer_shows_its_keys(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        lines = text.splitlines()
        assert len(lines) == 24
        assert "esc Close" in lines[-1] and "Scroll down" in lines[-1]
        assert "Force" not in lines[-1] and "Quit" not in lines[-1]
        assert "more line(s) below" in text
        assert "force-anchor the selected job" in text
        for _ in range(8):
            await pilot.press("j")
        text = screen_text(app)
        assert "Keys can be remapped in the config" in text
        assert "more line(s) below" not in text
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_real_target_names_backoff_and_status_fit_80x24(tmp_path) -> None:
    world = World(tmp_path, namespaces=REAL_TARGETS)
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await world.runtime.engine.run_once()
        await settle(app, pilot)
        world.clock.advance(1)
        app.refresh_views()
        await pilot.pause()
        lines = screen_text(app).splitlines()
        first = next(n for n, line in enumerate(lines) if "Namespace ^" in line) + 1  # under the trends
        rows = {line.split()[0] + "/" + line.split()[1]: line for line in lines[first : first + 4]}
        strong, evm = rows["dao:vaultmesh/strong"], rows["fin:clearing/fast"]
        assert "rfc3161:freetsa" in strong and "eip155:11155111" in evm
        for row in (strong, evm):
            assert row.rstrip().endswith("backing off")
            assert "1/7 " in row  # the level and the countdown to the retry
        retry = world.runtime.engine.view(JobKey("dao:vaultmesh", "strong")).state.next_attempt
        assert retry is not None
        assert f"1/7 {countdown(retry - world.clock.now())} " in strong
        # The header's backoff count and the Backoff tab's count agree.
        assert "backoff 2" in header(app) and "Backoff (2)" in screen_text(app)
        await pilot.press("3")
        receipts = screen_text(app)
        assert "local:dev" in receipts and "confirmed" in receipts
        for line in receipts.splitlines()[5:7]:
            assert line.rstrip().endswith("-")  # the Verified column is not cut off

        await pilot.press("1")
        select(app.dashboard.body("jobs"), "dao:vaultmesh/strong")
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        detail = screen_text(app).splitlines()
        status = next(line for line in detail if "backing off" in line)
        assert "last never" in status and "backoff 1/7, retry in" in status
        assert not any(line.startswith("│ backoff") or line.startswith("│ off") for line in detail)


async def test_enter_on_a_log_line_shows_it_whole_with_every_field(world: World) -> None:
    app = world.app()
    digest = "sha256:" + "ab" * 32
    path = str(world.tmp / "data" / "receipts" / "dao%3Avaultmesh" / ("x" * 90 + ".json"))
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        world.runtime.bus.publish(LogRecord(at=world.clock.now(), level="ERROR", msg="a long line",
                                            fields={"job": "dao:vaultmesh/fast", "root": digest, "receipt": path,
                                                    "error": "e" * 70 + " end"}))
        app.flush_now()
        await pilot.press("4")
        assert digest not in screen_text(app)  # the pane abbreviates and cuts it
        await pilot.press("enter")
        assert isinstance(app.screen, MessageScreen)
        # Wrapped over lines of the dialog, but whole: read it without the line breaks.
        text = "".join(screen_text(app).replace("█", "").split())
        assert f"root:{digest}" in text
        assert "receipt:receipts/dao%3Avaultmesh/" + "x" * 90 + ".json" in text
        assert "error:" + "e" * 70 + "end" in text
        assert "job:dao:vaultmesh/fast" in text
        await pilot.press("escape")
        assert not isinstance(app.screen, MessageScreen)


async def test_http_port_taken_is_a_warning_in_the_header(tmp_path) -> None:
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
            assert "HTTP OFF: port in use" in header(app)
            assert "healthy" in header(app)
            text = flat(screen_text(app))
            assert f"/metrics, /health off: 127.0.0.1:{port} in use" in text and "METRICS_PORT or http.listen" in text
            await pilot.press("q")
            await pilot.pause()
    finally:
        taken.close()


async def test_header_counts_agree_with_the_rows_while_anchoring(world: World, monkeypatch) -> None:
    gate = gate_anchors(world, monkeypatch)  # the first anchors are still in flight
    app = world.app()
    async with app.run_test(size=(160, 48)) as pilot:
        engine = world.runtime.engine
        first_pass = asyncio.ensure_future(engine.run_once())  # sends every job to the gate
        await pilot.pause()
        assert len(engine.in_flight()) == len(ALL_JOBS), engine.in_flight()
        app.refresh_views()
        statuses = [row[-1].text for row in app.dashboard.body("jobs").all_rows.values()]
        assert statuses == ["anchoring"] * len(ALL_JOBS)
        text = app.dashboard.header._last.plain
        assert "ok 0" in text and f"anchoring {len(ALL_JOBS)}" in text
        gate.set()
        await first_pass
        await engine.settle()
        app.refresh_views()
        assert "ok 4" in app.dashboard.header._last.plain and "anchoring 0" in app.dashboard.header._last.plain


async def test_engine_stuck_threshold_is_the_same_as_health(world: World) -> None:
    """3 x tick, at least 30 s (core/status.py), as /health: not 5 x tick."""
    from core.observe.health import health as http_health

    app = world.app()
    async with app.run_test(size=(160, 48)):
        engine = world.runtime.engine
        await engine.run_once()
        await engine.settle()
        app.host.engine_state = "running"  # as if the worker ran it
        engine.tick = 20.0  # stuck after 3 x 20 = 60 s without a pass
        world.clock.advance(59)
        app.refresh_views()
        assert app.dashboard.header._last.plain.startswith("● healthy")
        assert http_health(engine, world.clock.now())[1]["status"] == "healthy"
        world.clock.advance(2)
        app.refresh_views()
        assert app.dashboard.header._last.plain.startswith("● unhealthy (engine stuck: no scheduling pass for 61s)")
        assert http_health(engine, world.clock.now())[1]["status"] == "unhealthy"
