"""Control socket: snapshot size and time, event latency, the cost of attached clients.

The real program runs headless as a subprocess (configs of bench/headless_bench.py on the
embedded `local:bench` TSA) and is measured over its real control socket with httpx:

- snapshot: `GET /v1/snapshot` at 1,000 and 10,000 jobs (after the first round), bytes
  and the median wall time of 5 requests (request, server encode, transfer, json.loads);
- with 1,000 jobs anchoring (every 1 s, unchanged roots anchored again): over a window of
  BENCH_CONTROL_SECONDS (default 10) with no client, then the same window with 3 clients
  attached to /v1/events (2 reading, one of them with `?views=1` as a dashboard, 1 that
  never reads): receipts written and daemon CPU seconds in each window; event latency
  engine -> client (receive time minus the event's `at`, both on this host's clock)
  p50/p99 of the reading clients; the same for the "anchored" log records (published
  when the receipt is written: the control path alone, without the receipt write that
  ReceiptWritten's `at` includes); and from each "anchored" record to the views line
  that carries its job's new view (what an attached dashboard's mirror waits for);
- attach at 10,000 jobs (issue 24): `ctl status --json` as a subprocess (the real command,
  Python's start and imports included; median of 3), and an attached dashboard (the real
  VaultMeshApp on an AttachedHost, headless under Pilot, textual imported beforehand):
  from `RemoteControl.connect` until the jobs table holds rows;
- a 10,000-job pass with 0 and then 3 `ctl tail` clients attached before it begins (a
  reload adds the 9,999 namespaces to a scheduler of one, all due at once: `tails_figures`):
  /livez max from the reload until the pass is written (probed back to back, as
  bench/livez_bench.py), and the daemon's USS when the pass is done: what the tails add is
  told by its own memory (the USS less the pages of mapped files no other process maps at
  that moment: the C extensions' code is private or shared as other processes come and
  go, ±12 MiB between two runs of the same daemon).

BENCH_CONTROL_PARTS (comma separated: snapshot, livez, events; default all) runs only
some parts. The data dirs are made under BENCH_DATA_DIR (default the temp folder), and
the disk's raw fsync rate there is printed beside the figures ("reference: the disk
alone"): the receipts' writes are in every latency, and this disk's rate varies.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.headless_bench import CLI, LogFollower, count_receipts, cpu_seconds, make_config, stop
from bench.host_attacks_bench import rss_uss
from bench.livez_bench import Prober, http_port
from bench.scale_bench import own_memory, private_file_pages
from core.fsutil import atomic_write_bytes
from core.jobs import safe_name
from core.sources import write_batch

SNAPSHOT_SIZES = (1_000, 10_000)
ANCHORING_JOBS = 1_000
ATTACH_JOBS = 10_000
START_TIMEOUT = 300.0
TAILS = 3
# Issue 24's targets, printed beside the figures.
LIVEZ_TARGET = 0.050
FIRST_ROWS_TARGET = 0.5
STATUS_TARGET = 0.3
P99_TARGET = 0.2
TAILS_USS_TARGET = 10 * 2**20


def parts() -> set[str]:
    return set(os.environ.get("BENCH_CONTROL_PARTS", "snapshot,livez,events").split(","))


def _tempdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="vmsh-control-bench-", dir=os.environ.get("BENCH_DATA_DIR"))


def window_seconds() -> float:
    return float(os.environ.get("BENCH_CONTROL_SECONDS", "10"))


def _start(n: int, *, anchoring: bool) -> tuple[Path, subprocess.Popen[bytes], tempfile.TemporaryDirectory[str]]:
    holder = _tempdir()
    tmp = Path(holder.name)
    for i in range(n):
        write_batch(tmp / "batches" / safe_name(f"bench:{i}"), "000001", "sha256:" + f"{i + 1:064x}")
    config = make_config(tmp, n)
    if anchoring:
        config.write_text(config.read_text().replace('every: "1h"', 'every: "1s"\n        anchor_unchanged: true'))
    log = (tmp / "scheduler.log").open("wb")
    with log:
        proc = subprocess.Popen([*CLI, "--no-ui", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while count_receipts(tmp / "data") < n:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"the scheduler did not finish its first round of {n} jobs")
        time.sleep(0.2)
    return tmp / "data" / "control.sock", proc, holder


def _client(path: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://vmsh", timeout=60)


def snapshot_figures(n: int) -> dict[str, float]:
    path, proc, holder = _start(n, anchoring=False)
    try:
        with _client(path) as client:
            times, size = [], 0
            for _ in range(5):
                started = time.perf_counter()
                reply = client.get("/v1/snapshot")
                doc = json.loads(reply.content)
                times.append(time.perf_counter() - started)
                size = len(reply.content)
            assert len(doc["snapshot"]["views"]) == n
        figures = {"size": size, "snapshot": statistics.median(times)}
        if n == ATTACH_JOBS:
            figures["status"] = statistics.median(_ctl_status(path, n) for _ in range(3))
            figures["first_rows"] = statistics.median(_first_rows(path) for _ in range(3))
        return figures
    finally:
        stop(proc)
        holder.cleanup()


def _ctl_status(path: Path, n: int) -> float:
    started = time.perf_counter()
    done = subprocess.run([*CLI, "ctl", "--socket", str(path), "status", "--json"], capture_output=True, check=True)
    took = time.perf_counter() - started
    assert len(json.loads(done.stdout)["jobs"]) == n
    return took


def _first_rows(path: Path) -> float:
    """Seconds from connecting until the attached dashboard's jobs table holds rows."""
    import asyncio

    os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
    from core.remote_control import RemoteControl
    from tui.app import VaultMeshApp
    from tui.host import AttachedHost
    from tui.widgets import DiffTable

    async def measure() -> float:
        started = time.perf_counter()
        app = VaultMeshApp(AttachedHost(RemoteControl.connect(path)))
        async with app.run_test(size=(160, 48)) as pilot:
            while True:
                body = app.dashboard.body("jobs")
                if isinstance(body, DiffTable) and body.row_count:
                    return time.perf_counter() - started
                await pilot.pause(0.005)

    return asyncio.run(measure())


