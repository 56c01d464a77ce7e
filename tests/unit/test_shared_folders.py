"""A batch folder shared by many namespaces (VaultMesh's `out/batches/`): listed once per
change, off the event loop, and every namespace reading it gets the result."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from core import batchread, sources
from core.sources import SourceError, latest_batch, write_batch

pytestmark = pytest.mark.usefixtures("batch_reads")  # each test both ways (tests/conftest.py)

NAMESPACES = 50
FILES = 10_000


def root(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def fill(folder: Path, count: int) -> None:
    """`count` batch files 000000.json ... (written raw: write_batch is atomic, hence slower)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (folder / f"{n:06d}.json").write_text(f'{{"id": "{n:06d}", "root": "{root(n)}"}}')


class Listings:
    """Wraps os.scandir and core/batchread.py's one call (when it listed the folder): the
    threads each folder was listed on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: dict[str, list[threading.Thread]] = {}
        real, real_newest = os.scandir, batchread.newest

        def scandir(path=".") -> object:
            self.listed(str(path))
            return real(path)

        def newest(folder: str, cap: int, follow: bool) -> batchread.Listed | None:
            found = real_newest(folder, cap, follow)
            if found is not None:  # else the folder is listed the Python way (os.scandir)
                self.listed(folder)
            return found

        monkeypatch.setattr(os, "scandir", scandir)
        monkeypatch.setattr(batchread, "newest", newest)

    def listed(self, folder: str) -> None:
        self.threads.setdefault(folder, []).append(threading.current_thread())

    def count(self, folder: Path) -> int:
        return len(self.threads.get(str(folder), []))


@pytest.fixture(autouse=True)
def _fresh():
    sources.configure({})
    yield
    sources.configure({})


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shared") / "batches"
    fill(folder, FILES)
    return folder


def namespaces_on(shared: Path) -> list[Path]:
    """NAMESPACES namespace folders that do not exist and fall back to `shared` (the layout)."""
    own = [shared / f"ns{n}" for n in range(NAMESPACES)]
    sources.configure({folder: sources.BatchLimits(fallbacks=(shared,)) for folder in own})
    return own


def test_fifty_namespaces_on_one_folder_list_it_once_per_change(tmp_path: Path, monkeypatch) -> None:
    shared = tmp_path / "batches"
    fill(shared, FILES)
    own = namespaces_on(shared)
    listings = Listings(monkeypatch)
    newest = FILES - 1
    for change in range(3):
        if change:
            newest += 1
            write_batch(shared, f"{newest:06d}", root(newest))  # a writer adds a file
        before = listings.count(shared)
        sources.prefetch(own)  # the engine's worker thread, before a pass
        got = {latest_batch(folder).root for folder in own}  # each namespace's _take
        assert got == {root(newest)}, f"change {change}: every namespace gets the new latest"
        assert listings.count(shared) - before == 1, f"change {change}: one listing"


def test_one_source_named_by_fifty_jobs_is_listed_once_per_change(tmp_path: Path, monkeypatch) -> None:
    shared = tmp_path / "batches"
    fill(shared, FILES)
    listings = Listings(monkeypatch)
    for newest in (FILES - 1, FILES, FILES + 1):
        if newest >= FILES:
            write_batch(shared, f"{newest:06d}", root(newest))
        before = listings.count(shared)
        sources.prefetch([shared] * NAMESPACES)  # one per due job, as the engine names them
        assert {latest_batch(shared).root for _ in range(NAMESPACES)} == {root(newest)}
        assert listings.count(shared) - before == 1


def test_a_prefetch_is_handed_to_as_many_calls_as_it_was_asked_for(tmp_path: Path) -> None:
    """Off the loop, the result serves one call per time the folder was named: the call
    after that looks at the folder again (another replica's newer batch is seen)."""
    shared = tmp_path / "batches"
    write_batch(shared, "000001", root(1))
    sources.prefetch([shared, shared])
    write_batch(shared, "000002", root(2))
    assert latest_batch(shared).root == root(1)  # the prefetched result, no I/O
    assert latest_batch(shared).root == root(1)
    assert latest_batch(shared).root == root(2)  # read again


def test_errors_are_shared_with_their_messages(tmp_path: Path, monkeypatch) -> None:
    shared = tmp_path / "batches"
    shared.mkdir()
    (shared / "000001.json").write_text("{")
    own = namespaces_on(shared)
    listings = Listings(monkeypatch)
    sources.prefetch(own)
    for folder in own:
        with pytest.raises(SourceError) as info:
            latest_batch(folder)
        assert str(info.value) == (
            f"batch file {shared / '000001.json'}:1:2: not valid JSON: Expecting property name "
            f"enclosed in double quotes (read because there is no folder {folder})"
        )
    assert listings.count(shared) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    sources.prefetch([empty] * 3)
    for _ in range(3):
        with pytest.raises(SourceError, match=f"batch folder {empty} has no batch files"):
            latest_batch(empty)
    assert listings.count(empty) == 1


async def test_on_the_loop_a_pass_takes_the_prefetch_even_after_the_folder_changed(
    big: Path, monkeypatch
) -> None:
    """A job that became due after the prefetch (no call was asked for it) reads on the
    loop: it takes the pass's prefetched result, it never lists the folder there."""
    import asyncio

    loop_thread = threading.current_thread()
    own = namespaces_on(big)
    listings = Listings(monkeypatch)
    await asyncio.to_thread(sources.prefetch, own[:1])
    write_batch(big, f"{FILES + 5:06d}", root(FILES + 5))  # the writer, meanwhile
    try:
        assert {latest_batch(folder).root for folder in own} == {root(FILES - 1)}
        assert loop_thread not in listings.threads.get(str(big), [])
        # the next pass's prefetch sees the new file; until then nothing is listed on the loop
        await asyncio.to_thread(sources.prefetch, own)
        assert {latest_batch(folder).root for folder in own} == {root(FILES + 5)}
        assert listings.count(big) == 2
        assert loop_thread not in listings.threads[str(big)]
    finally:
        os.unlink(big / f"{FILES + 5:06d}.json")


def test_a_folder_replaced_by_another_with_the_same_mtime_is_listed_again(tmp_path: Path) -> None:
    first = tmp_path / "batches"
    write_batch(first, "000002", root(2))
    st = os.stat(first)
    old = st.st_mtime_ns - 60 * 10**9
    os.utime(first / "000002.json", ns=(old, old))
    os.utime(first, ns=(old, old))
    assert latest_batch(first).root == root(2)
    other = tmp_path / "other"
    write_batch(other, "000002", root(3))  # same name and size as the cached one
    os.utime(other / "000002.json", ns=(old, old))
    os.utime(other, ns=(old, old))
    first.rename(tmp_path / "gone")
    other.rename(first)  # same path, same mtimes, another folder (inode)
    assert latest_batch(first).root == root(3)
