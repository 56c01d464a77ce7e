"""The file store's pending index (core/store/files/pending.py): one list per commit chunk,
durable before any of its receipts is linked; an older data dir's markers still read."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from core.fsutil import dumps_json
from core.receipts import Receipt, load_receipt
from core.store.files.receipts import ReceiptStore
from tests.unit.test_receipts import AT, counting_reads, receipts_for

ROOT = Path(__file__).resolve().parents[2]


def lists(root: Path) -> list[Path]:
    return sorted((root / ".pending").glob("*.list"))


def marker(root: Path, receipt: Path) -> Path:
    """An older scheduler's index entry: an empty marker per pending receipt."""
    return root / ".pending" / receipt.parent.name / receipt.stem


def pending_on_disk(root: Path) -> set[Path]:
    """What a full scan finds pending (what the index must not miss)."""
    return {p for p, r in ReceiptStore(root).every() if isinstance(r, Receipt) and r.status == "pending"}


def written(results: list[Path | Exception]) -> list[Path]:
    assert all(isinstance(r, Path) for r in results), results
    return [r for r in results if isinstance(r, Path)]


def test_a_chunk_of_pending_receipts_adds_one_file_to_the_index(tmp_path: Path, monkeypatch) -> None:
    store = ReceiptStore(tmp_path)
    store.pending()  # a new data dir: its index complete
    before = set((tmp_path / ".pending").rglob("*"))

    paths = written(store.write_many(receipts_for(50, status="pending")))

    added = set((tmp_path / ".pending").rglob("*")) - before
    assert [p.suffix for p in added] == [".list"], "not one index file for the chunk"
    [listing] = added
    assert sorted(listing.read_text().splitlines()) == sorted(f"{p.parent.name}/{p.name}" for p in paths)
    reads = counting_reads(monkeypatch)
    assert [p for p, _ in ReceiptStore(tmp_path).pending()] == sorted(paths, key=lambda p: p.name)
    assert sorted(reads) == sorted(paths)  # a start reads what the index names, once each


