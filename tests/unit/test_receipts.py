"""Receipt building, the receipt store, audit-path checks and verification."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core import merkle
from core.anchors.base import VerificationFailed
from core.fsutil import dumps_json
from core.jobs import safe_name
from core.receipts import (
    ANCHORED_AT_EARLY,
    ANCHORED_AT_LATE,
    BatchRef,
    Receipt,
    ReceiptError,
    ReceiptInvalid,
    Vouched,
    bound_leaf,
    build_receipt,
    check_proof,
    iso_utc,
    leaf_for,
    load_receipt,
    verify_receipt,
)
from core.store.files.receipts import ReceiptStore

AT = 1767225600.123  # 2026-01-01T00:00:00.123Z


def root_of(n: int) -> bytes:
    return hashlib.sha256(f"batch-{n}".encode()).digest()


def receipts_for(n: int, *, status: str = "confirmed", at: float = AT, version: int = 2) -> list[Receipt]:
    """One receipt per leaf of an n-job group, as the engine builds them (version 1: as it
    did before receipts bound their namespace and batch id)."""
    leaves = [leaf_for(version, f"dao:ns{i}", f"{i:06d}", root_of(i)) for i in range(n)]
    digest = leaves[0] if n == 1 else merkle.tree_hash(leaves)
    out = []
    for i in range(n):
        leaf = root_of(i)
        out.append(
            build_receipt(
                namespace=f"dao:ns{i}",
                cadence="fast",
                target="local:dev",
                batch_id=f"{i:06d}",
                batch_root="sha256:" + leaf.hex().upper(),
                anchored_root=digest,
                proof=[] if n == 1 else merkle.audit_path(i, leaves),
                leaf_index=i,
                tree_size=n,
                attestation={"token": "AAAA", "digest": digest.hex()},
                status=status,
                confirmations_required=2 if status == "pending" else 0,
                confirmations_observed=0,
                anchored_at=at,
                version="0.1.0",
                config_hash="cafe",
                receipt_version=version,
            )
        )
    return out


def test_build_receipt_format() -> None:
    [r] = (r.to_json() for r in receipts_for(1))
    assert list(r) == [
        "version", "namespace", "cadence", "target", "batch", "anchored_root", "proof",
        "leaf_index", "tree_size", "attestation", "status", "confirmations", "anchored_at",
        "scheduler",
    ]
    assert r["version"] == 2
    assert r["batch"] == {"id": "000000", "root": "sha256:" + root_of(0).hex()}
    assert r["anchored_root"] == "sha256:" + bound_leaf("dao:ns0", "000000", root_of(0)).hex()
    assert r["proof"] == [] and (r["leaf_index"], r["tree_size"]) == (0, 1)
    assert r["anchored_at"] == "2026-01-01T00:00:00.123Z"
    assert r["confirmations"] == {"required": 0, "observed": 0}
    assert r["scheduler"] == {"version": "0.1.0", "config_hash": "cafe"}
    json.dumps(r)  # JSON-serialisable as is
    many = receipts_for(3)
    assert all(p.startswith("sha256:") and len(p) == 71 for p in many[2].proof)


def test_build_receipt_rejects_bad_values() -> None:
    args = receipts_for(1)[0].to_json()
    kw = dict(
        namespace="a", cadence="fast", target="local:dev", batch_id="1",
        batch_root=args["batch"]["root"], anchored_root=args["anchored_root"], proof=[],
        leaf_index=0, tree_size=1, attestation={}, status="pending",
        confirmations_required=0, confirmations_observed=0, anchored_at=AT,
        version="0", config_hash="x",
    )
    build_receipt(**kw)
    with pytest.raises(ValueError):
        build_receipt(**{**kw, "status": "done"})
    with pytest.raises(ValueError):
        build_receipt(**{**kw, "batch_root": "sha256:1234"})
    with pytest.raises(ValueError):
        build_receipt(**{**kw, "anchored_root": b"short"})


def test_iso_utc() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(AT) == "2026-01-01T00:00:00.123Z"


# --------------------------------------------------------------------------- check_proof


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_check_proof_groups(n: int) -> None:
    receipts = receipts_for(n)
    leaves = [bound_leaf(f"dao:ns{i}", f"{i:06d}", root_of(i)) for i in range(n)]
    expected = leaves[0] if n == 1 else merkle.tree_hash(leaves)
    for r in receipts:
        assert check_proof(r) == expected


def _tamper_cases(n: int) -> list[tuple[str, Callable[[dict], None]]]:
    def set_(path: tuple, value):
        def f(r):
            target = r
            for p in path[:-1]:
                target = target[p]
            target[path[-1]] = value

        return f

    other = "sha256:" + "00" * 32
    cases = [
        ("batch.root", set_(("batch", "root"), other)),
        ("anchored_root", set_(("anchored_root",), other)),
        ("malformed root", set_(("batch", "root"), "sha256:XYZ")),
        ("uppercase root", set_(("anchored_root",), "sha256:" + "AB" * 32)),
        ("leaf_index type", set_(("leaf_index",), "0")),
        ("leaf_index range", set_(("leaf_index",), n)),
        ("negative index", set_(("leaf_index",), -1)),
        ("tree_size zero", set_(("tree_size",), 0)),
        ("tree_size bool", set_(("tree_size",), True)),
        ("proof type", set_(("proof",), "sha256:" + "00" * 32)),
        ("version", set_(("version",), 3)),
        ("batch type", set_(("batch",), None)),
    ]
    if n == 1:
        cases.append(("proof on group of one", set_(("proof",), [other])))
    else:
        cases += [
            ("proof element", lambda r: r["proof"].__setitem__(0, other)),
            ("proof too short", lambda r: r["proof"].pop()),
            ("proof too long", lambda r: r["proof"].append(other)),
            # (tree_size n+1 with leaf 0 can give the same root: RFC 6962 paths of the
            # left-most leaf agree across sizes. The leaf is still proven in the digest.)
            ("tree_size one", set_(("tree_size",), 1)),
            ("tree_size doubled", set_(("tree_size",), 2 * n + 2)),
            ("leaf_index moved", set_(("leaf_index",), (0 + 1) % n)),
        ]
    return cases


def docs_for(n: int) -> list[dict]:
    """The JSON documents of receipts_for(n), as written to disk (to tamper with)."""
    return [r.to_json() for r in receipts_for(n)]


def checked(doc: object) -> bytes:
    """What a reader does: parse the document, then check the audit path."""
    return check_proof(Receipt.from_json(doc))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_tampered_receipts_fail_with_reason(n: int) -> None:
    good = docs_for(n)[0]
    for name, tamper in _tamper_cases(n):
        bad = copy.deepcopy(good)
        tamper(bad)
        with pytest.raises(ReceiptInvalid) as info:
            checked(bad)
            pytest.fail(f"{name}: accepted")
        assert info.value.reason, name


def test_check_proof_reasons() -> None:
    r = docs_for(3)[1]
    r["proof"][0] = "sha256:" + "00" * 32
    with pytest.raises(ReceiptInvalid, match="audit path leads to sha256:[0-9a-f]{64}, not"):
        checked(r)
    r = docs_for(1)[0]
    r["anchored_root"] = "sha256:" + "00" * 32
    with pytest.raises(ReceiptInvalid, match="not the leaf of namespace 'dao:ns0', batch '000000'"):
        checked(r)
    r = docs_for(2)[0]
    r["proof"].append(r["proof"][0])
    with pytest.raises(ReceiptInvalid, match="audit path: .*longer"):
        checked(r)
    with pytest.raises(ReceiptInvalid, match="JSON object"):
        checked([])


# --------------------------------------------------------------------------- verify_receipt


class FakeBackend:
    def __init__(self, target: str) -> None:
        self.target = target
        self.calls: list[tuple[dict, bytes]] = []

    async def verify(self, attestation: dict, digest: bytes, *, required=None, policy=None) -> datetime | None:
        self.calls.append((attestation, digest))
        if attestation.get("digest") != digest.hex():
            raise VerificationFailed("imprint does not match the digest")
        return None


async def test_verify_receipt_calls_backend_with_digest() -> None:
    backend = FakeBackend("local:dev")
    seen: list[str] = []

    def backend_for(target: str) -> FakeBackend:
        seen.append(target)
        return backend

    for n in (1, 3):
        for r in receipts_for(n):
            await verify_receipt(r, backend_for)
    assert seen == ["local:dev"] * 4
    assert backend.calls[0][1] == bound_leaf("dao:ns0", "000000", root_of(0))


async def test_verify_receipt_failures() -> None:
    backend = FakeBackend("local:dev")
    r = receipts_for(2)[1]
    r = dataclasses.replace(r, attestation={**r.attestation, "digest": "00" * 32})
    with pytest.raises(ReceiptInvalid, match="attestation: imprint does not match"):
        await verify_receipt(r, lambda t: backend)

    r = dataclasses.replace(receipts_for(2)[1], leaf_index=0)
    with pytest.raises(ReceiptInvalid):
        await verify_receipt(r, lambda t: backend)
    assert len(backend.calls) == 1  # a bad audit path never reaches the backend

    def unknown(target: str):
        raise KeyError(target)

    with pytest.raises(ReceiptInvalid, match="no verifier for target local:dev"):
        await verify_receipt(receipts_for(1)[0], unknown)
    doc = docs_for(1)[0]
    doc["attestation"] = "token"
    with pytest.raises(ReceiptInvalid, match="attestation must be an object"):
        Receipt.from_json(doc)


# --------------------------------------------------------------------------- store


def test_write_and_read_back(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path / "receipts")
    [r] = receipts_for(1)
    path = store.write(r)
    assert path.parent == tmp_path / "receipts" / "dao%3Ans0"
    assert path.name == f"20260101T000000123Z-fast-{root_of(0).hex()[:12]}.json"
    assert load_receipt(path) == r
    assert ReceiptStore.namespace_of(path) == "dao:ns0"
    assert os.listdir(path.parent) == [path.name]


def test_write_never_overwrites(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    [r] = receipts_for(1)
    first = store.write(r)
    r2 = dataclasses.replace(r, attestation={"token": "BBBB"})
    second = store.write(r2)
    third = store.write(r2)
    assert first != second != third
    assert second.name.endswith("-1.json") and third.name.endswith("-2.json")
    assert load_receipt(first).attestation == {"token": "AAAA", "digest": r2.anchored_root[7:]}
    assert load_receipt(second).attestation == {"token": "BBBB"}


def test_confirm_pending(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    paths = [store.write(r) for r in receipts_for(3, status="pending")]
    assert [p for p, _ in store.pending()] == sorted(paths, key=lambda p: p.name)
    confirmed = store.confirm(paths[1], 6)
    assert confirmed.status == "confirmed"
    assert (confirmed.confirmations.required, confirmed.confirmations.observed) == (2, 6)
    assert load_receipt(paths[1]) == confirmed
    assert {p for p, _ in store.pending()} == {paths[0], paths[2]}
    store.confirm(paths[1], 7)  # already confirmed: no rewrite
    assert load_receipt(paths[1]).confirmations.observed == 6
    # A fresh store (after a restart) finds the same pending set by scanning.
    assert {p for p, _ in ReceiptStore(tmp_path).pending()} == {paths[0], paths[2]}
    # New pending receipts are tracked without a rescan.
    new = store.write(receipts_for(1, status="pending", at=AT + 5)[0])
    assert new in {p for p, _ in store.pending()}


def counting_reads(monkeypatch) -> list[Path]:
    import core.store.files.receipts as mod
    from core.receipts import load_receipt as real

    reads: list[Path] = []
    monkeypatch.setattr(mod, "load_receipt", lambda p: reads.append(Path(p)) or real(p))
    return reads


def test_a_restart_reads_only_the_pending_receipts(tmp_path: Path, monkeypatch) -> None:
    store = ReceiptStore(tmp_path)
    assert store.pending() == []  # as every start does: on a new data dir, an empty index
    for k in range(20):
        store.write(receipts_for(1, at=AT + k)[0])
    pending = [store.write(r) for r in receipts_for(2, status="pending", at=AT + 30)]
    reads = counting_reads(monkeypatch)
    assert [p for p, _ in ReceiptStore(tmp_path).pending()] == sorted(pending, key=lambda p: p.name)
    assert sorted(reads) == sorted(pending)  # not the 20 confirmed ones
    # Index entries are not receipts: a folder's receipts are still only the receipts.
    assert len(store.all_paths()) == 22
    assert not list((tmp_path / ".pending").rglob("*.json"))


def test_a_data_dir_from_before_the_index_is_scanned_once_then_indexed(tmp_path: Path, monkeypatch) -> None:
    store = ReceiptStore(tmp_path)
    for k in range(5):
        store.write(receipts_for(1, at=AT + k)[0])
    [pending] = [store.write(r) for r in receipts_for(1, status="pending", at=AT + 30)]
    shutil.rmtree(tmp_path / ".pending")  # as an older scheduler left it
    reads = counting_reads(monkeypatch)
    assert [p for p, _ in ReceiptStore(tmp_path).pending()] == [pending]
    assert len(reads) == 6
    reads.clear()
    assert [p for p, _ in ReceiptStore(tmp_path).pending()] == [pending]
    assert reads == [pending]


def test_leftovers_of_a_crash_in_the_index_are_dropped_when_read(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    first, second = (store.write(r) for r in receipts_for(2, status="pending"))
    assert store.pending()  # the index is complete from here on
    # A crash after the index entry, before the receipt: an entry without a receipt.
    second.unlink()
    # A crash after confirming, before the entry went: a confirmed receipt, still indexed.
    doc = load_receipt(first).to_json()
    first.write_text(json.dumps(dict(doc, status="confirmed")))
    assert ReceiptStore(tmp_path).pending() == []
    assert not [p for p in (tmp_path / ".pending").rglob("*") if p.is_file() and p.name != ".complete"]


def test_a_pending_receipt_never_takes_the_name_of_another(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    [r] = receipts_for(1, status="pending")
    first = store.write(r)
    second = store.write(dataclasses.replace(r, attestation={"tx_hash": "0x2"}))
    assert second.name.endswith("-1.json")
    assert {p for p, _ in ReceiptStore(tmp_path).pending()} == {first, second}
    store.confirm(first, 2)
    assert [p for p, _ in ReceiptStore(tmp_path).pending()] == [second]


def test_confirm_rejects_unknown_status(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    path = store.write(receipts_for(1)[0])
    data = load_receipt(path).to_json()
    data["status"] = "weird"
    path.write_text(json.dumps(data))
    with pytest.raises(ReceiptError, match="status must be one of pending, confirmed, got 'weird'"):
        store.confirm(path, 1)


def test_recent_newest_first_and_bounded(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    written = []
    for k in range(6):
        for r in receipts_for(2, at=AT + k * 60):
            written.append((AT + k * 60, store.write(r)))
    recent = store.recent(3)
    assert len(recent) == 3
    stamps = [r.anchored_at for _, r in recent if isinstance(r, Receipt)]
    assert stamps == sorted(stamps, reverse=True)
    assert stamps[0] == iso_utc(AT + 5 * 60)
    assert store.recent(0) == []
    assert len(store.recent(100)) == 12
    assert ReceiptStore(tmp_path / "missing").recent(5) == []


def test_recent_reads_only_limit_files(tmp_path: Path, monkeypatch) -> None:
    store = ReceiptStore(tmp_path)
    for k in range(20):
        store.write(receipts_for(1, at=AT + k)[0])
    reads: list[Path] = []
    import core.store.files.receipts as mod
    from core.receipts import load_receipt as real

    monkeypatch.setattr(mod, "load_receipt", lambda p: reads.append(p) or real(p))
    store.recent(4)
    assert len(reads) == 4


def test_for_job(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    for k in range(4):
        r = receipts_for(1, at=AT + k)[0]
        store.write(r)
        store.write(dataclasses.replace(r, cadence="strong"))
        store.write(dataclasses.replace(r, namespace="other"))
    fast = [r for _, r in store.for_job("dao:ns0", "fast", 10) if isinstance(r, Receipt)]
    assert len(fast) == 4 and all(r.cadence == "fast" for r in fast)
    assert fast[0].anchored_at == iso_utc(AT + 3)
    assert len(store.for_job("dao:ns0", "strong", 2)) == 2
    assert store.for_job("nobody", "fast", 5) == []


def test_broken_receipt_is_an_entry_not_a_crash(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    good = store.write(receipts_for(1)[0])
    broken = good.with_name("20990101T000000000Z-fast-000000000000.json")
    broken.write_text('{"version": 1,\n "oops"')
    (good.parent / ".20990101T000000000Z-fast-x.json.1a2b.tmp").write_text("{")  # leftover temp
    recent = store.recent(10)
    assert [p for p, _ in recent] == [broken, good]
    error = recent[0][1]
    assert isinstance(error, ReceiptError)
    assert str(broken) in str(error) and "not valid JSON" in str(error) and ":2:" in str(error)
    assert isinstance(recent[1][1], Receipt) and recent[1][1].namespace == "dao:ns0"
    assert [p for p, _ in store.for_job("dao:ns0", "fast", 5)] == [broken, good]


def test_load_receipt_errors(tmp_path: Path) -> None:
    with pytest.raises(ReceiptError, match=f"{tmp_path / 'nope.json'}: cannot read"):
        load_receipt(tmp_path / "nope.json")
    p = tmp_path / "list.json"
    p.write_text("[]")
    with pytest.raises(ReceiptError, match="a receipt is a JSON object"):
        load_receipt(p)


class Flushes:
    """Counts what reaches the disk: syncfs(2) calls (the real one runs) and fsyncs."""

    def __init__(self, monkeypatch, *, syncfs: bool = True) -> None:
        import core.fsutil

        self.syncfs = 0
        self.fsyncs: list[str] = []
        real_syncfs = core.fsutil._syncfs()
        real_fsync = os.fsync

        def counted_syncfs(fd: int) -> int:
            self.syncfs += 1
            return real_syncfs(fd) if real_syncfs is not None else 0

        def counted_fsync(fd: int) -> None:
            self.fsyncs.append(os.readlink(f"/proc/self/fd/{fd}"))
            real_fsync(fd)

        monkeypatch.setattr(core.fsutil, "_SYNCFS", counted_syncfs if syncfs else None)
        monkeypatch.setattr(os, "fsync", counted_fsync)


def pending_group_with_one_blocked(tmp_path: Path) -> list[Receipt]:
    receipts = receipts_for(3, status="pending")
    receipts += [dataclasses.replace(r, cadence="strong") for r in receipts[:2]]
    blocked = tmp_path / "receipts" / "dao%3Ans2"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where a namespace folder should be")
    return receipts


def check_group_results(store: ReceiptStore, receipts: list[Receipt], results: list[Path | Exception]) -> list[Path]:
    written = [r for r in results if isinstance(r, Path)]
    assert [type(r).__name__ for r in results] == ["PosixPath", "PosixPath", "NotADirectoryError", "PosixPath", "PosixPath"]
    assert all(load_receipt(p) in receipts for p in written)
    # The failed one left no index entry (nor temp file) behind; the others are pending.
    assert sorted(p.name for p, _ in store.pending()) == sorted(p.name for p in written)
    assert not [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]
    return written


def test_a_batch_of_receipts_is_one_group_commit_and_each_failure_is_its_own(tmp_path: Path, monkeypatch) -> None:
    receipts = pending_group_with_one_blocked(tmp_path)
    store = ReceiptStore(tmp_path / "receipts")
    flushes = Flushes(monkeypatch)

    results = store.write_many(receipts)
    syncfs, fsyncs = flushes.syncfs, list(flushes.fsyncs)

    check_group_results(store, receipts, results)
    # Two flushes of the file system for the whole group (data and the pending list, then names).
    assert syncfs == 2
    assert fsyncs == []


def test_without_syncfs_each_receipt_is_fsynced_before_its_name_and_each_folder_once(tmp_path: Path, monkeypatch) -> None:
    receipts = pending_group_with_one_blocked(tmp_path)
    store = ReceiptStore(tmp_path / "receipts")
    store.pending()  # its pending index made, as at every start
    store.write(dataclasses.replace(receipts[0], namespace="earlier", status="confirmed"))  # its staging folder made
    flushes = Flushes(monkeypatch, syncfs=False)

    results = store.write_many(receipts)
    fsyncs = list(flushes.fsyncs)

    written = check_group_results(store, receipts, results)
    data = [f for f in fsyncs if f.endswith(".tmp")]
    assert len(data) == len(receipts)  # each receipt's data, before it had its name (the blocked one fails at its link)
    folders = [f for f in fsyncs if not f.endswith(".tmp")]
    assert len(folders) == len(set(folders))  # each folder once
    assert {str(p.parent) for p in written} <= set(folders)


def test_a_thousand_receipts_cost_a_few_flushes_not_two_fsyncs_each(tmp_path: Path, monkeypatch) -> None:
    """What makes 10,000 receipts a second possible on a disk that does 200 fsyncs a second."""
    from core.store.files.receipts import slices

    store = ReceiptStore(tmp_path / "receipts")
    store.pending()
    receipts = receipts_for(1000)
    flushes = Flushes(monkeypatch)

    results = store.write_many(receipts)

    assert all(isinstance(r, Path) for r in results)
    assert [load_receipt(p) for p in results] == receipts  # type: ignore[arg-type]
    assert flushes.fsyncs == []
    assert flushes.syncfs == len(slices(1000)) + 1 <= 8  # a flush per slice, and one for the last names


class FlushOrder:
    """What happens in which order during a group commit: files created and closed, flushes
    of the file system begun and ended (on whatever thread), links (`link`: when one may
    begin; `linked`: when it is done), the call's return. With the C extension
    (core.batchfs.NATIVE) a slice's files count as written when its call returns, and its
    links as begun when its call starts: both as late / as early as they can be."""

    def __init__(self, monkeypatch) -> None:
        import core.batchfs
        import core.fsutil

        self.events: list[tuple[str, str]] = []
        real_syncfs = core.fsutil._syncfs()
        real_open, real_close, real_link = os.open, os.close, os.link
        created: dict[int, str] = {}

        def syncfs(fd: int) -> int:
            self.events.append(("begin", os.readlink(f"/proc/self/fd/{fd}")))
            try:
                return real_syncfs(fd) if real_syncfs is not None else 0
            finally:
                self.events.append(("end", ""))

        def opened(path, flags, *args, **kwargs):
            fd = real_open(path, flags, *args, **kwargs)
            if flags & os.O_CREAT:
                created[fd] = os.fspath(path)
            return fd

        def close(fd: int) -> None:
            real_close(fd)
            if fd in created:
                self.events.append(("written", created.pop(fd)))

        def link(src, dst, *args, **kwargs):
            self.events.append(("link", f"{os.fspath(src)} {os.fspath(dst)}"))
            real_link(src, dst, *args, **kwargs)
            self.events.append(("linked", f"{os.fspath(src)} {os.fspath(dst)}"))

        monkeypatch.setattr(core.fsutil, "_SYNCFS", syncfs)
        monkeypatch.setattr(os, "open", opened)
        monkeypatch.setattr(os, "close", close)
        monkeypatch.setattr(os, "link", link)
        real_native = core.batchfs.NATIVE
        if real_native is None:  # the calls one by one: os.open, os.close, os.link above
            return
        events = self.events
        real_stage, real_links = real_native.stage_many, real_native.link_many

        class Recorded:
            @staticmethod
            def stage_many(paths, datas, mode, chmod):
                codes = real_stage(paths, datas, mode, chmod)
                events.extend(("written", p) for p, c in zip(paths, codes, strict=True) if c == 0)
                return codes

            @staticmethod
            def link_many(sources, targets):
                pairs = [f"{s} {t}" for s, t in zip(sources, targets, strict=True)]
                events.extend(("link", p) for p in pairs)
                codes = real_links(sources, targets)
                events.extend(("linked", p) for p, c in zip(pairs, codes, strict=True) if c == 0)
                return codes

        monkeypatch.setattr(core.batchfs, "NATIVE", Recorded)

    def at(self, kind: str, what: str) -> int:
        return next(n for n, (k, w) in enumerate(self.events) if k == kind and w == what)

    def flushed_between(self, after: int, before: int) -> bool:
        """A flush begun after event `after` was done before event `before`."""
        begins = [n for n, (k, _) in enumerate(self.events) if k == "begin" and n > after]
        return any(
            next(m for m in range(b, len(self.events)) if self.events[m][0] == "end") < before for b in begins
        )


def test_a_chunk_in_slices_links_nothing_before_its_data_is_durable_and_returns_nothing_before_its_name_is(
    tmp_path: Path, monkeypatch, batch_syscalls: str
) -> None:
    """The slices of a chunk overlap (one staged while the one before is flushed on another
    thread); what each receipt goes through keeps its order all the same, whether a slice's
    system calls are made by the C extension or one by one (core/batchfs.py)."""
    import core.store.files.receipts as mod

    monkeypatch.setattr(mod, "SLICE", 8)
    store = ReceiptStore(tmp_path / "receipts")
    store.pending()
    receipts = receipts_for(40, status="pending")
    order = FlushOrder(monkeypatch)

    results = store.write_many(receipts)
    order.events.append(("return", ""))

    assert all(isinstance(r, Path) for r in results)
    assert [load_receipt(p) for p in results] == receipts  # type: ignore[arg-type]
    assert sum(1 for k, _ in order.events if k == "begin") == len(mod.slices(40)) + 1 > 3
    end = len(order.events) - 1
    links = [(n, w.split()) for n, (k, w) in enumerate(order.events) if k == "link"]
    assert sorted(dst for _, (_, dst) in links) == sorted(str(p) for p in results)
    [listing] = [w for k, w in order.events if k == "written" and w.endswith(".list")]
    assert order.flushed_between(order.at("written", listing), min(n for n, _ in links)), "a name before its list"
    for n, (tmp, dst) in links:
        assert order.flushed_between(order.at("written", tmp), n), f"{dst} named before its data was durable"
        done = order.at("linked", f"{tmp} {dst}")
        assert order.flushed_between(done, end), f"{dst} returned before its name was durable"


def test_a_namespace_folder_on_another_file_system_is_flushed_too(tmp_path: Path, monkeypatch) -> None:
    """Folders the store makes are on its root's file system (one flush); one it finds (a
    mount point, or a link to another disk) is looked at once, and flushed as well."""
    elsewhere = Path("/dev/shm")
    if not elsewhere.is_dir() or os.stat(elsewhere).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system to link to")
    store = ReceiptStore(tmp_path / "receipts")
    store.pending()
    receipts = receipts_for(3)
    target = elsewhere / f"vmsh-test-{os.getpid()}-{tmp_path.name}"
    target.mkdir()
    try:
        (tmp_path / "receipts" / safe_name("dao:ns1")).symlink_to(target)
        order = FlushOrder(monkeypatch)

        results = store.write_many(receipts) + store.write_many(receipts_for(3, at=AT + 60))

        assert all(isinstance(r, Path) for r in results)
        assert len(list(target.glob("*.json"))) == 2
        flushed = {os.stat(w).st_dev for k, w in order.events if k == "begin"}
        assert flushed == {os.stat(tmp_path).st_dev, os.stat(target).st_dev}
    finally:
        shutil.rmtree(target)


def write_noting_mkdirs(store: ReceiptStore, receipts: list[Receipt], monkeypatch) -> tuple[list[Path | Exception], list[str]]:
    """`store.write_many(receipts)`, and every folder it tried to make."""
    made: list[str] = []
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        made.append(str(path))
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    return store.write_many(receipts), made


@pytest.mark.parametrize("child", [True, False], ids=["by mkdir(1)", "in process"])
def test_folders_prepared_at_start_have_the_store_mode_and_a_first_pass_makes_none(
    tmp_path: Path, monkeypatch, child: bool
) -> None:
    """The folders are made by mkdir(1) child processes (several: a few bytes of paths
    each here), or in process where none can run; either way with the store's mode
    whatever the umask, with no flush of their own, and none made again at the first pass."""
    import core.fsutil

    monkeypatch.setattr(core.fsutil, "MKDIR_ARGS_BYTES", 400)
    if not child:
        monkeypatch.setattr(core.fsutil, "_MKDIR", None)
    store = ReceiptStore(tmp_path / "receipts")
    store.pending()
    receipts = receipts_for(50)
    flushes = Flushes(monkeypatch, syncfs=False)
    old_umask = os.umask(0o077)
    monkeypatch.setattr(core.fsutil, "_UMASK", None)  # read afresh: this process's umask changed
    try:
        assert store.prepare([r.namespace for r in receipts] * 2) == 50
    finally:
        os.umask(old_umask)
    folders = [p for p in (tmp_path / "receipts").iterdir() if not p.name.startswith(".")]
    assert sorted(p.name for p in folders) == sorted(safe_name(f"dao:ns{i}") for i in range(50))
    assert {stat.S_IMODE(p.stat().st_mode) for p in folders} == {0o750}
    assert flushes.fsyncs == []
    results, made = write_noting_mkdirs(store, receipts, monkeypatch)
    assert all(isinstance(r, Path) for r in results) and made == []


def test_folders_prepared_at_start_cost_no_flush_and_a_first_pass_makes_none(tmp_path: Path, monkeypatch) -> None:
    """What the engine's start does while the first pass reads its batches: the receipts
    then cost a file each, not a folder and a file; the folders' names are made durable by
    the first flush of the receipts written into them. A folder there before is rid of a
    kill -9's temp files at its first write (the others of its mkdir(1) child with it: the
    child's failure for the one there does not say which it made)."""
    store = ReceiptStore(tmp_path / "receipts")
    store.pending()
    receipts = receipts_for(50)
    there = tmp_path / "receipts" / safe_name("dao:ns0")
    there.mkdir()  # there already: left for its first write
    (there / ".stale.json.00000000.tmp").write_bytes(b"{")
    flushes = Flushes(monkeypatch, syncfs=False)

    assert store.prepare([r.namespace for r in receipts] * 2) <= 49  # never the one there
    assert sorted(p.name for p in (tmp_path / "receipts").iterdir() if not p.name.startswith(".")) == sorted(
        safe_name(f"dao:ns{i}") for i in range(50)
    )
    assert flushes.fsyncs == []  # the writes' flushes take the names along
    assert store.prepare([r.namespace for r in receipts]) == 0

    results, made = write_noting_mkdirs(store, receipts, monkeypatch)
    assert all(isinstance(r, Path) for r in results) and made == []  # not even tried for the one found
    assert not (there / ".stale.json.00000000.tmp").exists()  # cleaned at its first write
    assert flushes.fsyncs.count(str(tmp_path / "receipts")) == 1  # the 49 names, with the receipts' data
    # with the receipts' data, before the flush of their names (a folder's fsync)
    assert flushes.fsyncs.index(str(tmp_path / "receipts")) < flushes.fsyncs.index(str(results[1].parent))  # type: ignore[union-attr]


