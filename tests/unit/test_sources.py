"""Latest batch of a namespace folder: newest by name, every malformed case, the cache."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from core import batchread, sources
from core.errors import ErrorKind, ValidationError, classify
from core.sources import Batch, SourceError, latest_batch, natural_key, write_batch

pytestmark = pytest.mark.usefixtures("batch_reads", "fresh_batch_cache")  # each test both ways (tests/conftest.py)

R1 = "sha256:" + "11" * 32
R2 = "sha256:" + "22" * 32
R3 = "sha256:" + "33" * 32


def age(path: Path, seconds: float = 60) -> None:
    """Make a file or folder look old enough for the cache to trust it."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_newest_by_name_not_mtime(tmp_path: Path) -> None:
    write_batch(tmp_path, "b", R2, name="2026-01-02T00-00-00Z.json")
    write_batch(tmp_path, "c", R3, name="2026-01-10T00-00-00Z.json")
    newest_mtime = write_batch(tmp_path, "a", R1, name="2026-01-01T00-00-00Z.json")
    os.utime(newest_mtime, (time.time() + 100, time.time() + 100))
    assert latest_batch(tmp_path) == Batch("c", R3, tmp_path / "2026-01-10T00-00-00Z.json")


def test_numeric_names_natural_order(tmp_path: Path) -> None:
    write_batch(tmp_path, "99", R1, name="99.json")
    write_batch(tmp_path, "100", R2, name="100.json")
    write_batch(tmp_path, "000123", R3)
    assert latest_batch(tmp_path).id == "000123"
    assert natural_key("99.json") < natural_key("100.json")
    assert sorted(["b10", "b9", "a"], key=natural_key) == ["a", "b9", "b10"]


def test_ignores_hidden_temp_and_other_files(tmp_path: Path) -> None:
    write_batch(tmp_path, "1", R1, name="000001.json")
    (tmp_path / ".000009.json").write_text("{broken")
    (tmp_path / ".000009.json.ab12.tmp").write_text("{broken")
    (tmp_path / "000009.json.tmp").write_text("{broken")
    (tmp_path / "zzz.txt").write_text("{broken")
    (tmp_path / "999.json").mkdir()
    assert latest_batch(tmp_path).id == "1"


def test_extra_fields_case_and_bare_hex(tmp_path: Path) -> None:
    path = tmp_path / "000001.json"
    path.write_text(json.dumps({"id": 7, "root": "SHA256:" + "AB" * 32, "leaves": [1, 2]}))
    assert latest_batch(tmp_path) == Batch("7", "sha256:" + "ab" * 32, path)
    sources.clear_cache()
    path.write_text(json.dumps({"id": "x", "root": "CD" * 32}))
    assert latest_batch(tmp_path).root == "sha256:" + "cd" * 32


def test_write_batch_is_atomic_json(tmp_path: Path) -> None:
    path = write_batch(tmp_path / "new" / "folder", "000001", "sha256:" + "EF" * 32)
    assert json.loads(path.read_text()) == {"id": "000001", "root": "sha256:" + "ef" * 32}
    assert os.listdir(path.parent) == ["000001.json"]
    with pytest.raises(ValueError):
        write_batch(tmp_path, "x", "sha256:abc")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"id": "1", "root": ', "not valid JSON"),
        (b'{"id": "1",\n  "root" "x"}', ":2:10: not valid JSON"),
        (b'{"id": "\xff"}', "not UTF-8"),
        (b"[1]", "expected a JSON object, got a list"),
        (b'{"root": "' + R1.encode() + b'"}', 'missing "id"'),
        (b'{"id": "1"}', 'missing "root"'),
        (b'{"id": "", "root": "' + R1.encode() + b'"}', '"id" must be a non-empty string'),
        (b'{"id": null, "root": "' + R1.encode() + b'"}', '"id" must be a non-empty string'),
        (b'{"id": "1", "root": "sha256:1234"}', '"root" is not sha256:<64 hex>'),
        (b'{"id": "1", "root": "sha512:' + b"ab" * 32 + b'"}', '"root" is not sha256'),
        (b'{"id": "1", "root": "sha256:' + b"zz" * 32 + b'"}', '"root" is not sha256'),
        (b'{"id": "1", "root": 5}', '"root" is not sha256'),
    ],
)
def test_malformed_batch_names_the_file(tmp_path: Path, content: bytes, needle: str) -> None:
    write_batch(tmp_path, "1", R1, name="000001.json")
    bad = tmp_path / "000002.json"
    bad.write_bytes(content)
    with pytest.raises(SourceError) as info:
        latest_batch(tmp_path)
    assert str(bad) in str(info.value)
    assert needle in str(info.value)
    assert isinstance(info.value, ValidationError)
    assert classify(info.value) == ErrorKind.VALIDATION


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=f"batch folder {tmp_path / 'nope'} does not exist"):
        latest_batch(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match=f"batch folder {empty} has no batch files"):
        latest_batch(empty)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(SourceError, match="is not a folder"):
        latest_batch(afile)


