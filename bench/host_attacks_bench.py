"""Host attacks: what anyone on the host can do to a running scheduler, all at once.

A real `vmsh-scheduler --no-ui` (descriptors limited to 1,024, as under systemd without
LimitNOFILE) anchors 50 namespaces that fall back to the shared batch folder
(<data_dir>/batches) and 5 on folders of their own, every 1 s on the embedded
`local:bench` TSA (anchor_unchanged, so an unchanged batch still anchors). Its control
socket sits in a world-readable folder (mode 0666, readonly_group 65534), as the
integration tests set it up.

It runs BENCH_ATTACK_SECONDS (default 30) unattacked, then the same again with every
attack at once, each from a forked child:

1. 1,100 Unix-socket clients open `GET /v1/events` and never read (BENCH_EVENTS_REOPEN=1:
   those the scheduler refuses or drops are reopened once a second, a reconnect storm).
2. uid 65534 (a read-only peer) sends refused `POST /v1/force` with 60 KiB bodies as fast
   as one client can.
3. 10,000 files are written into the shared folder, then a writer adds 10 a second.
4. The config path is replaced by a FIFO (and stays one through the SIGTERM below).
5. One more namespace reads its batches from a FUSE mount (tests/integration/hung_mount.py)
   that stops answering, as a dead network mount: every request on it waits in the kernel.
   Run only as root with /dev/fuse and fusepy; else left out, and the row says so. Its
   namespace anchors nothing while it hangs, so at most 55 of 56 namespaces' anchors are
   possible in the attacked window (98 %).

BENCH_ATTACKS=events,force,writer,fifo,mount (the default: all) runs only some of them.

In each window the bench measures anchors a second (receipts written under
<data_dir>/receipts), /livez answer time (one new connection every 75 ms), /health
answer time (every 1 s), descriptors (/proc/<pid>/fd) and memory (VmRSS, and USS from
smaps_rollup) every 0.5 s. Then SIGTERM, with the attacks still running: the time to exit
and the exit code. Traffic is on 127.0.0.1 and the Unix socket only; every loop has a
deadline; the scheduler and the attack children are killed in `finally`.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from core.lifecycle import GRACE_SECONDS
from core.sources import write_batch

# The `vmsh-scheduler` command (cli.main:main), from this checkout.
CLI = [sys.executable, "-m", "cli"]
SHARED = 50
SOLO = 5
SHARED_FILES = 10_000
WRITER_PER_SECOND = 10
CLIENTS = 1_100
NOBODY = 65534
DAEMON_NOFILE = 1024
LIVEZ_EVERY = 0.075
HEALTH_EVERY = 1.0
SAMPLE_EVERY = 0.5
START_TIMEOUT = 60.0
PROBE_TIMEOUT = 5.0
ATTACKS = ("events", "force", "writer", "fifo", "mount")
HUNG_MOUNT = Path(__file__).resolve().parent.parent / "tests" / "integration" / "hung_mount.py"
CHILD_SLACK = 60.0  # an attack child ends by itself this long after its window at the latest


def attack_seconds() -> float:
    return float(os.environ.get("BENCH_ATTACK_SECONDS", "30"))


def attacks() -> set[str]:
    """BENCH_ATTACKS (comma-separated) runs only some, to tell which one costs what."""
    chosen = set(os.environ.get("BENCH_ATTACKS", ",".join(ATTACKS)).split(","))
    unknown = chosen - set(ATTACKS)
    if unknown:
        raise ValueError(f"unknown attack(s) {sorted(unknown)}; choose from {ATTACKS}")
    return chosen


def reopen() -> bool:
    """BENCH_EVENTS_REOPEN=1: the /v1/events clients reconnect once a second when closed."""
    return os.environ.get("BENCH_EVENTS_REOPEN", "") not in ("", "0")


def mount_refusal() -> str | None:
    """Why the hung-mount attack cannot run here (None: it can)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        return "needs root and /dev/fuse"
    try:
        import fuse  # noqa: F401  (fusepy)
    except (ImportError, OSError) as exc:
        return f"fusepy: {exc}"
    return None


