"""Control socket: snapshot size and time, event latency, the cost of attached clients.

The real program runs headless as a subprocess (configs of bench/headless_bench.py on the
embedded `local:bench` TSA) and is measured over its real control socket with httpx:

- snapshot: `GET /v1/snapshot` at 1,000 and 10,000 jobs (after the first round), bytes
  and the median wall time of 5 requests (request, server encode, transfer, json.loads);
- with 1,000 jobs anchoring (every 1 s, unchanged roots anchored again): over a window of
  BENCH_CONTROL_SECONDS (default 10) with no client, then the same window with 3 clients
  attached to /v1/events (2 reading, 1 that never reads): receipts written and daemon
  CPU seconds in each window; event latency engine -> client (receive time minus the
  event's `at`, both on this host's clock) p50/p99 of the reading clients.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.headless_bench import CLI, count_receipts, cpu_seconds, make_config, stop
from core.jobs import safe_name
from core.sources import write_batch

SNAPSHOT_SIZES = (1_000, 10_000)
ANCHORING_JOBS = 1_000
START_TIMEOUT = 300.0


def window_seconds() -> float:
    return float(os.environ.get("BENCH_CONTROL_SECONDS", "10"))


def _start(n: int, *, anchoring: bool) -> tuple[Path, subprocess.Popen[bytes], tempfile.TemporaryDirectory[str]]:
    holder = tempfile.TemporaryDirectory(prefix="vmsh-control-bench-")
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


def snapshot_figures(n: int) -> tuple[int, float]:
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
        return size, statistics.median(times)
    finally:
        stop(proc)
        holder.cleanup()


def _follow(path: Path, latencies: list[float], stop_at: float) -> None:
    with _client(path) as client, client.stream("GET", "/v1/events", timeout=httpx.Timeout(60, read=None)) as reply:
        for line in reply.iter_lines():
            if not line:
                continue
            now = time.time()
            message = json.loads(line)
            if message.get("type") == "ReceiptWritten":
                latencies.append(now - message["event"]["at"])
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
        stop_at = time.time() + window + 1.0
        readers = [threading.Thread(target=_follow, args=(path, latencies, stop_at), daemon=True) for _ in range(2)]
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
    return {
        "rate0": (rec1 - rec0) / window, "rate3": (rec3 - rec2) / window,
        "cpu0": (cpu1 - cpu0) / window, "cpu3": (cpu3 - cpu2) / window,
        "p50": latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "events": len(latencies),
    }


def run() -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for n in SNAPSHOT_SIZES:
        size, seconds = snapshot_figures(n)
        rows.append((f"control snapshot, {n:,} jobs", f"{size / 1e6:.2f} MB, {seconds * 1000:.0f} ms", "median of 5, over the socket"))
    f = anchoring_figures()
    rows += [
        ("control: receipts/s, 0 clients", f"{f['rate0']:.0f}", f"{ANCHORING_JOBS:,} jobs every 1 s"),
        ("control: receipts/s, 3 clients (1 stuck)", f"{f['rate3']:.0f}", "target: same as 0 clients"),
        ("control: daemon CPU, 0 / 3 clients", f"{f['cpu0']:.2f} / {f['cpu3']:.2f}", "CPU seconds per second"),
        ("control: event latency p50 / p99", f"{f['p50'] * 1000:.1f} / {f['p99'] * 1000:.1f} ms",
         f"engine -> client, {int(f['events']):,} ReceiptWritten"),
    ]
    return rows


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