def test_unreadable_file(tmp_path: Path, monkeypatch, python_reads) -> None:
    path = write_batch(tmp_path, "1", R1)
    real_open = os.open

    def denied(p, *args, **kw):
        if str(p) == str(path):
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, *args, **kw)

    monkeypatch.setattr(os, "open", denied)  # chmod 0 does not stop root
    with pytest.raises(SourceError, match=f"batch file {path}: cannot read: Permission denied"):
        latest_batch(tmp_path)
    monkeypatch.setattr(os, "open", real_open)
    assert latest_batch(tmp_path).id == "1"  # read errors are not cached


def test_cache_notices_new_file(tmp_path: Path) -> None:
    write_batch(tmp_path, "000001", R1)
    age(tmp_path / "000001.json")
    age(tmp_path)
    assert latest_batch(tmp_path).id == "000001"
    write_batch(tmp_path, "000002", R2)  # changes the folder's mtime
    assert latest_batch(tmp_path) == Batch("000002", R2, tmp_path / "000002.json")


def test_cache_notices_rewrite_in_place(tmp_path: Path) -> None:
    path = write_batch(tmp_path, "000001", R1)
    age(path)
    age(tmp_path)
    assert latest_batch(tmp_path).root == R1
    path.write_text(json.dumps({"id": "000001", "root": R2 + ""}))  # in place: folder unchanged
    age(tmp_path)
    assert latest_batch(tmp_path).root == R2


def test_unchanged_folder_costs_no_listing_no_read(tmp_path: Path, monkeypatch) -> None:
    for i in range(1, 4):
        write_batch(tmp_path, f"{i:06d}", R1)
        age(tmp_path / f"{i:06d}.json")
    age(tmp_path)
    first = latest_batch(tmp_path)
    calls = {"scandir": 0, "read": 0}
    real_scandir = os.scandir
    real_read = os.read

    def scandir(p):
        calls["scandir"] += 1
        return real_scandir(p)

    def read(fd, n):
        calls["read"] += 1
        return real_read(fd, n)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "read", read)
    for _ in range(5):
        assert latest_batch(tmp_path) is first
    assert calls == {"scandir": 0, "read": 0}