def tails_figures(n: int, tails: int) -> dict[str, float]:
    """A pass of `n` jobs with `tails` `ctl tail` clients attached before it begins: /livez
    max during the pass, the daemon's USS after it.

    The daemon starts with one namespace (its first pass done), the tails attach (each has
    printed the line of a reload that changed nothing, so each is subscribed to the
    stream), then the config of `n` namespaces is written and SIGHUP reloads it: the `n - 1`
    jobs it adds are due at once. The probes count from that SIGHUP until a second after the
    last receipt. (Tails started as the daemon starts measured their own start: three
    interpreters importing on this 2-core machine beside the scheduler's first pass.)"""
    holder = _tempdir()
    tmp = Path(holder.name)
    for i in range(n):
        write_batch(tmp / "batches" / safe_name(f"bench:{i}"), "000001", "sha256:" + f"{i + 1:064x}")
    config = make_config(tmp, n)
    whole = config.read_text()
    config.write_text(whole[: whole.index('  "bench:1":')])  # the first namespace alone
    sock = tmp / "data" / "control.sock"
    prober = Prober(http_port(config))
    children: list[subprocess.Popen[bytes]] = []
    printed: list[list[bytes]] = []
    log = LogFollower(tmp / "scheduler.log")
    with (tmp / "scheduler.log").open("wb") as out:
        proc = subprocess.Popen([*CLI, "--no-ui", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        log.wait(1, proc, deadline, "the first namespace's pass")
        children = [subprocess.Popen([*CLI, "ctl", "--socket", str(sock), "tail"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL) for _ in range(tails)]
        for child in children:
            lines: list[bytes] = []
            printed.append(lines)
            assert child.stdout is not None
            threading.Thread(target=lambda f, into: into.extend(f), args=(child.stdout, lines), daemon=True).start()
        os.kill(proc.pid, signal.SIGHUP)  # no change: a line each tail prints once subscribed
        while not all(any(b"config reload: no change" in line for line in lines) for lines in printed):
            if time.monotonic() > deadline or any(c.poll() is not None for c in children):
                raise RuntimeError("the tails did not attach")
            time.sleep(0.05)
        prober.start()
        while not prober.up.is_set():
            time.sleep(0.01)
        atomic_write_bytes(config, whole.encode())
        first = len(prober.latencies)
        os.kill(proc.pid, signal.SIGHUP)
        log.wait(n, proc, deadline, f"the pass of {n} jobs")
        time.sleep(1.0)  # the events of the last receipts reach the tails
        during = sorted(prober.latencies[first:])
        uss, uss_files = rss_uss(proc.pid)[1], private_file_pages(proc.pid)
        alive = sum(1 for c in children if c.poll() is None)
    finally:
        prober.done.set()
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=10)
        stop(proc)
        prober.join(timeout=35)
        holder.cleanup()
    return {"livez_max": during[-1] if during else float("nan"), "uss": uss, "uss_files": uss_files, "alive": alive,
            "livez_p99": during[int(len(during) * 0.99)] if during else float("nan"),
            "over": sum(1 for t in during if t > LIVEZ_TARGET), "probes": len(during)}


def _follow(path: Path, latencies: list[float], logged: list[float], mirrored: list[float] | None,
            stop_at: float, since_anchor: list[float]) -> None:
    """Read /v1/events (with `mirrored`: `?views=1`, as an attached dashboard does, and the
    time from each "anchored" log record to the views line carrying that job's new view).
    `latencies`: from each ReceiptWritten's `at` (the event's time: its receipt durable);
    `since_anchor`: from its `anchored_at` (the chunk's durable write included)."""
    query = "?views=1" if mirrored is not None else ""
    anchored: dict[str, float] = {}
    with _client(path) as client, client.stream("GET", f"/v1/events{query}",
                                                timeout=httpx.Timeout(60, read=None)) as reply:
        for line in reply.iter_lines():
            if not line:
                continue
            now = time.time()
            message = json.loads(line)
            kind = message.get("type")
            if kind == "ReceiptWritten":
                latencies.append(now - message["event"]["at"])
                since_anchor.append(now - message["event"]["anchored_at"])
            elif kind == "LogRecord" and message["event"].get("msg") == "anchored":
                logged.append(now - message["event"]["at"])
                anchored[message["event"]["fields"]["job"]] = message["event"]["at"]
            elif kind == "views" and mirrored is not None:
                for view in message["views"]:
                    at = anchored.pop(view["spec"]["job"], None)
                    if at is not None:
                        mirrored.append(now - at)
            if now > stop_at:
                return


def anchoring_figures() -> dict[str, float]:
    path, proc, holder = _start(ANCHORING_JOBS, anchoring=True)
    data = path.parent
    window = window_seconds()
    try:
        cpu0, rec0 = cpu_seconds(proc.pid), count_receipts(data)
        time.sleep(window)  # a measurement window of real time
        cpu1, rec1 = cpu_seconds(proc.pid), count_receipts(data)
        stuck = socket.socket(socket.AF_UNIX)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(str(path))
        stuck.sendall(b"GET /v1/events HTTP/1.1\r\nHost: vmsh\r\n\r\n")  # never reads
        latencies: list[float] = []
        logged: list[float] = []
        mirrored: list[float] = []
        since_anchor: list[float] = []
        stop_at = time.time() + window + 1.0
        readers = [threading.Thread(target=_follow, args=(path, latencies, logged, views, stop_at, since_anchor),
                                    daemon=True)
                   for views in (None, mirrored)]
        for reader in readers:
            reader.start()
        time.sleep(1.0)  # the readers connect
        cpu2, rec2 = cpu_seconds(proc.pid), count_receipts(data)
        time.sleep(window)
        cpu3, rec3 = cpu_seconds(proc.pid), count_receipts(data)
        for reader in readers:
            reader.join(timeout=30)
        stuck.close()
    finally:
        stop(proc)
        holder.cleanup()
    latencies.sort()
    logged.sort()
    mirrored.sort()
    since_anchor.sort()
    return {
        "anchor_p50": since_anchor[len(since_anchor) // 2] if since_anchor else float("nan"),
        "anchor_p99": since_anchor[int(len(since_anchor) * 0.99)] if since_anchor else float("nan"),
        "mirror_p50": mirrored[len(mirrored) // 2] if mirrored else float("nan"),
        "mirror_p99": mirrored[int(len(mirrored) * 0.99)] if mirrored else float("nan"),
        "log_p50": logged[len(logged) // 2] if logged else float("nan"),
        "log_p99": logged[int(len(logged) * 0.99)] if logged else float("nan"),
        "rate0": (rec1 - rec0) / window, "rate3": (rec3 - rec2) / window,
        "cpu0": (cpu1 - cpu0) / window, "cpu3": (cpu3 - cpu2) / window,
        "p50": latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "events": len(latencies),
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def snapshot_rows() -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for n in SNAPSHOT_SIZES:
        s = snapshot_figures(n)
        rows.append((f"control snapshot, {n:,} jobs", f"{s['size'] / 1e6:.2f} MB, {_ms(s['snapshot'])}",
                     "median of 5, over the socket"))
        if n == ATTACH_JOBS:
            rows += [
                (f"attach, {n:,} jobs: `ctl status --json`", _ms(s["status"]),
                 f"target < {_ms(STATUS_TARGET)} (the command, start included; median of 3)"),
                (f"attach, {n:,} jobs: dashboard's first rows", _ms(s["first_rows"]),
                 f"target < {_ms(FIRST_ROWS_TARGET)} (connect -> jobs table rows; median of 3)"),
            ]
    return rows


def livez_rows() -> list[tuple[str, str, str]]:
    quiet, tailed = tails_figures(ATTACH_JOBS, 0), tails_figures(ATTACH_JOBS, TAILS)
    return [
        (f"/livez max, {ATTACH_JOBS:,}-job pass, {TAILS} `ctl tail`", _ms(tailed["livez_max"]),
         f"target < {_ms(LIVEZ_TARGET)} (0 clients: {_ms(quiet['livez_max'])}; "
         f"{int(tailed['alive'])} tails alive at the end)"),
        (f"/livez p99, answers over {_ms(LIVEZ_TARGET)}, {TAILS} / 0 `ctl tail`",
         f"{_ms(tailed['livez_p99'])} / {_ms(quiet['livez_p99'])}",
         f"{int(tailed['over'])} of {int(tailed['probes'])} / {int(quiet['over'])} of {int(quiet['probes'])} "
         "answers over the target (a max is one answer: on a shared machine, read these beside it)"),
        (f"USS added by {TAILS} `ctl tail`, {ATTACH_JOBS:,}-job pass",
         f"{(own_memory(tailed) - own_memory(quiet)) / 2**20:+.1f} MiB",
         f"target < {TAILS_USS_TARGET / 2**20:.0f} MiB: the daemon's own memory, without / with them (USS "
         f"{quiet['uss'] / 2**20:.0f} / {tailed['uss'] / 2**20:.0f} MiB after the pass, less the mapped files' "
         f"pages no other process maps then, {quiet['uss_files'] / 2**20:.0f} / {tailed['uss_files'] / 2**20:.0f} "
         "MiB: shared or not as other processes come and go)"),
    ]


def events_rows() -> list[tuple[str, str, str]]:
    f = anchoring_figures()
    return [
        ("control: receipts/s, 0 clients", f"{f['rate0']:.0f}", f"{ANCHORING_JOBS:,} jobs every 1 s"),
        ("control: receipts/s, 3 clients (1 stuck)", f"{f['rate3']:.0f}", "target: same as 0 clients"),
        ("control: daemon CPU, 0 / 3 clients", f"{f['cpu0']:.2f} / {f['cpu3']:.2f}", "CPU seconds per second"),
        ("control: event latency p50 / p99", f"{f['p50'] * 1000:.1f} / {f['p99'] * 1000:.1f} ms",
         f"target p99 < {_ms(P99_TARGET)}; ReceiptWritten's `at` (its receipt durable) -> client, "
         f"{int(f['events']):,} events"),
        ("control: anchor -> client p50 / p99", f"{f['anchor_p50'] * 1000:.1f} / {f['anchor_p99'] * 1000:.1f} ms",
         "ReceiptWritten's `anchored_at` -> client: with the chunk's durable write (the disk's share)"),
        ("control: log latency p50 / p99", f"{f['log_p50'] * 1000:.1f} / {f['log_p99'] * 1000:.1f} ms",
         f"target p99 < {_ms(P99_TARGET)}; publish -> client, \"anchored\" log records"),
        ("control: mirror latency p50 / p99", f"{f['mirror_p50'] * 1000:.1f} / {f['mirror_p99'] * 1000:.1f} ms",
         f"target p99 < {_ms(P99_TARGET)}; \"anchored\" -> its job's view in a views line (?views=1)"),
    ]


def disk_rate() -> float:
    """The disk alone: fsyncs per second in a folder where the data dirs are made."""
    from bench.costs_bench import fsync_rate

    with _tempdir() as name:
        return fsync_rate(Path(name))


def run() -> list[tuple[str, str, str]]:
    chosen = parts()
    before = disk_rate()
    rows: list[tuple[str, str, str]] = []
    for name, part in (("snapshot", snapshot_rows), ("livez", livez_rows), ("events", events_rows)):
        if name in chosen:
            rows += part()
    rows.append(("reference: the disk alone, raw fsync rate (4 KiB write + fsync), before / after",
                 f"{before:,.0f} / {disk_rate():,.0f} /s",
                 f"in {os.environ.get('BENCH_DATA_DIR') or tempfile.gettempdir()}: read it beside the figures above"))
    return rows


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
