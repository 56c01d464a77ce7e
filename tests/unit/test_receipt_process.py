"""The file store's receipts written by a child process (core/store/files/receipt_process.py):
the same files as in process, each receipt's own outcome, the data dir's lock held by the
child, and a child that dies mid-chunk failing only what it did not answer."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from core import merkle
from core.jobs import safe_name
from core.receipts import AnchorReceipts, Receipt
from core.store.files.lock import DataDirLock, LockHeld
from core.store.files.receipt_process import ReceiptProcess
from core.store.files.receipts import ReceiptStore

AT = 1767225600.25
N = 200  # over ReceiptStore.PROCESS_FROM, and over a slice: the child stages while bytes still come


def receipts(n: int = N, status: str = "confirmed", names: list[str] | None = None) -> list[Receipt]:
    roots = [hashlib.sha256(f"batch-{i}".encode()).digest() for i in range(n)]
    leaves = [hashlib.sha256(b"leaf" + r).digest() for r in roots]
    make = AnchorReceipts(
        target="local:dev", anchored_root=merkle.tree_hash(leaves), tree_size=n,
        attestation={"token": "QUJD" * 600}, status=status, confirmations_observed=0 if status == "pending" else 1,
        anchored_at=AT, version="0.1.0", config_hash="cafe",
    )
    names = names or [f"dao:ns{i}" if i % 7 else f"dao:é/{i}" for i in range(n)]
    return [
        make.receipt(
            namespace=names[i], cadence="fast", batch_id=f"{i:06d}", batch_root=roots[i],
            proof=merkle.audit_path(i, leaves), leaf_index=i, confirmations_required=1 if status == "pending" else 0,
        )
        for i in range(n)
    ]


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*.json"))
        if ".pending" not in path.parts
    }


@pytest.fixture
def store(tmp_path: Path) -> Any:
    made = ReceiptStore(tmp_path / "child" / "receipts", in_a_process=True)
    yield made
    made.close()


def test_a_chunk_written_by_the_child_is_the_same_files_and_paths_as_in_process(store: ReceiptStore, tmp_path: Path) -> None:
    chunk = receipts()
    store.prepare([r.namespace for r in chunk[: N // 2]])  # half the folders made before, half by the write
    Path(store.root / safe_name(chunk[3].namespace)).mkdir(exist_ok=True)
    taken = store.root / safe_name(chunk[3].namespace) / store.file_name(chunk[3])
    taken.write_bytes(b"someone else's")  # a clash: the receipt goes under `-1`
    by_child = store.write_many(chunk)

    here = ReceiptStore(tmp_path / "here" / "receipts")
    here.prepare([r.namespace for r in chunk[: N // 2]])
    Path(here.root / safe_name(chunk[3].namespace)).mkdir(exist_ok=True)
    (here.root / safe_name(chunk[3].namespace) / here.file_name(chunk[3])).write_bytes(b"someone else's")
    in_process = here.write_many(chunk)

    assert store.process is not None and store.process.started == 1
    assert [p.relative_to(store.root) for p in by_child if isinstance(p, Path)] == [
        p.relative_to(here.root) for p in in_process if isinstance(p, Path)
    ]
    assert by_child[3] == taken.with_name(taken.stem + "-1.json")
    assert files_under(store.root) == files_under(here.root)
    assert all(path.read_bytes() == r.to_bytes() for path, r in zip(by_child, chunk, strict=True) if isinstance(path, Path))
    # the folders written into are known here: the next chunk sends them as cleaned
    assert store._folder_state(safe_name(chunk[0].namespace)) == "cleaned"


def test_each_receipt_keeps_its_own_outcome_from_the_child(store: ReceiptStore) -> None:
    chunk = receipts()
    blocked = store.root / safe_name(chunk[5].namespace)
    store.root.mkdir(parents=True)
    blocked.write_bytes(b"a file where the namespace folder goes")
    results = store.write_many(chunk)
    assert isinstance(results[5], OSError)
    assert [i for i, r in enumerate(results) if not isinstance(r, Path)] == [5]
    assert store._folder_state(safe_name(chunk[5].namespace)) is None


def test_pending_receipts_and_small_chunks_are_written_in_process(store: ReceiptStore) -> None:
    store.write_many(receipts(N, "pending"))
    store.write_many(receipts(ReceiptStore.PROCESS_FROM - 1, names=[f"small:{i}" for i in range(N)]))
    assert store.process is not None and store.process.started == 0
    assert len(files_under(store.root)) == N + ReceiptStore.PROCESS_FROM - 1


class _KillsTheChild:
    """A receipt whose bytes, once asked for, kill the receipt writer process first (a
    crash, an OOM kill) halfway through a chunk."""

    def __init__(self, receipt: Receipt, process: ReceiptProcess) -> None:
        self._receipt = receipt
        self._process = process

    def __getattr__(self, name: str) -> Any:
        return getattr(self._receipt, name)

    def to_bytes(self) -> bytes:
        assert self._process.pid is not None
        os.kill(self._process.pid, signal.SIGKILL)
        return self._receipt.to_bytes()


def test_a_child_killed_mid_chunk_fails_the_chunk_and_the_next_chunk_gets_a_new_child(store: ReceiptStore) -> None:
    assert store.process is not None
    chunk = receipts()
    store.process.start()
    killer: Any = _KillsTheChild(chunk[N // 2], store.process)
    results = store.write_many([*chunk[: N // 2], killer, *chunk[N // 2 + 1 :]])
    assert all(isinstance(r, OSError) and r.errno == errno.EIO for r in results)
    assert "receipt writer process" in str(results[0])
    again = store.write_many(chunk)  # a retry of the same receipts
    assert store.process.started == 2
    written = [r for r in again if isinstance(r, Path)]
    assert len(written) == N
    assert all(path.read_bytes() == r.to_bytes() for path, r in zip(written, chunk, strict=True))


def test_the_child_ignores_a_terminals_signals_and_ends_when_the_store_closes(store: ReceiptStore) -> None:
    assert store.process is not None
    store.write_many(receipts())
    pid = store.process.pid
    assert pid is not None
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        os.kill(pid, sig)
    store.write_many(receipts(names=[f"again:{i}" for i in range(N)]))
    assert store.process.pid == pid and store.process.started == 1
    store.close()
    assert store.process.pid is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, 0)  # reaped


def test_an_idle_child_is_ended_and_the_next_chunk_starts_one(store: ReceiptStore) -> None:
    assert store.process is not None
    store.write_many(receipts())
    store.process._end_if_idle()  # the idle timer, before IDLE_EXIT passed: the child stays
    assert store.process.pid is not None
    store.process._last -= 10 * 60
    store.process._end_if_idle()
    assert store.process.pid is None
    store.write_many(receipts(names=[f"later:{i}" for i in range(N)]))
    assert store.process.started == 2


def test_the_child_holds_the_data_dirs_lock_until_it_ends(tmp_path: Path) -> None:
    lock = DataDirLock(tmp_path).acquire()
    assert lock.fd is not None
    store = ReceiptStore(tmp_path / "receipts", in_a_process=True)
    store.keep_open_in_process(lock.fd)
    store.write_many(receipts())
    os.close(lock.fd)  # the scheduler gone without unlocking (kill -9): its descriptor closed
    with pytest.raises(LockHeld):
        DataDirLock(tmp_path).acquire()  # the child still holds it: no scheduler starts beside it
    store.close()
    DataDirLock(tmp_path).acquire().release()


def test_a_core_package_in_the_working_folder_is_never_what_the_child_imports(
    store: ReceiptStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = tmp_path / "cwd" / "core"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text('raise SystemExit("a planted core package was imported")\n')
    monkeypatch.chdir(planted.parent)  # a daemon started from a folder a local user can write to
    results = store.write_many(receipts())
    assert all(isinstance(r, Path) for r in results)


class _NoBytesHere:
    """A receipt whose bytes the writer thread must not make: the engine made them."""

    def __init__(self, receipt: Receipt) -> None:
        self._receipt = receipt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._receipt, name)

    def to_bytes(self) -> bytes:
        raise AssertionError("the receipt's bytes were made again on the writer thread")


@pytest.mark.parametrize("in_a_process", [False, True])
def test_bytes_made_beforehand_are_what_is_written_and_not_made_again(tmp_path: Path, in_a_process: bool) -> None:
    store = ReceiptStore(tmp_path / "receipts", in_a_process=in_a_process)
    try:
        chunk = receipts()
        given: Any = [_NoBytesHere(r) for r in chunk]
        results = store.write_many(given, [r.to_bytes() for r in chunk])
        assert all(isinstance(p, Path) and p.read_bytes() == r.to_bytes() for p, r in zip(results, chunk, strict=True))
    finally:
        store.close()


def test_a_chunk_whose_bytes_raise_midway_ends_the_child_and_the_next_chunk_is_read_aright(store: ReceiptStore) -> None:
    """A request cut off halfway on the scheduler's side (the bytes' maker raised) would
    leave the child reading the next request's header as a receipt's bytes."""
    assert store.process is not None
    chunk = receipts()

    def bytes_then_a_stop() -> Any:
        yield chunk[0].to_bytes()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.process.write([("a", "b.json"), ("a", "c.json")], {}, bytes_then_a_stop())
    results = store.write_many(chunk)
    assert all(isinstance(p, Path) and p.read_bytes() == r.to_bytes() for p, r in zip(results, chunk, strict=True))