def test_fresh_folder_is_not_trusted(tmp_path: Path, monkeypatch) -> None:
    """A folder changed in the same clock tick as our look is listed again next time."""
    write_batch(tmp_path, "000001", R1)
    assert latest_batch(tmp_path).id == "000001"
    st = os.stat(tmp_path)
    write_batch(tmp_path, "000002", R2)
    os.utime(tmp_path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: a coarse tick
    assert latest_batch(tmp_path).id == "000002"


def test_cached_error_until_fixed(tmp_path: Path) -> None:
    bad = tmp_path / "000001.json"
    bad.write_text("{")
    with pytest.raises(SourceError):
        latest_batch(tmp_path)
    with pytest.raises(SourceError):
        latest_batch(tmp_path)
    write_batch(tmp_path, "000002", R2)
    assert latest_batch(tmp_path).id == "000002"


def test_newest_file_removed(tmp_path: Path) -> None:
    write_batch(tmp_path, "000001", R1)
    newest = write_batch(tmp_path, "000002", R2)
    age(newest)
    age(tmp_path)
    assert latest_batch(tmp_path).id == "000002"
    newest.unlink()
    assert latest_batch(tmp_path).id == "000001"


def test_many_namespaces_per_pass_is_cheap(tmp_path: Path) -> None:
    folders = []
    for n in range(2000):
        folder = tmp_path / f"ns{n}"
        path = write_batch(folder, "000001", R1)
        age(path)
        age(folder)
        folders.append(folder)
    for f in folders:
        latest_batch(f)
    started = time.perf_counter()
    for f in folders:
        latest_batch(f)
    assert time.perf_counter() - started < 1.0


# --------------------------------------------------------------------------- hostile files


@pytest.fixture
def limits():
    """`limits(folder, **kw)` sets one folder's BatchLimits; every folder is reset after."""

    def set_limits(folder: Path, **kw) -> None:
        sources.configure({folder: sources.BatchLimits(**kw)})

    yield set_limits
    sources.configure({})


def test_a_bad_batch_read_again_and_again_keeps_memory_flat(tmp_path: Path) -> None:
    """A folder that stays invalid is read on every pass: each read must cost no memory.

    Counted in allocated blocks (tracemalloc would do, at eight times the run time): a
    cached exception re-raised kept each raise's traceback and frames, about ten blocks
    a read.
    """
    import sys

    (tmp_path / "000001.json").write_text("{broken")
    age(tmp_path / "000001.json")
    age(tmp_path)
    messages = set()
    for chunk in range(10):
        for _ in range(10_000):
            try:
                latest_batch(tmp_path)
            except SourceError as exc:
                messages.add(str(exc))
        if chunk == 0:
            baseline = sys.getallocatedblocks()
        grown = sys.getallocatedblocks() - baseline
        assert grown < 1_000, f"{grown} more memory blocks after {(chunk + 1) * 10_000} reads"
    assert messages == {f"batch file {tmp_path / '000001.json'}:1:2: not valid JSON: Expecting property name enclosed in double quotes"}


def test_a_batch_file_over_the_size_limit_is_refused_without_being_read(
    tmp_path: Path, monkeypatch, limits
) -> None:
    write_batch(tmp_path, "1", R1, name="000001.json")
    huge = tmp_path / "000002.json"
    with open(huge, "wb") as f:
        f.truncate(50_000_000)  # sparse: 50 MB by its size, nothing on disk
    read = {"bytes": 0}
    real_read = os.read

    def counting_read(fd, n):
        data = real_read(fd, n)
        read["bytes"] += len(data)
        return data

    monkeypatch.setattr(os, "read", counting_read)
    with pytest.raises(SourceError) as info:
        latest_batch(tmp_path)
    message = str(info.value)
    assert str(huge) in message
    assert "is 50000000 bytes, more than the limit of 1048576 bytes (scheduler.max_batch_bytes)" in message
    assert read["bytes"] == 0

    # The limit is the folder's: 2 KiB refused under 1 KiB, accepted under 4 KiB.
    huge.write_text(json.dumps({"id": "2", "root": R2, "leaves": ["x" * 2000]}))
    limits(tmp_path, max_bytes=1024)
    with pytest.raises(SourceError, match="more than the limit of 1024 bytes"):
        latest_batch(tmp_path)
    limits(tmp_path, max_bytes=4096)
    assert latest_batch(tmp_path).id == "2"


def test_a_file_that_grows_while_read_stops_at_the_limit(tmp_path: Path, monkeypatch, limits) -> None:
    # /proc files report size 0 and then give more: as a file still being written does.
    (tmp_path / "000001.json").symlink_to("/proc/self/maps")
    limits(tmp_path, max_bytes=100, follow_symlinks=True)
    read = {"bytes": 0}
    real_read = os.read

    def counting_read(fd, n):
        data = real_read(fd, n)
        read["bytes"] += len(data)
        return data

    monkeypatch.setattr(os, "read", counting_read)
    with pytest.raises(SourceError, match="grew past the limit of 100 bytes"):
        latest_batch(tmp_path)
    assert read["bytes"] <= 101


def test_a_small_batch_file_is_read_without_a_buffer_of_the_whole_limit(
    tmp_path: Path, monkeypatch, python_reads
) -> None:
    """A pass reads 100,000 files of ~100 bytes: asking the kernel for the 1 MiB limit made
    Python allocate (mmap), fault and free a 1 MiB buffer for each of them."""
    write_batch(tmp_path, "1", R1, name="000001.json")
    asked: list[int] = []
    real_read = os.read

    def recording_read(fd, n):
        asked.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", recording_read)
    assert latest_batch(tmp_path).id == "1"
    assert asked and max(asked) <= 64 * 1024, asked


def test_symbolic_links_are_not_followed_unless_allowed(tmp_path: Path, limits) -> None:
    outside = tmp_path / "outside"
    secret = write_batch(outside, "secret-id", R3, name="secret.json")
    folder = tmp_path / "batches"
    write_batch(folder, "1", R1, name="000001.json")
    (folder / "000002.json").symlink_to(secret)
    assert latest_batch(folder).id == "1"  # the link is skipped: never read

    only_links = tmp_path / "links"
    only_links.mkdir()
    (only_links / "000001.json").symlink_to(secret)
    with pytest.raises(SourceError) as info:
        latest_batch(only_links)
    assert f"batch folder {only_links} has no batch files" in str(info.value)
    assert "1 symbolic link(s) skipped (set follow_symlinks: true" in str(info.value)
    assert "secret" not in str(info.value)

    limits(folder, follow_symlinks=True)
    assert latest_batch(folder).id == "secret-id"


def test_a_file_swapped_for_a_link_after_listing_is_refused(tmp_path: Path) -> None:
    """O_NOFOLLOW: a link put in place of a listed file is not opened."""
    secret = write_batch(tmp_path / "outside", "secret-id", R3, name="secret.json")
    folder = tmp_path / "batches"
    path = write_batch(folder, "1", R1, name="000001.json")
    age(path)
    age(folder)
    assert latest_batch(folder).id == "1"
    listed = os.stat(folder)
    path.unlink()
    path.symlink_to(secret)
    os.utime(folder, ns=(listed.st_atime_ns, listed.st_mtime_ns))  # the cached listing still holds
    with pytest.raises(SourceError) as info:
        latest_batch(folder)
    assert f"batch file {path} is a symbolic link; not followed" in str(info.value)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "JSON nested too deeply"),
        (b'{"id": 1' + b"0" * 100_000 + b', "root": "' + R1.encode() + b'"}', "a number is too long"),
        (b'{"id": "' + b"x" * 1_000_000 + b'", "root": "' + R1.encode() + b'"}',
         '"id" is 1000000 characters long, more than 256'),
        (b'{"id": "1", "root": "' + b"<y>" * 1000 + b'"}', '"root" is not sha256:<64 hex> (got a 3000-character string)'),
        (b'{"id": ["' + b"<y>" * 1000 + b'"], "root": "' + R1.encode() + b'"}', '"id" must be a non-empty string, got a list'),
    ],
    ids=["deep-array", "huge-int-id", "1MB-id", "long-root", "list-id"],
)
def test_hostile_batch_content_is_named_with_the_file_and_never_echoed(
    tmp_path: Path, content: bytes, needle: str
) -> None:
    bad = tmp_path / "000001.json"
    bad.write_bytes(content)
    with pytest.raises(SourceError) as info:
        latest_batch(tmp_path)
    message = str(info.value)
    assert message.startswith(f"batch file {bad}")
    assert needle in message
    assert "<y>" not in message and "xxxx" not in message and "0000000000" not in message
    assert len(message) < len(str(bad)) + 120