def test_a_failed_flush_amid_a_chunk_fails_every_receipt_not_durable_yet(tmp_path: Path, monkeypatch) -> None:
    """A flush fails while the chunk's slices are on their way: the receipts whose names an
    earlier flush made durable are written, every other one fails (none of them half
    there: each on disk under its name, or gone), and a start finds every pending one."""
    import core.fsutil
    import core.store.files.receipts as mod

    monkeypatch.setattr(mod, "SLICE", 8)
    store = ReceiptStore(tmp_path / "receipts")
    store.pending()
    receipts = receipts_for(40, status="pending")
    real = core.fsutil._syncfs()
    calls = [0]

    def fourth_fails(fd: int) -> int:
        calls[0] += 1
        if calls[0] == 4:
            import ctypes

            ctypes.set_errno(5)
            return -1
        return real(fd) if real is not None else 0

    monkeypatch.setattr(core.fsutil, "_SYNCFS", fourth_fails)
    results = store.write_many(receipts)

    written = [r for r in results if isinstance(r, Path)]
    failed = [r for r in results if isinstance(r, OSError)]
    assert written and failed and len(written) + len(failed) == 40
    assert all(r.errno == 5 for r in failed)
    assert [load_receipt(p) for p in written] == [receipts[n] for n, r in enumerate(results) if isinstance(r, Path)]
    assert not [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]
    on_disk = {p for p, r in ReceiptStore(store.root).every() if isinstance(r, Receipt) and r.status == "pending"}
    assert set(written) <= on_disk
    assert {p for p, _ in ReceiptStore(store.root).pending()} == on_disk


