"""The dashboard's use of the engine: reload off the loop, the engine's own clock, verify
that cannot check, a reload that needs a restart, a job stuck in flight (issue 15
follow-ups). Real runtime, real files, the embedded TSA; time moves with the FakeClock."""

from __future__ import annotations

import asyncio
import threading

from core.runtime import Runtime

from .conftest import NAMESPACES, World, actions_done, gate_anchors, screen_text
from .test_pilot import ALL_JOBS, first_anchors, flat, settle


async def test_R_reads_the_config_files_off_the_loop(world: World) -> None:
    runtime = world.runtime
    read_on: list[int] = []
    load = runtime._loader
    assert load is not None

    def recording_load():
        read_on.append(threading.get_ident())
        return load()

    runtime._loader = recording_load
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        world.write_config({**NAMESPACES, "new:space": {"fast": "45s"}})
        await pilot.press("R")
        await actions_done(app)
        app.flush_now()
        await pilot.pause()
        assert "new:space/fast" in app.dashboard.body("jobs").shown_keys
        assert read_on and read_on[0] != threading.get_ident()  # a worker thread, not the loop


async def test_countdowns_and_uptime_keep_to_the_engines_clock_when_the_wall_clock_steps(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(160, 48), notifications=True) as pilot:
        await first_anchors(world, app, pilot)  # anchored at 00:00:00, 10 s ago
        world.clock.step_wall(3 * 3600)  # NTP steps the wall clock; no time passes
        app.refresh_views()
        await pilot.pause()
        row = app.dashboard.body("jobs").all_rows["dao:vaultmesh/fast"]
        texts = [cell.text for cell in row]
        assert "50s" in texts and "10s" in texts, texts  # next in 50 s, last 10 s ago
        assert "  up 10s" in app.dashboard.header._last.plain


async def verify_selected_receipt(app, pilot) -> str:
    """`v` on the Receipts pane's selected receipt: the screen's text once it answered."""
    await pilot.press("3", "v")
    await actions_done(app)
    await pilot.pause()
    return flat(screen_text(app))


async def test_v_on_a_receipt_this_dashboard_cannot_check_says_so_not_FAIL(world: World) -> None:
    await world.runtime.engine.run_once()
    await world.runtime.engine.settle()
    world.runtime.engine.flush()
    await world.runtime.close()
    world.runtime.release()
    # The next start has no local TSA certificate to check the receipts against.
    (world.tmp / "data" / "tsa" / "local-tsa.pem").unlink()
    world.runtime = Runtime(world.load(), loader=world.load, clock=world.clock)
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        text = await verify_selected_receipt(app, pilot)
        assert "verify CANNOT CHECK" in text and "local-tsa.pem" in text
        assert "FAIL" not in text
        assert app.dashboard.body("receipts").all_rows[app.dashboard.body("receipts").selected_key][-1].text == "UNKNOWN"


async def test_R_with_a_setting_only_a_restart_applies_says_restart_needed(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        text = world.config_path.read_text().replace("  tick: 5.0", "  tick: 5.0\n  concurrency: 3")
        world.config_path.write_text(text)
        await pilot.press("R")
        await actions_done(app)
        app.flush_now()
        await pilot.pause()
        assert "restart needed for scheduler.concurrency" in flat(screen_text(app))


async def test_a_job_in_flight_past_its_bound_shows_stuck(world: World, monkeypatch) -> None:
    gate = gate_anchors(world, monkeypatch)
    app = world.app()
    async with app.run_test(size=(160, 48)) as pilot:
        engine = world.runtime.engine
        first_pass = asyncio.ensure_future(engine.run_once())  # every job waits at the gate
        await pilot.pause()
        assert len(engine.in_flight()) == len(ALL_JOBS)
        world.clock.advance(engine.stuck_after(engine.views()[0].key) + 1)
        app.refresh_views()
        await pilot.pause()
        statuses = [row[-1].text for row in app.dashboard.body("jobs").all_rows.values()]
        assert statuses == ["stuck"] * len(ALL_JOBS)
        assert f"stuck {len(ALL_JOBS)}" in app.dashboard.header._last.plain
        gate.set()
        await first_pass
        await settle(app, pilot)
        assert "stuck" not in [row[-1].text for row in app.dashboard.body("jobs").all_rows.values()]


async def test_v_on_a_receipt_not_deep_enough_yet_says_PENDING_as_verify_does(world: World) -> None:
    """An eip155 receipt 1 of the 3 blocks deep it asks for (a real ganache node): the
    dashboard's `v` says PENDING and how far, as `verify` and `ctl verify` do."""
    import time

    from core.clock import FakeClock
    from core.sources import write_batch
    from tests.integration.ganache import KEYS, Ganache

    node = Ganache(world.tmp).start()
    try:
        world.config_path.write_text(f"""\
scheduler:
  data_dir: data
targets:
  eip155:
    "1337":
      rpcUrl: {node.url}
      chainId: 1337
      key: "{KEYS[0]}"
      confirmations: 3
namespaces:
  chain:
    cadence:
      fast: {{target: "eip155:1337", every: "1h"}}
""")
        write_batch(world.tmp / "data" / "batches" / "chain", "000001", "sha256:" + "42" * 32)
        world.runtime.release()
        world.runtime = Runtime(world.load(), loader=world.load, clock=FakeClock(start=time.time()))
        await world.runtime.engine.run_once()
        await world.runtime.engine.settle()
        world.runtime.engine.flush()
        assert world.receipt_count() == 1
        app = world.app()
        async with app.run_test(size=(120, 30), notifications=True) as pilot:
            text = await verify_selected_receipt(app, pilot)
            assert "verify PENDING" in text and "1 of 3 blocks deep" in text, text
            body = app.dashboard.body("receipts")
            assert body.all_rows[body.selected_key][-1].text == "PENDING"
    finally:
        node.stop()
