"""Ten thousand namespaces' first pass, and how fast each store writes receipts (issue 24).

1. First pass (the real program): `vmsh-scheduler --no-ui` as a subprocess on 10,000
   namespaces due at once on the embedded `local:bench` TSA (the world of
   bench/headless_bench.py: one batch per namespace, cadence 1h, so each job anchors
   once, all of them in one aggregated TSA call). Timed from the process's start, and from
   its "scheduler started" line, to the last "anchored" line (each logged once the job's
   receipt is fsynced and committed). CPU per anchor: the CPU (utime + stime) of the
   process and its children (mkdir(1), the receipt writer process) from "scheduler
   started" until the 10,000th "anchored" line, over 10,000.
   BENCH_SCALE_NAMESPACES changes the count. Each run also reads the idle USS 3 s after
   its last receipt (Private_Clean + Private_Dirty of smaps_rollup, with any child still
   running: the receipt writer process ends 2 s after its last chunk); the same is run at
   1,000 and at 100,000 namespaces (BENCH_SCALE_HUGE=0 skips the 100,000 run).
2. Receipts written per second, in process, on each store, the way the engine commits
   them (`Claims.commit` of `commit_chunk` receipts per call, under fences claimed
   before): 10,000 receipts of one aggregated anchor (an RFC 3161 token's size, a
   14-hash audit path), confirmed ones (a TSA's) and, on the file store, pending ones too
   (an EVM anchor's: named in the pending index's list of their chunk). The file store in a
   temp folder (BENCH_DATA_DIR to choose the disk); PostgreSQL on the server of
   tests/cluster/postgres.py (fsync and synchronous_commit on; a new server for each of
   PG_ROUNDS runs: the best and the median), skipped without its binaries.
3. CPU per receipt of one aggregated anchor of 10,000, in process, no disk: building them
   (core.receipts.AnchorReceipts, as the engine's commit does) and making each file's bytes
   (Receipt.to_bytes).

The machine's references (the TSA alone, the disk's raw fsync rate) are printed by the
costs suite (bench/costs_bench.py).

Every data dir of the suite is kept until its end (`Scratch`), not removed after its
measure: on ext4 without a journal (this sandbox's root file system), a create skips every
free inode deleted in the last vm.dirtytime_expire_seconds (12 h) whose inode table block
is cached, so the 40,000 files a 10,000 pass leaves, removed before the next measure, made
each file that measure created cost the kernel several times more (the disk alone: 14,000
folders and files per second after a cache drop, 1,700-2,400 after removing the previous
run's; raw_create_rate's 200,000 files were removed just before the 100,000 pass). A
scheduler in service does not remove 40,000 files before each pass; the last row prints
what a create costs the kernel on the data dir's disk as the suite found it and at its
end all the same (files tests or other benches removed still count).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.headless_bench import CLI, LogFollower, make_config, stop
from bench.host_attacks_bench import rss_uss
from core.batchfs import NATIVE
from core.engine.commit import aggregate
from core.fsutil import sync_barrier
from core.jobs import JobKey, JobState, Row, safe_name
from core.receipts import AnchorReceipts, Receipt
from core.store.files.claims import FileClaims
from core.store.files.receipts import ReceiptStore
from core.store.protocols import Committed

PASS_TIMEOUT = 600.0
RECEIPTS = int(os.environ.get("BENCH_SCALE_RECEIPTS", "10000"))
FIRST_PASS_TARGET = "< 2 s"
RATE_TARGET = "> 10,000 /s, fsync'd before counted"
CPU_TARGET = "< 0.2 ms"
IDLE_SETTLE = 3.0  # seconds after the first pass before the idle memory is read
USS_TARGETS = {1_000: 50, 10_000: 100, 100_000: 600}  # MiB, idle after the first pass
HUGE = 100_000
HUGE_PASS_TARGET = "< 20 s"
PG_ROUNDS = 3  # PostgreSQL commit runs, each on a new server


class Scratch:
    """Where the suite's measures make their data dirs: each in `kept_in`, left there for
    the suite to remove at its end (see the module docstring); without one, each removed
    as its measure ends (a measure run alone)."""

    def __init__(self, kept_in: Path | None = None) -> None:
        self.kept_in = kept_in

    @contextlib.contextmanager
    def folder(self, prefix: str) -> Iterator[Path]:
        if self.kept_in is not None:
            yield Path(tempfile.mkdtemp(prefix=prefix, dir=self.kept_in))
            return
        with tempfile.TemporaryDirectory(prefix=prefix, dir=os.environ.get("BENCH_DATA_DIR")) as name:
            yield Path(name)


EACH_REMOVED = Scratch()  # a measure run alone: its data dir removed as it ends


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, of the children it has waited for (utime +
    cutime, stime + cstime of /proc/<pid>/stat) and of those still running (their own
    figures): the mkdir(1) processes that make the receipt folders at start and the receipt
    writer process are the scheduler's work too."""
    user = system = 0
    for n, one in enumerate([pid, *children(pid)]):
        try:
            text = Path(f"/proc/{one}/stat").read_text()
        except OSError:  # ended meanwhile: counted in cutime once waited for
            continue
        fields = text[text.rindex(")") + 2 :].split()
        user += int(fields[11]) + (int(fields[13]) if n == 0 else 0)
        system += int(fields[12]) + (int(fields[14]) if n == 0 else 0)
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def children(pid: int) -> list[int]:
    """The processes `pid` started that are still running (or not yet waited for)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def family_memory(pid: int) -> tuple[int, int]:
    """(USS, private pages of mapped files) of a scheduler and its running children (the
    receipt writer process while it runs: it ends once idle)."""
    uss = files = 0
    for one in [pid, *children(pid)]:
        try:
            uss += rss_uss(one)[1]
            files += private_file_pages(one)
        except OSError:
            continue
    return uss, files


def namespaces() -> int:
    return int(os.environ.get("BENCH_SCALE_NAMESPACES", "10000"))


def seed_batches(folder: Path, n: int) -> None:
    """One batch file per namespace, as core.sources.write_batch writes them, without its
    fsync per file (100,000 of them took minutes): one sync at the end."""
    for i in range(n):
        ns = folder / safe_name(f"bench:{i}")
        ns.mkdir(parents=True)
        (ns / "000001.json").write_text(json.dumps({"id": "000001", "root": "sha256:" + f"{i + 1:064x}"}, indent=2) + "\n")
    os.sync()


def first_pass(n: int, scratch: Scratch = EACH_REMOVED) -> dict[str, float]:
    with scratch.folder("vmsh-scale-bench-") as tmp:
        seed_batches(tmp / "batches", n)
        config = make_config(tmp, n)
        log_path = tmp / "stdout.jsonl"
        follower = LogFollower(log_path)
        with open(log_path, "wb") as log, open(tmp / "stderr.txt", "wb") as err:
            t0 = time.time()
            proc = subprocess.Popen(
                [*CLI, "--no-ui", "--config", str(config)], stdout=log, stderr=err, stdin=subprocess.DEVNULL, cwd=tmp
            )
            try:
                cpu_started = None
                deadline = time.monotonic() + PASS_TIMEOUT
                while follower.anchored < n:
                    if proc.poll() is not None:
                        raise RuntimeError(f"vmsh-scheduler exited {proc.returncode}: " + (tmp / "stderr.txt").read_text()[-2000:])
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"first pass not done within {PASS_TIMEOUT:.0f} s ({follower.anchored} of {n})")
                    follower.poll()
                    if cpu_started is None and follower.started_at is not None:
                        cpu_started = cpu_split(proc.pid)
                    time.sleep(0.01)
                cpu_done = cpu_split(proc.pid)
                time.sleep(IDLE_SETTLE)  # the pass is over: what an idle scheduler of n jobs keeps
                uss, uss_files = family_memory(proc.pid)
            finally:
                code = stop(proc)
        if code != 0:
            raise RuntimeError(f"vmsh-scheduler exited {code} after SIGTERM, expected 0")
    started, last = follower.started_at, follower.last_anchored_at
    assert started is not None and last is not None and cpu_started is not None
    assert follower.anchor_started_at is not None and follower.first_anchored_at is not None
    return {
        "from_process": last - t0,
        "from_started": last - started,
        "to_call": follower.anchor_started_at - started,
        "receipts": last - follower.first_anchored_at,
        "cpu_per_anchor": (sum(cpu_done) - sum(cpu_started)) / n,
        "system_share": (cpu_done[1] - cpu_started[1]) / max(1e-9, sum(cpu_done) - sum(cpu_started)),
        "uss": uss,
        "uss_files": uss_files,
    }


# --------------------------------------------------------------------------- store rates


def receipts(n: int, status: str, tree: tuple[list[bytes], bytes, list[list[bytes]]] | None = None) -> list[Receipt]:
    """The receipts of one aggregated anchor of n jobs, as the engine builds them (one
    AnchorReceipts: the parts they share made once); `tree`: its leaves, root and audit paths
    (`tree_of`), when made already."""
    roots, digest, proofs = tree or tree_of(n)
    token = {"scheme": "rfc3161", "token": base64.b64encode(os.urandom(2400)).decode()}
    make = AnchorReceipts(
        target="local:bench", anchored_root=digest, tree_size=n, attestation=token, status=status,
        confirmations_observed=0, anchored_at=time.time(), version="bench", config_hash="bench",
    )
    return [
        make.receipt(
            namespace=f"bench:{i}", cadence="fast", batch_id="000001", batch_root=roots[i], proof=proofs[i],
            leaf_index=i, confirmations_required=3 if status == "pending" else 0,
        )
        for i in range(n)
    ]


def tree_of(n: int) -> tuple[list[bytes], bytes, list[list[bytes]]]:
    roots = [(i + 1).to_bytes(32, "big") for i in range(n)]
    digest, proofs = aggregate(roots)
    return roots, digest, proofs


def receipt_cpu(n: int = RECEIPTS, rounds: int = 3) -> tuple[float, float]:
    """CPU seconds per receipt (the best of `rounds`) to build the receipts of one aggregated
    anchor of n jobs (`receipts`, its tree made before) and to make each one's file bytes
    (Receipt.to_bytes)."""
    tree = tree_of(n)
    best = (float("inf"), float("inf"))
    for _ in range(rounds):
        t0 = time.thread_time()
        batch = receipts(n, "confirmed", tree)
        t1 = time.thread_time()
        for receipt in batch:
            receipt.to_bytes()
        t2 = time.thread_time()
        best = (min(best[0], (t1 - t0) / n), min(best[1], (t2 - t1) / n))
    return best


def commit_all(claims: Any, batch: list[Receipt], intent_id: str) -> float:
    """Seconds to commit `batch` as the engine does: claims under fences, then
    `commit_chunk` receipts per `commit` call; every receipt must be written."""
    keys = [JobKey(r.namespace, r.cadence) for r in batch]
    granted = claims.claim({k: JobState() for k in keys}, 60.0)
    rows: list[Row | None] = [granted[k].row for k in keys]
    states = [JobState().to_dict() for _ in keys]
    size = claims.commit_chunk or len(batch)
    t0 = time.perf_counter()
    written = 0
    for start in range(0, len(batch), size):
        done: Committed = claims.commit(
            batch[start : start + size], states[start : start + size], rows[start : start + size], intent_id
        )
        written += sum(1 for p in done.paths if isinstance(p, Path))
    seconds = time.perf_counter() - t0
    if written != len(batch):
        raise RuntimeError(f"{written} of {len(batch)} receipts written")
    return seconds


def file_rate(status: str, scratch: Scratch = EACH_REMOVED) -> tuple[float, float]:
    """Receipts per second of a first round (each namespace's folder made) and of a next
    round into the folders that exist (a scheduler's every pass after its first)."""
    with scratch.folder("vmsh-scale-files-") as name:
        store = ReceiptStore(Path(name) / "receipts")
        store.pending()  # a new data dir: its pending index complete from the start
        first = RECEIPTS / commit_all(FileClaims(store), receipts(RECEIPTS, status), "bench")
        time.sleep(0.002)  # the next round's receipts get other names
        store = ReceiptStore(Path(name) / "receipts")  # as after a restart: nothing known
        store.pending()
        return first, RECEIPTS / commit_all(FileClaims(store), receipts(RECEIPTS, status), "bench")


def best2(rounds: int, fn: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    runs = [fn() for _ in range(rounds)]
    return max(r[0] for r in runs), max(r[1] for r in runs)


def postgres_rate() -> float | None:
    """Receipts per second of PgStateStore.commit on a real server; None without one."""
    from tests.cluster.postgres import PASSWORD, PostgresServer, find_bin_dir

    if find_bin_dir() is None:
        return None
    from bench.cluster import server_folder
    from core.store.postgres.database import Database
    from core.store.postgres.journal import PgJournal
    from core.store.postgres.state import PgStateStore

    server = PostgresServer(server_folder())
    try:
        server.start()
        db = Database(server.url, password=PASSWORD)
        try:
            db.migrate()
            batch = receipts(RECEIPTS, "confirmed")
            intent = PgJournal(db, "bench", liveness=60.0).open(
                "local:bench", [{"job": f"{r.namespace}/{r.cadence}", "batch": {"id": "1", "root": r.batch.root},
                                 "leaf_index": r.leaf_index} for r in batch], "00" * 32, time.time(),
            )
            return RECEIPTS / commit_all(PgStateStore(db, "bench"), batch, intent.id)
        finally:
            db.close()
    finally:
        server.cleanup()


def raw_create_rate(
    n: int = RECEIPTS, chunk: int = 1024, *, folders_there: bool = False, scratch: Scratch = EACH_REMOVED
) -> float:
    """The disk's own ceiling for what a first pass asks of it, with no code of ours: n
    folders made, a 3 KB file created in each, one syncfs(2) (or sync) per `chunk`; per
    second. `folders_there`: the folders are made (and synced) before the clock starts, as
    for a later round's receipts."""
    data = os.urandom(3072)
    with scratch.folder("vmsh-scale-raw-") as where:
        name = str(where)
        folders = [os.path.join(name, f"ns{i}") for i in range(n)]
        if folders_there:
            for folder in folders:
                os.mkdir(folder)
            sync_barrier(folders=[name])
        t0 = time.perf_counter()
        for i, folder in enumerate(folders):
            if not folders_there:
                os.mkdir(folder)
            fd = os.open(os.path.join(folder, "r.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            os.write(fd, data)
            os.close(fd)
            if i % chunk == chunk - 1 or i == n - 1:
                sync_barrier(folders=[name])
        return n / (time.perf_counter() - t0)


def file_system(folder: str) -> str:
    """The file system `folder` is on, from /proc/self/mountinfo (the longest mount point
    holding it) and, for ext4, /proc/fs/jbd2 (a journal's thread is listed there by its
    device): "ext4 on /dev/vda, no journal"."""
    real = os.path.realpath(folder)
    best: tuple[str, list[str]] | None = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                point = left.split()[4].replace("\\040", " ")
                if (real == point or real.startswith(point.rstrip("/") + "/")) and (best is None or len(point) > len(best[0])):
                    best = (point, right.split())
    except OSError:
        return "unknown (no /proc/self/mountinfo)"
    if best is None:
        return "unknown"
    fstype, source = best[1][0], best[1][1]
    if fstype != "ext4":
        return f"{fstype} on {source}"
    device = os.path.basename(source)
    try:
        journaled = any(name.startswith(device + "-") for name in os.listdir("/proc/fs/jbd2"))
    except OSError:
        journaled = False
    return f"ext4 on {source}, {'journaled' if journaled else 'no journal'}"


def create_cost(n: int = 3000, scratch: Scratch = EACH_REMOVED) -> float:
    """Kernel CPU seconds per empty file created in a new folder of the data dir's disk
    (the system time of n creates)."""
    with scratch.folder("vmsh-scale-create-") as folder:
        before = os.times().system
        for i in range(n):
            os.close(os.open(os.path.join(folder, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
        return (os.times().system - before) / n


def disk_rows(at_start: float, scratch: Scratch = EACH_REMOVED) -> list[tuple[str, str, str]]:
    """What the data dir's file system costs a create (`at_start`: before the suite's first
    measure; again now), and why it may cost more than a healthy disk's (the rows above
    divide by it)."""
    where = os.environ.get("BENCH_DATA_DIR") or tempfile.gettempdir()
    fs = file_system(where)
    note = f"{fs} ({where})"
    if fs.endswith("no journal"):
        try:
            window = int(Path("/proc/sys/vm/dirtytime_expire_seconds").read_text())
        except (OSError, ValueError):
            window = 43_200
        note += (f": without a journal, ext4 skips at each create every inode deleted in the last "
                 f"{window:,} s (vm.dirtytime_expire_seconds), so a disk with much recent churn (test "
                 "runs) pays far more per create than a fresh or journaled one")
    return [("reference: kernel CPU per file created on the data dir's file system",
             f"{create_cost(scratch=scratch) * 1e6:.0f} us", f"{at_start * 1e6:.0f} us before the suite's first measure; {note}")]


def best_of(rounds: int, fn: Callable[[], float]) -> float:
    return max(fn() for _ in range(rounds))


def private_file_pages(pid: int) -> int:
    """Bytes of the USS in pages of mapped files (libraries whose pages no other process has
    mapped at the time: the C extensions' code above all), from /proc/<pid>/smaps. They
    count in the USS while nothing else maps them and leave it when something does, so the
    same daemon reads 44 or 56 MiB at 1,000 namespaces; the rest is its own heap."""
    total = 0
    file_backed = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header
            file_backed = len(fields) >= 6 and fields[5].startswith("/")
        elif file_backed and fields and fields[0] in ("Private_Clean:", "Private_Dirty:"):
            total += int(fields[1]) * 1024
    return total


def own_memory(figures: dict[str, float]) -> float:
    """A daemon's USS (`uss`) less the pages of mapped files no other process mapped at the
    time (`uss_files`, from `private_file_pages`): the memory it holds itself."""
    return figures["uss"] - figures["uss_files"]


def uss_row(n: int, m: dict[str, float]) -> tuple[str, str, str]:
    target = USS_TARGETS.get(n)
    split = (f"; of it {m['uss_files'] / 2**20:.0f} MiB mapped files' pages no other process maps, "
             f"{own_memory(m) / 2**20:.0f} MiB the rest")
    return (f"USS idle after the first pass, {n:,} namespaces", f"{m['uss'] / 2**20:.0f} MiB",
            (f"target < {target} MiB" if target else "no target at this size") + split)


def run() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory(prefix="vmsh-scale-suite-", dir=os.environ.get("BENCH_DATA_DIR")) as suite:
        return measures(Scratch(kept_in=Path(suite)))  # every data dir removed here, at the end


def measures(scratch: Scratch) -> list[tuple[str, str, str]]:
    create_at_start = create_cost(scratch=scratch)  # the disk as the suite found it
    n = namespaces()
    m = first_pass(n, scratch)
    rows = [
        (f"{n:,} namespaces, start to every one anchored once (aggregated)", f"{m['from_process']:.2f} s",
         f"target {FIRST_PASS_TARGET} (was 21 s); from 'scheduler started' {m['from_started']:.2f} s: "
         f"{m['to_call']:.2f} s to the TSA call (batches read, claim, intent), first to last receipt "
         f"{m['receipts']:.2f} s"),
        (f"CPU per anchor at {n:,} namespaces (first pass)", f"{m['cpu_per_anchor'] * 1e3:.3f} ms",
         f"target {CPU_TARGET} (was 1.25 ms); {m['system_share']:.0%} of it in the kernel (system time)"),
        uss_row(n, m),
    ]
    if n != 1_000:
        rows.append(uss_row(1_000, first_pass(1_000, scratch)))
    if os.environ.get("BENCH_SCALE_HUGE", "1") != "0":  # BENCH_SCALE_HUGE=0 skips the 100,000 run
        floor = HUGE / raw_create_rate(HUGE, scratch=scratch)
        try:
            huge = first_pass(HUGE, scratch)
        except RuntimeError as exc:  # not done in PASS_TIMEOUT: the row says so, the others still run
            rows.append((f"{HUGE:,} namespaces, start to every one anchored once (aggregated)", "not done",
                         f"target {HUGE_PASS_TARGET}; {exc}; the disk alone makes its {HUGE:,} folders and files in {floor:.1f} s"))
        else:
            rows += [
                (f"{HUGE:,} namespaces, start to every one anchored once (aggregated)", f"{huge['from_process']:.1f} s",
                 f"target {HUGE_PASS_TARGET}; from 'scheduler started' {huge['from_started']:.1f} s, "
                 f"CPU per anchor {huge['cpu_per_anchor'] * 1e3:.3f} ms; the disk alone makes its {HUGE:,} "
                 f"folders and files in {floor:.1f} s"),
                uss_row(HUGE, huge),
            ]
    built, serialized = receipt_cpu()
    rows.append(
        (f"CPU per receipt of one aggregated anchor of {RECEIPTS:,}: built / its file's bytes",
         f"{built * 1e6:.1f} / {serialized * 1e6:.1f} us",
         "in process, no disk (was ~22 / ~11 us: each built alone, its token encoded again for each)")
    )
    confirmed = best2(2, lambda: file_rate("confirmed", scratch))
    pending = best2(2, lambda: file_rate("pending", scratch))
    calls = "a slice's calls in one C call" if NATIVE is not None else "calls one by one (core._fsbatch not built)"
    rows += [
        (f"receipts written per second, file store ({RECEIPTS:,} confirmed, folders there)", f"{confirmed[1]:,.0f} /s",
         f"target {RATE_TARGET} (was ~900); a first round, each folder made: {confirmed[0]:,.0f} /s; {calls}"),
        (f"receipts written per second, file store ({RECEIPTS:,} pending: in the pending index)", f"{pending[1]:,.0f} /s",
         f"target {RATE_TARGET}; a first round: {pending[0]:,.0f} /s"),
    ]
    raw = best_of(2, lambda: raw_create_rate(scratch=scratch))
    rows.append(
        (f"reference: the disk alone, {RECEIPTS:,} folders made and a 3 KB file in each, one flush per 1,024",
         f"{raw:,.0f} /s", "no code of ours: the ceiling of a first pass's file store writes on this disk")
    )
    raw_there = best_of(2, lambda: raw_create_rate(folders_there=True, scratch=scratch))
    rows.append(
        (f"reference: the disk alone, a 3 KB file created in each of {RECEIPTS:,} folders there, one flush per 1,024",
         f"{raw_there:,.0f} /s", "no code of ours: the ceiling of a later round's file store writes on this disk")
    )
    rows += disk_rows(create_at_start, scratch)
    pg = sorted(rate for rate in (postgres_rate() for _ in range(PG_ROUNDS)) if rate is not None)
    rows.append(
        (f"receipts written per second, PostgreSQL store ({RECEIPTS:,})",
         f"{pg[-1]:,.0f} /s" if pg else "skipped",
         f"target {RATE_TARGET} (was ~4,700), with the state and the lease's release; median of "
         f"{len(pg)} runs {statistics.median(pg):,.0f} /s" if pg else "no PostgreSQL server binaries")
    )
    return rows


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