def test_a_failed_flush_writes_none_of_its_receipts_and_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    import core.fsutil

    store = ReceiptStore(tmp_path / "receipts")
    store.pending()
    receipts = receipts_for(5, status="pending")

    def failing(fd: int) -> int:
        import ctypes

        ctypes.set_errno(5)  # EIO: the disk refused the flush
        return -1

    monkeypatch.setattr(core.fsutil, "_SYNCFS", failing)
    results = store.write_many(receipts)

    assert all(isinstance(r, OSError) and r.errno == 5 for r in results)
    assert store.recent() == [] and store.pending() == []
    assert not [p for p in store.root.rglob("*") if p.is_file() and p.name != ".complete"]
    monkeypatch.setattr(core.fsutil, "_SYNCFS", False)  # the disk works again: a retry writes them
    assert all(isinstance(r, Path) for r in store.write_many(receipts))
    assert len(store.recent()) == 5


# --------------------------------------------------------------------------- the Receipt model

# A pending eip155 receipt exactly as the scheduler wrote it before receipts had a model
# (core/receipts.py's build_receipt returned this dict; dumps_json wrote it).
WRITTEN_BEFORE_THE_MODEL = """\
{
  "version": 1,
  "namespace": "dao:vaultmesh",
  "cadence": "fast",
  "target": "eip155:1337",
  "batch": {
    "id": "000042",
    "root": "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
  },
  "anchored_root": "sha256:ad5ca6cddc0b27c6a83e332bf28011769236e6c6a1f786ebf7b5267b37a5bd22",
  "proof": [
    "sha256:a0d9f0a50b35b9f7d7edc57fb64f4771ddef0fefeaca4e6f949a1514db5b136d"
  ],
  "leaf_index": 0,
  "tree_size": 2,
  "attestation": {
    "tx_hash": "0xab",
    "block_number": 7,
    "block_hash": "0xcd",
    "contract": null
  },
  "status": "pending",
  "confirmations": {
    "required": 3,
    "observed": 1
  },
  "anchored_at": "2026-01-01T00:00:00.123Z",
  "scheduler": {
    "version": "0.1.0",
    "config_hash": "cafe"
  },
  "policy": "1.2.3.4"
}
"""