class HungMount:
    """A FUSE mirror of `backing` at `point` that stops answering while `gate` exists."""

    def __init__(self, tmp: Path) -> None:
        self.backing, self.point, self.gate = tmp / "fuse-backing", tmp / "fuse-mnt", tmp / "fuse-gate"
        self.backing.mkdir()
        self.point.mkdir()
        self.proc = subprocess.Popen(
            [sys.executable, str(HUNG_MOUNT), str(self.backing), str(self.point), str(self.gate)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not os.path.ismount(self.point):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the FUSE mount did not come up")
            time.sleep(0.05)

    def close(self) -> None:
        self.gate.unlink(missing_ok=True)
        subprocess.run(["umount", "-l", str(self.point)], capture_output=True, check=False)
        self.proc.kill()
        self.proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def root(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def config_text(tmp: Path, control: Path, port: int, mounted: Path | None = None) -> str:
    lines = [
        "scheduler:",
        "  tick: 0.5",
        f"  data_dir: {tmp / 'data'}",
        "http:",
        f'  listen: "127.0.0.1:{port}"',
        "control:",
        f'  socket: "{control}"',
        '  mode: "0666"',
        f'  readonly_group: "{NOBODY}"',
        "targets:",
        "  local:",
        "    bench: {}",
        "namespaces:",
    ]
    names = [(f"shared{i:02d}", None) for i in range(SHARED)]
    names += [(f"solo{i}", tmp / "solo" / f"solo{i}") for i in range(SOLO)]
    if mounted is not None:
        names.append(("mounted", mounted))
    for name, source in names:
        lines.append(f'  "{name}":')
        if source is not None:
            lines.append(f"    source: {source}")
        lines += [
            "    cadence:",
            "      fast:",
            '        target: "local:bench"',
            '        every: "1s"',
            "        anchor_unchanged: true",
        ]
    return "\n".join(lines) + "\n"


def count_receipts(data: Path) -> int:
    folder = data / "receipts"
    if not folder.is_dir():
        return 0
    total = 0
    for entry in os.scandir(folder):
        if entry.is_dir():
            total += sum(1 for f in os.scandir(entry.path) if f.name.endswith(".json"))
    return total


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_uss(pid: int) -> tuple[int, int]:
    rss = uss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            uss += int(line.split()[1]) * 1024
    return rss, uss


def get(port: int, path: str) -> tuple[int, float]:
    """(status or -1 on an error, seconds) of one GET on a new connection."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        answer.read()
        status = answer.status
    except OSError:
        status = -1
    finally:
        conn.close()
    return status, time.perf_counter() - started


def serving(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(path))
        return True
    except OSError:
        return False


# --- attack children -------------------------------------------------------------------

class Child:
    """A forked attack: runs `body(stopped)` until its deadline or SIGTERM, then writes the
    counts it returns to a pipe (JSON)."""

    def __init__(self, name: str, body: Callable[[Callable[[], bool]], dict[str, int]], deadline: float,
                 uid: int | None = None) -> None:
        self.name = name
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            count: dict[str, int] = {}
            try:
                os.close(read)
                stop = {"now": False}
                signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
                if uid is not None:
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)

                def stopped() -> bool:
                    return stop["now"] or time.monotonic() > deadline

                count = body(stopped)
            except BaseException as exc:  # noqa: B036 - report, never return into the bench
                os.write(2, f"attack {name} failed: {exc!r}\n".encode())
            finally:
                try:
                    os.write(write, json.dumps(count).encode())
                finally:
                    os._exit(0)
        os.close(write)
        self.pid, self.pipe = pid, read
        self.count: dict[str, int] = {}

    def finish(self, timeout: float = 5.0) -> dict[str, int]:
        """SIGTERM, wait up to `timeout`, then SIGKILL; the count it reported."""
        if self.pid == 0:
            return self.count
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        end = time.monotonic() + timeout
        done = False
        while time.monotonic() < end:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                done = True
                break
            time.sleep(0.05)
        if not done:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.set_blocking(self.pipe, False)
        try:
            text = os.read(self.pipe, 4096).decode()
        except BlockingIOError:
            text = ""
        os.close(self.pipe)
        self.pid = 0
        self.count = json.loads(text) if text else {}
        return self.count


def events_flood(control: Path, reopen: bool) -> Callable[[Callable[[], bool]], dict[str, int]]:
    """1,100 clients on GET /v1/events that never read (so never notice being refused or
    dropped); with `reopen`, those closed by the scheduler are reopened once a second (a
    reconnect storm on top). Counts the connections opened and the most held at once."""
    def body(stopped: Callable[[], bool]) -> dict[str, int]:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, CLIENTS + 500)), hard))
        held: dict[int, socket.socket] = {}
        opened = most = 0
        poller = select.poll()
        try:
            while not stopped():
                round_end = time.monotonic() + 1.0
                while ((len(held) if reopen else opened) < CLIENTS and not stopped()
                       and time.monotonic() < round_end):
                    s = socket.socket(socket.AF_UNIX)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    s.setblocking(False)
                    try:
                        s.connect(str(control))
                        s.send(b"GET /v1/events HTTP/1.1\r\nHost: vmsh\r\n\r\n")
                    except OSError:  # backlog full (EAGAIN) or refused: later
                        s.close()
                        time.sleep(0.005)
                        continue
                    held[s.fileno()] = s
                    poller.register(s, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
                    opened += 1
                    most = max(most, len(held))
                while not stopped() and time.monotonic() < round_end:
                    time.sleep(0.05)
                for fd, _ in poller.poll(0) if reopen else ():  # closed by the scheduler
                    poller.unregister(fd)
                    held.pop(fd).close()
        finally:
            for s in held.values():
                s.close()
        return {"opened": opened, "held": most}
    return body


def force_flood(control: Path) -> Callable[[Callable[[], bool]], dict[str, int]]:
    """Refused POST /v1/force with 60 KiB bodies, one client as fast as it can; answers by
    status ("error": no answer, e.g. closed while the body was sent)."""
    body_bytes = json.dumps({"job": "shared00/fast", "pad": "x" * 60_000}).encode()
    raw = (b"POST /v1/force HTTP/1.1\r\nHost: vmsh\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body_bytes)).encode() + b"\r\n\r\n" + body_bytes)

    def body(stopped: Callable[[], bool]) -> dict[str, int]:
        answers: dict[str, int] = {}
        while not stopped():
            key = "error"
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(2.0)
                    s.connect(str(control))
                    s.sendall(raw)
                    answer = s.recv(64)
                key = answer[9:12].decode(errors="replace") or "error"
            except OSError:
                time.sleep(0.01)
            answers[key] = answers.get(key, 0) + 1
        return answers
    return body


def stage(staging: Path) -> None:
    """The 10,000 files, written before the scheduler starts (write_batch fsyncs each: on
    this machine that alone took longer than the window) and renamed into the shared
    folder when the attack starts."""
    staging.mkdir(parents=True)
    for n in range(1, SHARED_FILES + 1):
        (staging / f"{n:07d}.json").write_text(json.dumps({"id": f"{n:07d}", "root": root(n)}))


def shared_writer(staging: Path, folder: Path) -> Callable[[Callable[[], bool]], dict[str, int]]:
    """10,000 files at once (renamed in from `staging`), then 10 a second; files written."""
    def body(stopped: Callable[[], bool]) -> dict[str, int]:
        n = 0
        for n in range(1, SHARED_FILES + 1):
            if stopped():
                return {"files": n}
            name = f"{n:07d}.json"
            os.rename(staging / name, folder / name)
        started = time.monotonic()
        while not stopped():
            n += 1
            write_batch(folder, f"{n:07d}", root(n))
            time.sleep(max(0.0, started + (n - SHARED_FILES) / WRITER_PER_SECOND - time.monotonic()))
        return {"files": n}
    return body


def replace_with_fifo(path: Path) -> None:
    temp = path.with_name(path.name + ".fifo")
    os.mkfifo(temp)
    os.replace(temp, path)


# --- one window --------------------------------------------------------------------------

def window(proc: subprocess.Popen, data: Path, port: int, seconds: float) -> dict[str, float]:
    pid = proc.pid
    livez: list[float] = []
    health: list[float] = []
    bad = 0
    worst = worst_at = 0.0
    fd_peak = rss_peak = uss_peak = 0
    receipts0, t0 = count_receipts(data), time.monotonic()
    end = t0 + seconds
    next_health = next_sample = t0
    while (now := time.monotonic()) < end:
        if proc.poll() is not None:
            raise RuntimeError(f"vmsh-scheduler exited {proc.returncode} during the window")
        status, took = get(port, "/livez")
        livez.append(took)
        if took >= 0.1 and os.environ.get("BENCH_ATTACKS_DEBUG"):
            print(f"slow /livez {took * 1000:.0f} ms at +{now - t0:.2f} s", file=sys.stderr)
        if took > worst:
            worst, worst_at = took, now - t0
        bad += status != 200
        if now >= next_health:
            status, took = get(port, "/health")
            health.append(took)
            bad += status not in (200, 503)
            next_health = now + HEALTH_EVERY
        if now >= next_sample:
            fd_peak = max(fd_peak, fds(pid))
            rss, uss = rss_uss(pid)
            rss_peak, uss_peak = max(rss_peak, rss), max(uss_peak, uss)
            next_sample = now + SAMPLE_EVERY
        time.sleep(max(0.0, now + LIVEZ_EVERY - time.monotonic()))
    receipts1, t1 = count_receipts(data), time.monotonic()
    slow = sum(1 for x in livez if x >= 0.1)
    livez.sort()
    return {
        "slow": slow,
        "worst_at": worst_at,
        "rate": (receipts1 - receipts0) / (t1 - t0),
        "livez_p99": livez[min(len(livez) - 1, int(0.99 * len(livez)))],
        "livez_max": livez[-1],
        "probes": len(livez),
        "health_max": max(health),
        "health_probes": len(health),
        "bad": bad,
        "fds": fd_peak,
        "rss": rss_peak,
        "uss": uss_peak,
    }


def measure(seconds: float | None = None) -> dict[str, object]:
    seconds = attack_seconds() if seconds is None else seconds
    chosen = attacks()  # an unknown name fails here, before anything starts
    tmp = Path(tempfile.mkdtemp(prefix="vmsh-attacks-bench-"))
    public = Path(tempfile.mkdtemp(prefix="vmsh-attacks-control-"))  # for uid 65534
    public.chmod(0o755)
    control = public / "control.sock"
    data = tmp / "data"
    shared = data / "batches"
    port = free_port()
    config = tmp / "conf" / "config.yaml"  # in its own folder: the watcher watches that one
    children: list[Child] = []
    proc: subprocess.Popen | None = None
    mount: HungMount | None = None
    refusal = mount_refusal() if "mount" in chosen else "not chosen"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (DAEMON_NOFILE, DAEMON_NOFILE))

    out = open(tmp / "stdout.jsonl", "wb")  # noqa: SIM115 - closed in finally
    err = open(tmp / "stderr.txt", "wb")  # noqa: SIM115
    try:
        write_batch(shared, "0000000", root(1))
        stage(tmp / "staging")
        for i in range(SOLO):
            write_batch(tmp / "solo" / f"solo{i}", "000001", root(100 + i))
        mounted: Path | None = None
        if refusal is None:
            mount = HungMount(tmp)
            mounted = mount.point / "mounted"
            write_batch(mount.backing / "mounted", "000001", root(200))
        config.parent.mkdir()
        config.write_text(config_text(tmp, control, port, mounted))
        proc = subprocess.Popen([*CLI, "--no-ui", "--config", str(config)], stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL, cwd=tmp, preexec_fn=limit)
        deadline = time.monotonic() + START_TIMEOUT
        namespaces = SHARED + SOLO + (mount is not None)
        while not (serving(control) and count_receipts(data) >= 2 * namespaces):
            if proc.poll() is not None:
                raise RuntimeError(f"vmsh-scheduler exited {proc.returncode} at start: "
                                   + (tmp / "stderr.txt").read_text()[-1000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"no two rounds within {START_TIMEOUT:.0f} s")
            time.sleep(0.1)
        quiet = window(proc, data, port, seconds)

        child_deadline = time.monotonic() + seconds + CHILD_SLACK
        audit = data / "audit.jsonl"
        audit_before = sum(p.stat().st_size for p in data.glob("audit.jsonl*"))
        if "events" in chosen:
            children.append(Child("events", events_flood(control, reopen()), child_deadline))
        if "force" in chosen:
            children.append(Child("force", force_flood(control), child_deadline, uid=NOBODY))
        if "writer" in chosen:
            children.append(Child("writer", shared_writer(tmp / "staging", shared), child_deadline))
        if "fifo" in chosen:
            replace_with_fifo(config)
        if mount is not None:
            mount.gate.touch()
        attacked = window(proc, data, port, seconds)
        audit_after = sum(p.stat().st_size for p in audit.parent.glob("audit.jsonl*"))

        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # the attacks still running, the config a FIFO
        exit_seconds = stopped_within(proc, tmp / "stdout.jsonl", sent, GRACE_SECONDS + 20)
        if mount is not None:
            mount.gate.unlink(missing_ok=True)  # the kernel lets the process go now
        try:
            code: int | None = proc.wait(timeout=GRACE_SECONDS + 20)
        except subprocess.TimeoutExpired:
            code = None
        exit_seconds = exit_seconds if exit_seconds is not None else time.monotonic() - sent
        counts = {c.name: c.finish() for c in children}
        log = (tmp / "stdout.jsonl").read_text(errors="replace")
        rejected = log.count('"config reload rejected')
        dropped = log.count('"control client dropped"')
        if os.environ.get("BENCH_ATTACKS_DEBUG"):
            msgs: dict[str, int] = {}
            for line in log.splitlines():
                try:
                    msg = str(json.loads(line).get("msg"))
                except ValueError:
                    msg = line[:60]
                msgs[msg] = msgs.get(msg, 0) + 1
            print(json.dumps(msgs, indent=1), file=sys.stderr)
    finally:
        for c in children:
            c.finish(timeout=2.0)
        if mount is not None:
            mount.gate.unlink(missing_ok=True)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        out.close()
        err.close()
        if mount is not None:
            mount.close()
        stderr_tail = (tmp / "stderr.txt").read_text(errors="replace")[-1000:]
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(public, ignore_errors=True)
    return {
        "seconds": seconds,
        "attacks": "all five attacks at once" if chosen == set(ATTACKS) else "+".join(
            a for a in ATTACKS if a in chosen) + " only",
        "quiet": quiet,
        "attacked": attacked,
        "audit": audit_after,
        "audit_growth": audit_after - audit_before,
        "exit_seconds": exit_seconds,
        "code": code,
        "counts": counts,
        "rejected": rejected,
        "dropped": dropped,
        "stderr": stderr_tail,
        "namespaces": SHARED + SOLO + (refusal is None),
        "mount": "a hung mount" if refusal is None else f"no hung mount ({refusal})",
    }


def stopped_within(proc: subprocess.Popen, log: Path, sent: float, timeout: float) -> float | None:
    """Seconds from SIGTERM to the process's end or its "stopped" line, whichever is first."""
    deadline = sent + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None or '"stopped"' in log.read_text(errors="replace"):
            return time.monotonic() - sent
        time.sleep(0.05)
    return None


def fmt(answers: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())) or "none"


def run() -> list[tuple[str, str, str]]:
    m = measure()
    q, a = m["quiet"], m["attacked"]
    assert isinstance(q, dict) and isinstance(a, dict)
    counts = m["counts"]
    assert isinstance(counts, dict)
    mib = 1024 * 1024
    secs = f"{m['seconds']:.0f} s"
    ratio = 100.0 * a["rate"] / q["rate"] if q["rate"] else 0.0
    code = m["code"]
    force, events, writer = (counts.get(k, {}) for k in ("force", "events", "writer"))
    rows = [
        (f"host attacks: anchors/s unattacked ({m['namespaces']} namespaces every 1 s, {secs})",
         f"{q['rate']:.1f}", "the baseline"),
        (f"host attacks: anchors/s, {m['attacks']} ({m['mount']})",
         f"{a['rate']:.1f}", f">= 90 % of unattacked: {ratio:.0f} %"),
        ("host attacks: /livez p99 / max, attacked",
         f"{a['livez_p99'] * 1000:.1f} / {a['livez_max'] * 1000:.1f} ms",
         f"< 100 ms ({a['probes']:.0f} probes, {a['slow']:.0f} >= 100 ms, the max at "
         f"+{a['worst_at']:.1f} s; unattacked {q['livez_p99'] * 1000:.1f} / "
         f"{q['livez_max'] * 1000:.1f} ms)"),
        ("host attacks: /health max, attacked",
         f"{a['health_max'] * 1000:.1f} ms",
         f"< 100 ms ({a['health_probes']:.0f} probes; unattacked {q['health_max'] * 1000:.1f} ms;"
         f" failed or bad answers {a['bad'] + q['bad']:.0f})"),
        ("host attacks: fds peak, attacked",
         f"{a['fds']:.0f}", f"bounded, < {DAEMON_NOFILE} (unattacked {q['fds']:.0f})"),
        ("host attacks: memory peak RSS / USS, attacked",
         f"{a['rss'] / mib:.1f} / {a['uss'] / mib:.1f} MiB",
         f"bounded (unattacked {q['rss'] / mib:.1f} / {q['uss'] / mib:.1f} MiB)"),
        ("host attacks: audit.jsonl bytes after the force flood",
         f"{m['audit']:,}",
         f"bounded, < 16 KiB (uid {NOBODY}'s 60 KiB forces, answers by status: "
         f"{fmt(force)})"),
        ("host attacks: SIGTERM, attacked, to exit (or to 'stopped' with the mount hung)",
         f"{m['exit_seconds']:.2f} s, exit {code}",
         f"< {GRACE_SECONDS:.0f} s, exit 0 ({events.get('opened', 0)} /v1/events clients "
         f"opened{' (reopening)' if reopen() else ''}, {events.get('held', 0)} held at most, {m['dropped']} dropped; "
         f"{m['rejected']} FIFO reloads rejected; {writer.get('files', 0)} shared files)"),
    ]
    return rows


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