def test_prefetch_hands_its_read_to_the_next_call(tmp_path: Path, monkeypatch) -> None:
    """The engine reads due folders on a worker thread; the call on the loop then does no I/O."""
    good = tmp_path / "good"
    write_batch(good, "1", R1)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "000001.json").write_text("{")
    sources.prefetch([good, bad, tmp_path / "missing"])

    def no_io(*args, **kw):
        raise AssertionError("I/O on the loop after a prefetch")

    with monkeypatch.context() as m:
        for name in ("stat", "scandir", "open", "read"):
            m.setattr(os, name, no_io)
        assert latest_batch(good).id == "1"
        with pytest.raises(SourceError, match=f"batch file {bad / '000001.json'}:1:2: not valid JSON"):
            latest_batch(bad)
    # Handed over once: the next call looks at the folder again and sees the new file.
    write_batch(good, "2", R2)
    assert latest_batch(good).id == "2"


async def test_the_engine_reads_due_batch_files_off_the_event_loop(tmp_path: Path, monkeypatch) -> None:
    """A pass opens every due batch file on a worker thread; the loop only anchors."""
    import random
    import threading

    from core.anchors.local.backend import LocalTSA
    from core.backoff import BackoffPolicy
    from core.clock import FakeClock
    from core.engine import Scheduler
    from core.events import EventBus, ReceiptWritten
    from core.jobs import JobKey, JobSpec
    from core.store.files.journal import IntentJournal
    from core.store.files.receipts import ReceiptStore
    from core.store.files.state import StateStore

    clock, bus = FakeClock(), EventBus()
    events: list[object] = []
    bus.subscribe(events.append)
    tsa = LocalTSA(tmp_path / "data", "dev", clock)
    specs = []
    for n, ns in enumerate(["a", "b", "c"], 1):
        write_batch(tmp_path / "batches" / ns, f"{n:06d}", "sha256:" + f"{n:064x}")
        specs.append(JobSpec(JobKey(ns, "fast"), "local:dev", 60, tmp_path / "batches" / ns))
    engine = Scheduler(
        jobs=specs, clock=clock, bus=bus, backend_for=lambda target: tsa,
        state_store=StateStore(tmp_path / "data" / "state" / "scheduler.json"),
        journal=IntentJournal(tmp_path / "data" / "journal"),
        receipts=ReceiptStore(tmp_path / "data" / "receipts"),
        policy=BackoffPolicy(base=5.0, max_level=7, jitter=0.0, rng=random.Random(1)),
    )
    opened_on_loop: list[str] = []
    opened_off_loop: list[str] = []
    real_open, real_newest = os.open, batchread.newest

    def opened(namespace: str) -> None:
        on_loop = threading.current_thread() is threading.main_thread()
        (opened_on_loop if on_loop else opened_off_loop).append(namespace)

    def recording_open(path, *args, **kw):
        if str(path).startswith(str(tmp_path / "batches")):
            opened(Path(path).parent.name)
        return real_open(path, *args, **kw)

    def recording_newest(folder, *args):  # the folder listed and its file read in one call
        found = real_newest(folder, *args)
        if found is not None and folder.startswith(str(tmp_path / "batches")):
            opened(Path(folder).name)
        return found

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(batchread, "newest", recording_newest)
    await engine.run_once()
    assert sorted(str(e.job) for e in events if isinstance(e, ReceiptWritten)) == ["a/fast", "b/fast", "c/fast"]
    assert opened_on_loop == []
    assert sorted(opened_off_loop) == ["a", "b", "c"]
    engine.flush()