def test_a_receipt_written_before_the_model_loads_checks_and_is_rewritten_byte_for_byte(tmp_path: Path) -> None:
    folder = tmp_path / "dao%3Avaultmesh"
    folder.mkdir()
    path = folder / "20260101T000000123Z-fast-ca978112ca1b.json"
    path.write_text(WRITTEN_BEFORE_THE_MODEL)
    receipt = load_receipt(path)
    assert check_proof(receipt) == merkle.tree_hash([hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()])
    assert (receipt.status, receipt.policy, receipt.confirmations.required) == ("pending", "1.2.3.4", 3)
    assert dumps_json(receipt.to_json()).decode() == WRITTEN_BEFORE_THE_MODEL
    # confirm() changes the two fields it always changed, nothing else, in place.
    ReceiptStore(tmp_path).confirm(path, 5)
    assert path.read_text() == WRITTEN_BEFORE_THE_MODEL.replace('"pending"', '"confirmed"').replace(
        '"observed": 1', '"observed": 5'
    )


def test_a_receipt_built_now_is_written_as_before(tmp_path: Path) -> None:
    leaf, other = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    receipt = build_receipt(
        namespace="dao:vaultmesh", cadence="fast", target="eip155:1337", batch_id="000042",
        batch_root=leaf, anchored_root=merkle.tree_hash([leaf, other]),
        proof=merkle.audit_path(0, [leaf, other]), leaf_index=0, tree_size=2,
        attestation={"tx_hash": "0xab", "block_number": 7, "block_hash": "0xcd", "contract": None},
        status="pending", confirmations_required=3, confirmations_observed=1,
        anchored_at=1767225600.123, version="0.1.0", config_hash="cafe", policy="1.2.3.4",
    )
    path = ReceiptStore(tmp_path).write(receipt)
    assert path.name == "20260101T000000123Z-fast-ca978112ca1b.json"
    # the same layout; the version says the anchored leaf binds namespace and batch id
    assert path.read_text() == WRITTEN_BEFORE_THE_MODEL.replace('"version": 1,', '"version": 2,', 1)
    assert load_receipt(path) == receipt


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("namespace", None, "namespace is missing"),
        ("cadence", "", "cadence must be a non-empty string, got ''"),
        ("target", 7, "target must be a non-empty string, got 7"),
        ("status", "done", "status must be one of pending, confirmed, got 'done'"),
        ("confirmations", {"required": "3", "observed": 1}, "confirmations.required must be an integer, got '3'"),
        ("confirmations", [3, 1], "confirmations must be an object with required and observed"),
        ("scheduler", {"version": "0.1.0"}, "scheduler.config_hash is missing"),
        ("anchored_at", "yesterday", "anchored_at is not an ISO 8601 time: 'yesterday'"),
        ("policy", 1.2, "policy must be a dotted object identifier, got 1.2"),
        ("batch", {"root": "sha256:" + "00" * 32}, "batch.id is missing"),
    ],
)
def test_a_malformed_receipt_is_refused_naming_the_field(tmp_path: Path, field: str, value: object, reason: str) -> None:
    doc = json.loads(WRITTEN_BEFORE_THE_MODEL)
    if value is None:
        del doc[field]
    else:
        doc[field] = value
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ReceiptInvalid) as info:
        load_receipt(path)
    assert info.value.reason == reason
    assert str(info.value) == f"{path}: {reason}"