def test_a_chunks_list_goes_with_the_last_of_its_receipts_confirmed(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    store.pending()
    paths = written(store.write_many(receipts_for(3, status="pending") + receipts_for(1, at=AT + 1)))
    assert len(lists(tmp_path)) == 1
    store.confirm(paths[0], 2)
    store.confirm(paths[1], 2)
    assert len(lists(tmp_path)) == 1, "a list went while one of its receipts is pending"
    assert [p for p, _ in store.pending()] == [paths[2]]
    store.confirm(paths[2], 2)
    assert lists(tmp_path) == []
    assert ReceiptStore(tmp_path).pending() == []


def test_a_list_mostly_confirmed_is_written_again_smaller_at_a_start(tmp_path: Path, monkeypatch) -> None:
    store = ReceiptStore(tmp_path)
    store.pending()
    paths = written(store.write_many(receipts_for(10, status="pending")))
    for path in paths[2:]:
        store.confirm(path, 2)
    assert {p for p, _ in ReceiptStore(tmp_path).pending()} == set(paths[:2])

    [listing] = lists(tmp_path)
    assert sorted(listing.read_text().splitlines()) == sorted(f"{p.parent.name}/{p.name}" for p in paths[:2])
    reads = counting_reads(monkeypatch)
    assert {p for p, _ in ReceiptStore(tmp_path).pending()} == set(paths[:2])
    assert sorted(reads) == sorted(paths[:2]), "the next start read the confirmed ones again"


def test_a_list_torn_by_a_crash_is_read_to_its_last_whole_line_then_dropped(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    store.pending()
    [kept] = written(store.write_many(receipts_for(1, status="pending")))
    # A chunk's list a crash cut short (zeros where the disk had not written yet): its
    # receipts were never linked, since linking waits for the list's flush.
    torn = tmp_path / ".pending" / "0badc0de.list"
    torn.write_bytes(
        b"dao%3Ans7/20260101T000000123Z-fast-aaaaaaaaaaaa.json\n../escape.json\n\xff\n\x00\x00\x00dao%3Ans8/202601"
    )

    assert [p for p, _ in ReceiptStore(tmp_path).pending()] == [kept]
    assert not torn.exists(), "a list naming no pending receipt stayed"
    assert len(lists(tmp_path)) == 1


def test_an_older_data_dirs_markers_are_still_read_and_cleaned(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    store.pending()
    old = written(store.write_many(receipts_for(3, status="pending")))
    for path in old:  # as an older scheduler indexed them: a marker each, no list
        marker(tmp_path, path).parent.mkdir(parents=True, exist_ok=True)
        marker(tmp_path, path).touch()
    for listing in lists(tmp_path):
        listing.unlink()

    restarted = ReceiptStore(tmp_path)
    assert [p for p, _ in restarted.pending()] == sorted(old, key=lambda p: p.name)
    restarted.confirm(old[0], 2)
    assert not marker(tmp_path, old[0]).exists()
    # A crash after a confirmation, before its marker went: dropped when read.
    old[1].write_bytes(dumps_json(load_receipt(old[1]).confirmed(2).to_json()))
    new = written(restarted.write_many(receipts_for(2, status="pending", at=AT + 60)))

    assert {p for p, _ in ReceiptStore(tmp_path).pending()} == {old[2], *new}
    assert not marker(tmp_path, old[1]).exists()
    assert marker(tmp_path, old[2]).exists()
    assert not [p for p in new if marker(tmp_path, p).exists()], "new receipts got a marker each"


def test_a_start_reading_the_index_while_a_chunk_is_linked_keeps_the_chunk_indexed(tmp_path: Path, monkeypatch) -> None:
    """The confirmation tracker's first round runs on its own thread, the writer on its."""
    import core.batchfs
    import core.store.files.receipts as mod

    ReceiptStore(tmp_path).pending()  # an earlier start: the index complete
    store = ReceiptStore(tmp_path)  # this start: the index not read yet
    linking, go_on = threading.Event(), threading.Event()
    real = core.batchfs.publish_all

    def publish_all(pairs: list[tuple[str, str]]) -> list[bool | OSError]:
        if not linking.is_set():
            linking.set()
            go_on.wait(30)
        return real(pairs)

    monkeypatch.setattr(mod, "publish_all", publish_all)
    results: list[Path | Exception] = []
    writer = threading.Thread(target=lambda: results.extend(store.write_many(receipts_for(5, status="pending"))))
    writer.start()
    try:
        assert linking.wait(30)
        assert store.pending() == []  # none linked yet
    finally:
        go_on.set()
        writer.join(30)
    paths = written(results)
    assert {p for p, _ in store.pending()} == set(paths)
    assert {p for p, _ in ReceiptStore(tmp_path).pending()} == set(paths), "a restart lost pending receipts"


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path

    import core.fsutil
    import core.store.files.receipts as mod
    from core.store.files.receipts import ReceiptStore
    from tests.unit.test_receipts import AT, receipts_for

    root, point, mod.SLICE = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    store = ReceiptStore(root)
    store.pending()
    first = store.write_many(receipts_for(20, status="pending"))

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    def after(n, fn, name):
        calls = [0]
        def wrapped(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                die()
            return fn(*args, **kwargs)
        setattr(mod, name, wrapped)

    if point == "list":  # the chunk's list written, not flushed
        after(1, mod.sync_barrier, "sync_barrier")
    elif point == "links":  # flushed, halfway through the links: 9 linked, then the kill
        real = mod.publish_all
        mod.publish_all = lambda pairs: (real(pairs[:9]), die()) if pairs else real(pairs)
    elif point == "names":  # every receipt linked, before the second flush
        after(2, mod.sync_barrier, "sync_barrier")
    elif point.startswith("flush"):  # a chunk of slices, at its n-th flush (on the flushes' thread)
        after(int(point[5:]), mod.sync_barrier, "sync_barrier")
    elif point == "confirm":  # a confirmation written, its index entry still there
        real = mod.atomic_write_bytes
        mod.atomic_write_bytes = lambda *a, **k: (real(*a, **k), die())
        store.confirm(first[0], 2)
    store.write_many(receipts_for(20, status="pending", at=AT + 60))
    sys.exit(3)
    """
)


@pytest.mark.parametrize(("point", "pending", "chunks"), [("list", 20, 1), ("links", 29, 2), ("names", 40, 2), ("confirm", 19, 1)])
def test_a_kill_9_anywhere_in_a_chunk_leaves_no_pending_receipt_outside_the_index(
    tmp_path: Path, point: str, pending: int, chunks: int
) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), point, "256"], env=env, cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()

    on_disk = pending_on_disk(tmp_path)
    assert len(on_disk) == pending
    assert {p for p, _ in ReceiptStore(tmp_path).pending()} == on_disk
    assert not [p for p in (tmp_path / ".pending").iterdir() if p.is_dir()], "a marker per receipt"
    assert len(lists(tmp_path)) == chunks  # a list naming no pending receipt went when read


@pytest.mark.parametrize("point", ["flush1", "flush2", "flush3", "flush4", "flush5", "links"])
def test_a_kill_9_anywhere_in_a_chunk_of_slices_leaves_no_pending_receipt_outside_the_index(tmp_path: Path, point: str) -> None:
    """Slices of 8: the second chunk of 20 goes as 2, 8, 8 and 2, five flushes on a thread
    of their own while the writer stages and links (what it has done when the kill comes
    varies; what the index names must not)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), point, "8"], env=env, cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()

    on_disk = pending_on_disk(tmp_path)
    assert 20 <= len(on_disk) <= 40
    assert {p for p, _ in ReceiptStore(tmp_path).pending()} == on_disk
    assert not [p for p in (tmp_path / ".pending").iterdir() if p.is_dir()], "a marker per receipt"