def test_deep_json_is_refused_even_when_a_dependency_raised_the_recursion_limit(tmp_path):
    # eth-account imports py_ecc, which sets the recursion limit to 100,000: json's C scanner
    # then overflows the C stack on a deep array before any RecursionError (a segfault that
    # killed the daemon). Run where that limit is in force, in a child process.
    import subprocess
    import sys

    path = tmp_path / "deep.json"
    path.write_bytes(b"[" * 200_000 + b"]" * 200_000)
    code = (
        "import sys; sys.setrecursionlimit(100_000)\n"
        "from pathlib import Path\n"
        "from core.sources import SourceError, parse_batch\n"
        f"p = Path({str(path)!r})\n"
        "try:\n"
        "    parse_batch(p, p.read_bytes())\n"
        "except SourceError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-500:]
    assert f"batch file {path}: JSON nested too deeply" in done.stdout


def test_a_large_flat_batch_file_is_not_called_deep(tmp_path):
    entries = ",".join('{"leaf": "[not a bracket]"}' for _ in range(5000))
    data = ('{"id": "b1", "root": "sha256:' + "ab" * 32 + '", "leaves": [' + entries + "]}").encode()
    batch = sources.parse_batch(tmp_path / "big.json", data)
    assert batch.id == "b1"


def test_an_idle_cache_keeps_under_700_bytes_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 idle namespaces must fit the daemon's memory budget (issue 24): once a pass's
    reads are handed off and their hand-off is over, a folder read keeps its cache entry
    only (its batch's id, root and file name), not a Path per batch, a hand-off or the
    sort keys of a one-file folder (~530 bytes a folder now, ~1,490 before)."""
    import gc
    import tracemalloc

    folders = []
    for i in range(500):
        folder = tmp_path / f"ns{i}"
        folder.mkdir()
        (folder / "000001.json").write_text(json.dumps({"id": "000001", "root": "sha256:" + f"{i:064x}"}))
        age(folder / "000001.json")
        age(folder)
        folders.append(folder)
    monkeypatch.setattr(sources, "_HANDOFF_S", 0.0)  # the hand-off is over at once
    sources.prefetch([str(tmp_path / "warm-up")])  # the reader threads start before the count
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert sources.prefetch(folders) == {}  # as the engine names them: each job's configured Path
        assert sources.prefetch(()) == {}  # the next pass: nothing due
        gc.collect()  # a pass's garbage is not what it keeps
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept / len(folders) < 700, f"{kept / len(folders):.0f} bytes a folder"
    assert latest_batch(folders[7]) == Batch("000001", "sha256:" + f"{7:064x}", folders[7] / "000001.json")


def test_limits_keyed_ahead_of_configure_are_read_as_configure_keys_them(tmp_path: Path) -> None:
    """Limits keyed before `configure` (sources.keyed_limits, as a reload's worker thread
    keys the configuration's) are read as if `configure` had keyed them."""
    small, links = tmp_path / "small", tmp_path / "links"
    write_batch(small, "1", R1)
    write_batch(links, "1", R1)
    limits = {small: sources.BatchLimits(max_bytes=10), links: sources.BatchLimits(follow_symlinks=True)}
    try:
        sources.configure(sources.keyed_limits(limits))
        assert sources.limits_for(small).max_bytes == 10 and sources.limits_for(str(links) + "/").follow_symlinks
        assert sources.limits_for(tmp_path / "other") == sources.BatchLimits()
        with pytest.raises(SourceError, match="more than the limit of 10 bytes"):
            latest_batch(small)
    finally:
        sources.configure({})
