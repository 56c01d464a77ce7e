"""Dashboard benchmarks: the real VaultMeshApp on a real Runtime with 1,000 jobs, headless.

The world is built like tests/tui/conftest.py's World: a config in a temporary folder with
1,000 namespaces (one `fast` cadence each, every 1h) on the embedded `local:dev` TSA,
batches written with `core.sources.write_batch`, a FakeClock, `start_engine=False`; the
app runs under Textual's Pilot (`app.run_test(size=(160, 48))`, all four panes shown).

- batch apply: one real engine pass anchors all 1,000 jobs (1,000 receipts, ~3,000 events
  and ~1,000 log lines on the bus); `flush_now()` is timed (diffs the job table by row
  key, the receipts and backoff panes, the header, appends the log lines), then the render
  that follows (`pilot.pause()`: layout, compositor, the DataTable and Log line renders).
  The render is given as CPU time, since `pause()` also sleeps while it waits for idle.
  Every job is shown due before each pass, so its Last, Next and Status cells change.
  The app's 1 s countdown timer is paused while single operations are timed.
- countdown refresh: `_refresh_views()` with nothing changed (FakeClock frozen), and with
  the clock one second on, so that every job's Last and Next cells change, as they do
  every second on a real clock.
- filter keystroke: `set_filter` on the jobs table that hides 900 of the 1,000 rows.
- log burst: 10,000 `runtime.log.info` lines, then `flush_now()` and the render.
- idle CPU: process CPU time over wall time while the app sits idle, once with the clock
  frozen and once with the FakeClock moved one second per real second (the countdown
  timer then changes 1,000 rows a second, as in production).

- at 100,000 jobs (BENCH_TUI_HUGE, 0 skips it; no batches written): first rows, a filter
  keystroke that leaves 100 rows and clearing it, the slowest of 4 sort keystrokes, and
  the 1 s countdown tick between the spaced full refreshes (tui/pace.py), each with the
  time until its frame is drawn.

Headless Textual skips only the last step of a frame (encoding segments as escape codes
for the terminal); the last row measures that step for one full screen.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")

from core.clock import FakeClock  # noqa: E402
from core.config import load_config  # noqa: E402
from core.jobs import safe_name  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from core.sources import write_batch  # noqa: E402

JOBS = 1_000
LOG_BURST = 10_000
SIZE = (160, 48)
ROUNDS = 5  # engine passes whose flush is timed
COUNTDOWNS = 20  # countdown refreshes timed, each way
REPEATS = 3  # filter keystrokes, log bursts and full frames timed (median)
IDLE_FROZEN = 5.0  # seconds
IDLE_TICKING = 10.0  # seconds


def config_text(n: int) -> str:
    lines = [
        "scheduler:",
        "  tick: 5.0",
        "  data_dir: data",
        "log:",
        "  level: INFO",
        "targets:",
        "  local:",
        "    dev: {}",
        "namespaces:",
    ]
    for i in range(n):
        lines += [
            f'  "bench:{i:04d}":',
            "    cadence:",
            "      fast:",
            '        target: "local:dev"',
            '        every: "1h"',
            "        anchor_unchanged: true",
        ]
    return "\n".join(lines) + "\n"


class World:
    """Config, batches and a Runtime on a FakeClock in `tmp`, as the TUI tests build them."""

    def __init__(self, tmp: Path, n: int = JOBS, *, batches: bool = True) -> None:
        self.tmp = tmp
        self.clock = FakeClock()
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(config_text(n))
        for i in range(n if batches else 0):
            folder = tmp / "data" / "batches" / safe_name(f"bench:{i:04d}")
            write_batch(folder, f"{i + 1:06d}", "sha256:" + f"{i + 1:064x}")
        self.runtime = Runtime(
            self.load(), loader=self.load, clock=self.clock, rng=random.Random(7)
        )

    def load(self):
        return load_config(self.config_path, env={}, cwd=self.tmp)

    def app(self):
        from tui.app import VaultMeshApp
        from tui.host import InProcessHost

        return VaultMeshApp(InProcessHost(self.runtime, start_engine=False, grace=2.0), env={"COLORTERM": "truecolor"})


async def render(pilot) -> tuple[float, float]:
    """(wall, CPU) seconds of letting Textual lay out and render what changed."""
    w0, c0 = time.perf_counter(), time.process_time()
    await pilot.pause()
    return time.perf_counter() - w0, time.process_time() - c0


async def idle_cpu(seconds: float, clock: FakeClock | None = None) -> float:
    """Fraction of one core used over `seconds` of wall time; moves `clock` 1 s a second."""
    w0, c0 = time.perf_counter(), time.process_time()
    end = w0 + seconds
    while (now := time.perf_counter()) < end:
        await asyncio.sleep(min(1.0, end - now))
        if clock is not None:
            clock.advance(1.0)
    return (time.process_time() - c0) / (time.perf_counter() - w0)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


async def measure() -> dict[str, float]:
    m: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vmsh-tui-bench-") as name:
        world = World(Path(name))
        runtime, clock = world.runtime, world.clock
        engine = runtime.engine
        app = world.app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert len(app.dashboard.body("jobs").shown_keys) == JOBS, len(app.dashboard.body("jobs").shown_keys)
            # The 1 s countdown timer is held still while single operations are timed (it
            # would land inside some of them at random); the idle windows run it.
            countdown = next(t for t in app.dashboard._timers if t.name == "countdown")
            countdown.pause()
            m["pause"] = statistics.median([(await render(pilot))[1] for _ in range(5)])

            # 1. Engine passes: every job anchors; the batched apply and its render.
            flushes, renders, renders_wall, events = [], [], [], []
            counter = {"n": 0}
            runtime.bus.subscribe(lambda e: counter.__setitem__("n", counter["n"] + 1))
            for round_ in range(ROUNDS + 1):
                if round_:
                    clock.advance(3600)  # one period on: every job is due again ...
                    app.refresh_views()  # ... and shown so, as the countdown would have
                    await pilot.pause()
                counter["n"] = 0
                await engine.run_once()
                events.append(counter["n"])
                t0 = time.perf_counter()
                app.flush_now()  # Last, Next and Status change in all 1,000 rows
                flushes.append(time.perf_counter() - t0)
                wall, cpu = await render(pilot)
                renders.append(cpu)
                renders_wall.append(wall)
            assert world_receipts(world) == JOBS * (ROUNDS + 1)
            assert app.dashboard.body("jobs").all_rows[app.dashboard.body("jobs").shown_keys[0]][-1].text == "ok"
            m["first_flush"], m["first_render"] = flushes[0], renders[0]
            m["flush"] = statistics.median(flushes[1:])
            m["flush_max"] = max(flushes[1:])
            m["flush_render"] = statistics.median(renders[1:])
            m["flush_render_wall"] = statistics.median(renders_wall[1:])
            m["events"] = statistics.median(events[1:])

            # 2. Countdown refresh: nothing changed, then every countdown changed.
            same = []
            for _ in range(COUNTDOWNS):
                t0 = time.perf_counter()
                app.refresh_views()
                same.append(time.perf_counter() - t0)
            m["countdown_same"] = statistics.median(same)
            ticked, ticked_render = [], []
            for _ in range(COUNTDOWNS):
                clock.advance(1.0)
                t0 = time.perf_counter()
                app.refresh_views()
                ticked.append(time.perf_counter() - t0)
                ticked_render.append((await render(pilot))[1])
            m["countdown_tick"] = statistics.median(ticked)
            m["countdown_tick_render"] = statistics.median(ticked_render)

            # A full frame as the terminal would get it (headless skips this encoding).
            frames = []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                encoded = app.screen._compositor.render_update(full=True).render_segments(
                    app.console
                )
                frames.append(time.perf_counter() - t0)
            m["full_frame"] = statistics.median(frames)
            m["full_frame_bytes"] = len(encoded.encode())

            # Typing a filter on the jobs table: one keystroke that hides 900 of the 1,000 rows.
            filters, filter_renders = [], []
            for _ in range(REPEATS):
                await pilot.pause()
                t0 = time.perf_counter()
                app.dashboard.body("jobs").set_filter("bench:09")
                filters.append(time.perf_counter() - t0)
                m["filter_rows"] = float(app.dashboard.body("jobs").row_count)
                filter_renders.append((await render(pilot))[1])
                app.dashboard.body("jobs").set_filter("")
                await pilot.pause()
            m["filter"] = statistics.median(filters)
            m["filter_render"] = statistics.median(filter_renders)

            # 3. Log bursts.
            data = str(runtime.data_dir.resolve())
            publish, flush, log_render = [], [], []
            for burst in range(REPEATS):
                t0 = time.perf_counter()
                for i in range(LOG_BURST):
                    runtime.log.info(
                        "anchored", job=f"bench:{i % JOBS:04d}/fast", target="local:dev",
                        root="sha256:" + f"{burst}{i:063x}", batch=f"{i:06d}",
                        receipt=f"{data}/receipts/bench%3A{i % JOBS:04d}/2026-01-01T000000Z-fast.json",
                        status="confirmed",
                    )
                publish.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                app.flush_now()
                flush.append(time.perf_counter() - t0)
                log_render.append((await render(pilot))[1])
            m["log_publish"] = statistics.median(publish)
            m["log_flush"] = statistics.median(flush)
            m["log_render"] = statistics.median(log_render)
            m["log_lines"] = float(app.dashboard.body("logs").line_count)
            m["log_records"] = float(len(app.dashboard.body("logs").records))
            m["log_bound"] = float(app.dashboard.body("logs").max_lines or 0)

            # 4. Idle, the countdown timer running.
            countdown.resume()
            await pilot.pause(0.5)
            m["idle_frozen"] = await idle_cpu(IDLE_FROZEN)
            m["idle_ticking"] = await idle_cpu(IDLE_TICKING, clock)
            await runtime.close()
    return m


async def timed(pilot, action) -> tuple[float, float]:
    """(the action's own seconds, seconds until its frame is drawn)."""
    t0 = time.perf_counter()
    action()
    t1 = time.perf_counter()
    await pilot.pause()
    return t1 - t0, time.perf_counter() - t0


async def measure_huge(n: int) -> dict[str, float]:
    """The dashboard over `n` jobs (no batches written: each shows as waiting for one), on
    its real timers: what an operator feels when typing a filter or sorting."""
    m: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vmsh-tui-huge-") as name:
        world = World(Path(name), n, batches=False)
        app = world.app()
        t0 = time.perf_counter()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            jobs = app.dashboard.body("jobs")
            assert jobs.row_count == n, jobs.row_count
            m["first_rows"] = time.perf_counter() - t0
            m["narrow"], m["narrow_drawn"] = await timed(pilot, lambda: jobs.set_filter("bench:09"))
            m["narrow_rows"] = float(jobs.row_count)
            m["clear"], m["clear_drawn"] = await timed(pilot, lambda: jobs.set_filter(""))
            sorts = [await timed(pilot, jobs.action_cycle_sort) for _ in range(4)]
            m["sort"], m["sort_drawn"] = max(s[0] for s in sorts), max(s[1] for s in sorts)
            world.clock.advance(1.0)
            app.refresh_views()
            m["refresh_cpu"] = app.dashboard.refresher.pace.cost
            m["refresh_every"] = max(1.0, app.dashboard.refresher.pace.wait(app.dashboard.refresher.pace.started_at or 0.0))
            world.clock.advance(1.0)
            m["tick"], m["tick_drawn"] = await timed(pilot, app.dashboard.refresher.countdown)
            await world.runtime.close()
    return m


def huge_rows(n: int) -> list[tuple[str, str, str]]:
    m = asyncio.run(measure_huge(n))
    return [
        (f"tui at {n:,} jobs: first rows on screen", f"{m['first_rows']:.1f} s", "in-process, config loaded"),
        (f"tui at {n:,} jobs: filter keystroke -> {m['narrow_rows']:,.0f} rows", ms(m["narrow"]),
         f"drawn after {ms(m['narrow_drawn'])}; filter cleared {ms(m['clear'])}, drawn after {ms(m['clear_drawn'])}"),
        (f"tui at {n:,} jobs: sort keystroke (worst of 4 columns)", ms(m["sort"]), f"drawn after {ms(m['sort_drawn'])}"),
        (f"tui at {n:,} jobs: 1 s countdown tick between full refreshes", ms(m["tick"]),
         f"drawn after {ms(m['tick_drawn'])}; a full refresh costs {ms(m['refresh_cpu'])} CPU, "
         f"so runs every {m['refresh_every']:.0f} s (tui/pace.py)"),
    ]


def world_receipts(world: World) -> int:
    return len(world.runtime.receipts.all_paths())


def run() -> list[tuple[str, str, str]]:
    huge = int(os.environ.get("BENCH_TUI_HUGE", "100000"))  # 0 skips the 100,000-job rows
    return (huge_rows(huge) if huge else []) + small_rows()


def small_rows() -> list[tuple[str, str, str]]:
    m = asyncio.run(measure())
    per_line = (m["log_publish"] + m["log_flush"] + m["log_render"]) / LOG_BURST
    log_total = m["log_publish"] + m["log_flush"] + m["log_render"]
    return [
        (
            f"tui batch apply, engine pass of {JOBS:,} anchors (flush_now)",
            ms(m["flush"]),
            f"< 100 ms; median of {ROUNDS}, max {ms(m['flush_max'])}, ~{m['events']:,.0f} events",
        ),
        (
            "tui render after that batch (CPU)",
            ms(m["flush_render"]),
            f"< 100 ms with the apply; wall {ms(m['flush_render_wall'])}, empty pause {ms(m['pause'])}",
        ),
        (
            "tui first batch (receipts pane filled)",
            ms(m["first_flush"]),
            f"render {ms(m['first_render'])} CPU",
        ),
        (
            f"tui countdown refresh, {JOBS:,} jobs, nothing changed",
            ms(m["countdown_same"]),
            "once a second; a few ms",
        ),
        (
            f"tui countdown refresh, {JOBS:,} countdowns changed",
            ms(m["countdown_tick"]),
            f"once a second on a real clock; render {ms(m['countdown_tick_render'])} CPU",
        ),
        (
            f"tui jobs filter keystroke, {JOBS:,} -> {m['filter_rows']:,.0f} rows",
            ms(m["filter"]),
            f"< 100 ms; render {ms(m['filter_render'])} CPU",
        ),
        (
            f"tui log burst, {LOG_BURST:,} lines (publish+flush+render)",
            f"{log_total * 1e3:.0f} ms",
            f"< 1 s; median of {REPEATS}: publish {ms(m['log_publish'])}, flush {ms(m['log_flush'])}, render {ms(m['log_render'])}",
        ),
        ("tui log burst, per line", f"{per_line * 1e6:.1f} us", ""),
        (
            "tui Logs pane after the burst",
            f"{m['log_lines']:,.0f} lines",
            f"bound {m['log_bound']:,.0f}; {m['log_records']:,.0f} records kept",
        ),
        (
            f"tui idle CPU, clock frozen, {IDLE_FROZEN:.0f} s",
            f"{m['idle_frozen'] * 100:.2f} % of one core",
            "a few % at most",
        ),
        (
            f"tui idle CPU, clock ticking, {IDLE_TICKING:.0f} s",
            f"{m['idle_ticking'] * 100:.2f} % of one core",
            f"a few % at most; {JOBS:,} countdowns change each second",
        ),
        (
            f"tui full {SIZE[0]}x{SIZE[1]} frame encoded for the terminal",
            ms(m["full_frame"]),
            f"{m['full_frame_bytes'] / 1024:.0f} KiB; skipped headless",
        ),
    ]


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
