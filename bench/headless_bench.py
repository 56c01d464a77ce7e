"""Headless footprint: RSS and CPU of `vmsh-scheduler --no-ui` idling with 1,000 jobs.

The real program runs as a subprocess on a config with 1,000 namespaces on the embedded
`local:bench` TSA (cadence every 1h), batches and data in a temporary folder, HTTP on a
free port. Once the first round has anchored all 1,000 jobs (each logged "anchored" once its
receipt is durable: `LogFollower`, not a walk of the receipt folders), the process is sampled
once a second for BENCH_IDLE_SECONDS (default 60): CPU time (utime + stime from
/proc/<pid>/stat) over the window, and RSS (VmRSS from /proc/<pid>/status) at the end and
at its highest. It is then stopped with SIGTERM and must exit 0. The same run with one
job (2 s idle) gives the floor: what Python, asyncio/ssl, pydantic, prometheus-client and
cryptography take before the scheduler holds anything.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.jobs import safe_name
from core.receipts import parse_iso_utc
from core.sources import write_batch

# The `vmsh-scheduler` command (cli.main:main), from this checkout.
CLI = [sys.executable, "-m", "cli"]
JOBS = 1_000
FIRST_ROUND_TIMEOUT = 120.0


def idle_seconds() -> float:
    return float(os.environ.get("BENCH_IDLE_SECONDS", "60"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(tmp: Path, n: int) -> Path:
    """Config in its own folder (the config watcher watches that folder only)."""
    lines = [
        "scheduler:",
        "  tick: 1.0",
        f"  data_dir: {tmp / 'data'}",
        "http:",
        f'  listen: "127.0.0.1:{free_port()}"',
        "targets:",
        "  local:",
        "    bench: {}",
        "namespaces:",
    ]
    for i in range(n):
        ns = f"bench:{i}"
        lines += [
            f'  "{ns}":',
            f"    source: {tmp / 'batches' / safe_name(ns)}",
            "    cadence:",
            "      fast:",
            '        target: "local:bench"',
            '        every: "1h"',
        ]
    path = tmp / "conf" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


class LogFollower:
    """Reads the child's JSON log as it grows: "scheduler started" and the "anchored" lines.

    How the benches that time a pass wait for its end: only the log's new bytes are read
    at each poll. Walking the receipt folders instead (`count_receipts`) took 76 ms of CPU
    per look at 10,000 namespaces: looking every 0.1 s, the bench took 40 % of a core of
    this 2-core machine from the scheduler it was timing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._rest = b""
        self.started_at: float | None = None  # the line's own time (the child's clock)
        self.anchored = 0
        self.anchor_started_at: float | None = None  # the first "anchor started" (the TSA call)
        self.first_anchored_at: float | None = None
        self.last_anchored_at: float | None = None

    def poll(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            if b'"anchored"' not in line and b' started"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            at = parse_iso_utc(record["time"]).timestamp()
            if record.get("msg") == "anchored":
                self.anchored += 1
                self.first_anchored_at = self.first_anchored_at or at
                self.last_anchored_at = at if self.last_anchored_at is None else max(at, self.last_anchored_at)
            elif record.get("msg") == "scheduler started" and self.started_at is None:
                self.started_at = at
            elif record.get("msg") == "anchor started" and self.anchor_started_at is None:
                self.anchor_started_at = at

    def wait(
        self, n: int, proc: subprocess.Popen[bytes], deadline: float, what: str, *,
        stderr: Path | None = None, every: float = 0.05,
    ) -> None:
        """Until `n` jobs are anchored; raises when `proc` exits or at `deadline` (monotonic),
        with the end of `stderr` (the child's, when it has a file of its own)."""
        while True:
            self.poll()
            if self.anchored >= n:
                return
            if proc.poll() is not None:
                problem = f"vmsh-scheduler exited {proc.returncode} during {what}"
            elif time.monotonic() > deadline:
                problem = f"{what} not done in time ({self.anchored} of {n} anchored)"
            else:
                time.sleep(every)
                continue
            raise RuntimeError(problem + (": " + stderr.read_text()[-2000:] if stderr is not None else ""))


def count_receipts(data: Path) -> int:
    folder = data / "receipts"
    if not folder.is_dir():
        return 0
    total = 0
    for entry in os.scandir(folder):
        if entry.is_dir():
            total += sum(1 for f in os.scandir(entry.path) if f.name.endswith(".json"))
    return total


def first_pass_seconds(log_path: Path) -> float | None:
    """From the first "anchor started" to the last "anchored" in the JSON log, or None."""
    started = last = None
    with open(log_path, encoding="utf-8") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            msg = record.get("msg")
            if msg not in ("anchor started", "anchored"):
                continue
            at = parse_iso_utc(record["time"]).timestamp()
            if msg == "anchor started" and started is None:
                started = at
            elif msg == "anchored":
                last = at
    if started is None or last is None:
        return None
    return last - started


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def status_bytes(pid: int, field: str = "VmRSS") -> int:
    """A memory field of /proc/<pid>/status (VmRSS, RssAnon, RssFile), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError("vmsh-scheduler did not stop within 30 s of SIGTERM") from None


def measure(n: int = JOBS, idle: float | None = None) -> dict[str, float]:
    idle = idle_seconds() if idle is None else idle
    with tempfile.TemporaryDirectory(prefix="vmsh-headless-bench-") as name:
        tmp = Path(name)
        for i in range(n):
            ns = f"bench:{i}"
            write_batch(tmp / "batches" / safe_name(ns), "000001", "sha256:" + f"{i + 1:064x}")
        config = make_config(tmp, n)
        log_path = tmp / "stdout.jsonl"
        with open(log_path, "wb") as log, open(tmp / "stderr.txt", "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [*CLI, "--no-ui", "--config", str(config)],
                stdout=log,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=tmp,
            )
            try:
                LogFollower(log_path).wait(n, proc, time.monotonic() + FIRST_ROUND_TIMEOUT, "the first round",
                                           stderr=tmp / "stderr.txt")
                first_round = time.perf_counter() - t0
                # Let the last writes (state save, intents closed) land before the window opens.
                time.sleep(1.0)
                pid = proc.pid
                rss_max = status_bytes(pid)
                cpu0, w0 = cpu_seconds(pid), time.monotonic()
                end = w0 + idle
                while (now := time.monotonic()) < end:
                    time.sleep(min(1.0, end - now))
                    rss_max = max(rss_max, status_bytes(pid))
                cpu1, w1 = cpu_seconds(pid), time.monotonic()
                rss_end = status_bytes(pid)
                anon_end = status_bytes(pid, "RssAnon")
                receipts_after = count_receipts(tmp / "data")
            finally:
                code = stop(proc)
        if code != 0:
            raise RuntimeError(f"vmsh-scheduler exited {code} after SIGTERM, expected 0")
        if receipts_after != n:
            raise RuntimeError(f"{receipts_after} receipts after the idle window, expected {n}")
        first_pass = first_pass_seconds(log_path)
    return {
        "first_round": first_round,
        "first_pass": first_pass,
        "idle": w1 - w0,
        "cpu": cpu1 - cpu0,
        "rss_end": rss_end,
        "rss_max": rss_max,
        "anon_end": anon_end,
    }


def run() -> list[tuple[str, str, str]]:
    m = measure()
    floor = measure(1, idle=2.0)  # what the interpreter and libraries take before any job
    mb = 1024 * 1024
    cpu_pct = 100.0 * m["cpu"] / m["idle"]
    return [
        (
            f"headless RSS, {JOBS:,} jobs idle",
            f"{m['rss_end'] / mb:.1f} MiB",
            f"< 50 MB (max seen {m['rss_max'] / mb:.1f} MiB; private {m['anon_end'] / mb:.1f} MiB,"
            " the rest file-backed: shared libraries)",
        ),
        (
            "headless RSS, 1 job (interpreter and libraries)",
            f"{floor['rss_end'] / mb:.1f} MiB",
            f"private {floor['anon_end'] / mb:.1f} MiB: the floor under the figure above",
        ),
        (
            f"headless CPU, {JOBS:,} jobs idle over {m['idle']:.0f} s",
            f"{cpu_pct:.2f} % of one core",
            "< 1 %",
        ),
        (
            f"headless first round, {JOBS:,} anchors (from process start)",
            f"{m['first_round']:.2f} s",
            "note: includes interpreter start and config load"
            + (
                ""
                if m["first_pass"] is None
                else f"; the anchoring pass itself {m['first_pass']:.2f} s"
            ),
        ),
    ]


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