def _redundant_doc() -> dict:
    """A version 3 receipt's document (two attestations of three targets, min 2)."""
    doc = json.loads(WRITTEN_BEFORE_THE_MODEL)
    att = doc.pop("attestation")
    doc["version"], doc["target"] = 3, "2 of eip155:1337,rfc3161:a,rfc3161:b"
    item = {"status": "confirmed", "confirmations": {"required": 0, "observed": 0}}
    rest = {k: doc.pop(k) for k in ("status", "confirmations", "anchored_at", "scheduler", "policy")}
    doc["min"] = 2
    doc["attestations"] = [
        {"target": "eip155:1337", "attestation": att, "status": "pending", "confirmations": {"required": 3, "observed": 1}},
        {"target": "rfc3161:a", "attestation": {"token": "AA=="}} | item,
    ]
    return doc | rest


def test_a_redundant_receipt_round_trips_in_its_documented_layout() -> None:
    doc = _redundant_doc()
    receipt = Receipt.from_json(doc)
    assert receipt.version == 3 and receipt.least == 2 and dict(receipt.attestation) == {}
    assert [a.target for a in receipt.attestations] == ["eip155:1337", "rfc3161:a"]
    assert list(receipt.to_json()) == list(doc) and receipt.to_json() == doc
    assert list(doc)[9:11] == ["min", "attestations"]  # where version 2 has attestation


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"min": 1}, "min 1 differs from the 2 its target '2 of eip155:1337,rfc3161:a,rfc3161:b' says"),
        ({"target": "rfc3161:a"}, "target must name the targets and min of a version 3 receipt, got 'rfc3161:a'"),
        ({"attestations": []}, "attestations must be a non-empty list, got []"),
        ({"attestations": [{"target": "rfc3161:zz", "attestation": {}, "status": "confirmed",
                            "confirmations": {"required": 0, "observed": 0}}]},
         "attestations[0].target 'rfc3161:zz' is not one of the receipt's targets"),
        ({"attestations": "dup"}, "attestations[1].target 'rfc3161:a' attests twice"),
        ({"attestations": "nostatus"}, "attestations[0].status must be one of pending, confirmed, got None"),
    ],
)
def test_a_malformed_redundant_receipt_is_refused_naming_the_field(change: dict, reason: str) -> None:
    doc = _redundant_doc()
    if change.get("attestations") == "dup":
        change = {"attestations": [doc["attestations"][1], doc["attestations"][1]]}
    elif change.get("attestations") == "nostatus":
        change = {"attestations": [{k: v for k, v in doc["attestations"][0].items() if k != "status"}]}
    with pytest.raises(ReceiptInvalid) as info:
        Receipt.from_json(doc | change)
    assert info.value.reason == reason


def test_a_receipt_cannot_be_changed_in_place() -> None:
    receipt = Receipt.from_json(json.loads(WRITTEN_BEFORE_THE_MODEL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        receipt.status = "confirmed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        receipt.attestation["tx_hash"] = "0xff"  # type: ignore[index]
    assert receipt.confirmed(4).status == "confirmed" and receipt.status == "pending"


# --------------------------------------------------------------------------- binding (issue 23)


class TimedBackend(FakeBackend):
    """A backend whose attestations were made at `at` (a token's genTime, a block's time)."""

    def __init__(self, target: str, at: datetime) -> None:
        super().__init__(target)
        self.at = at

    async def verify(self, attestation: dict, digest: bytes, *, required=None, policy=None) -> datetime:
        await super().verify(attestation, digest, required=required, policy=policy)
        return self.at


def test_the_leaf_is_the_documented_bytes() -> None:
    """docs/receipts.md: SHA-256 of the domain, then namespace and batch id each after its
    length (4 bytes, big-endian), then the 32 root bytes."""
    data = (
        b"vmsh-scheduler/receipt-leaf/v2\x00"
        + b"\x00\x00\x00\x0ddao:vaultmesh" + b"\x00\x00\x00\x06000042" + root_of(0)
    )
    assert bound_leaf("dao:vaultmesh", "000042", root_of(0)) == hashlib.sha256(data).digest()
    assert leaf_for(1, "dao:vaultmesh", "000042", root_of(0)) == root_of(0)
    # no two (namespace, batch id) pairs share bytes: "ab"+"c" is not "a"+"bc"
    assert bound_leaf("ab", "c", root_of(0)) != bound_leaf("a", "bc", root_of(0))


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize(
    ("field", "value"), [("namespace", "someone-else"), ("batch", BatchRef("999999", "")), ("anchored_at", "1999")]
)
async def test_a_version_2_receipt_binds_namespace_batch_id_and_anchored_at(n, field, value) -> None:
    at = datetime.fromtimestamp(AT, UTC)
    backend = TimedBackend("local:dev", at)
    good = receipts_for(n)[n - 1]
    vouched = await verify_receipt(good, lambda t: backend)
    assert vouched == Vouched("2026-01-01T00:00:00.123Z", ())
    assert vouched.line(good) == (
        f"{good.namespace} {good.batch.id} {good.batch.root} existed at 2026-01-01T00:00:00.123Z (local:dev)"
    )
    if field == "batch":
        value = BatchRef("999999", good.batch.root)
    if field == "anchored_at":
        value = "1999-01-01T00:00:00.000Z"
    bad = dataclasses.replace(good, **{field: value})
    with pytest.raises(ReceiptInvalid, match="namespace, the batch id|anchored_at 1999-01-01T00:00:00.000Z is"):
        await verify_receipt(bad, lambda t: backend)


async def test_anchored_at_is_checked_within_the_documented_tolerance() -> None:
    [good] = receipts_for(1)
    attested = datetime.fromtimestamp(AT, UTC)
    for lag, ok in ((-ANCHORED_AT_EARLY, True), (-ANCHORED_AT_EARLY - 1, False), (ANCHORED_AT_LATE, True), (ANCHORED_AT_LATE + 1, False)):
        backend = TimedBackend("local:dev", attested - timedelta(seconds=lag))

        def backend_for(target: str, b: TimedBackend = backend) -> TimedBackend:
            return b

        if ok:
            await verify_receipt(good, backend_for)
        else:
            with pytest.raises(ReceiptInvalid, match=r"anchored_at 2026-01-01T00:00:00.123Z is \d+ s (before|after) the attested time"):
                await verify_receipt(good, backend_for)


@pytest.mark.parametrize("n", [1, 3])
async def test_a_version_1_receipt_still_verifies_and_says_what_it_does_not_bind(n) -> None:
    backend = TimedBackend("local:dev", datetime.fromtimestamp(AT, UTC))
    old = receipts_for(n, version=1)[0]
    assert Receipt.from_json(old.to_json()).version == 1
    edited = dataclasses.replace(old, namespace="someone-else", anchored_at="1999-01-01T00:00:00.000Z")
    vouched = await verify_receipt(edited, lambda t: backend)  # what it never bound
    assert vouched.unbound == ("namespace", "batch.id", "anchored_at")
    assert vouched.line(edited).endswith(
        "(local:dev); not bound by this version 1 receipt: namespace, batch.id, anchored_at"
    )
