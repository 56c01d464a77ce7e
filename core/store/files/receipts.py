"""The file store's receipts: one JSON file per job anchored (the document of
core/receipts.py).

Location: `<data_dir>/receipts/<safe_name(namespace)>/<YYYYmmddTHHMMSSfffZ>-<cadence>-<12 hex>.json`
(the 12 hex digits start the batch root). A receipt is written once, atomically, never
over an existing one (a `-<n>` suffix is added on a name clash); the only rewrite allowed
is `confirm()`, moving `pending` to `confirmed`.

Pending index (core/store/files/pending.py): `<data_dir>/receipts/.pending/`, one list per
commit chunk naming its pending receipts, durable before any of them is linked (an older
data dir's marker per pending receipt still read), so that finding the pending ones at
start reads only them, not every receipt ever written.

Staging folder: `<data_dir>/receipts/.staging/`, the temp files of the chunk being
written (linked from there under their final names; a receipt whose folder is on another
file system is staged in its own folder).
"""

from __future__ import annotations

import errno
import functools
import heapq
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Protocol, cast

from core.batchfs import publish_all, stage_all
from core.fsutil import (
    BackgroundFlushes,
    atomic_create_bytes,
    atomic_write_bytes,
    ensure_dir,
    is_temp_name,
    make_folder,
    make_folders,
    remove_stale_temps,
    sync_barrier,
    unlink_quietly,
)
from core.jobs import safe_name, unsafe_name
from core.receipts import Receipt, ReceiptError, load_receipt, parse_iso_utc, receipt_matches
from core.store.files.pending import PendingIndex
from core.store.files.receipt_process import Item, Outcome, ReceiptProcess, read_data
from core.store.protocols import Listing


@functools.lru_cache(maxsize=64)
def _stamp(anchored_at: str) -> str:
    """A receipt file name's time stamp, "YYYYmmddTHHMMSSfffZ", from its `anchored_at` (the
    receipts of one commit share it: computed once)."""
    at = parse_iso_utc(anchored_at)
    return at.strftime("%Y%m%dT%H%M%S") + f"{at.microsecond // 1000:03d}Z"


_NAME_RE = re.compile(r"^(\d{8}T\d{9}Z)-(.+)-([0-9a-f]{12})(?:-(\d+))?\.json$")


SLICE = 256  # receipts staged while the flush of the slice before runs (`slices`)

def slices(n: int) -> list[tuple[int, int]]:
    """Where `write_many` cuts a chunk of n receipts: (start, end) of each slice. SLICE each,
    but a short first slice (the first flush begins early, while the second is staged) and
    a short last one (less left to flush once all are staged); one slice up to SLICE."""
    if n <= SLICE:
        return [(0, n)]
    edge = SLICE // 4
    cuts = [0, edge, *range(edge + SLICE, n - edge, SLICE), n - edge, n]
    return list(itertools.pairwise(cuts))


class _Writable(Protocol):
    """What a group commit needs of a receipt: its bytes and whether it is pending."""

    @property
    def status(self) -> str: ...

    def to_bytes(self) -> bytes: ...


class _Made:
    """A receipt whose bytes its writer made beforehand (`write_many`'s `encoded`)."""

    __slots__ = ("data", "status")

    def __init__(self, data: bytes, status: str) -> None:
        self.data = data
        self.status = status

    def to_bytes(self) -> bytes:
        return self.data


class _Streamed:
    """The receipts of a request to the receipt writer process, as its group commit takes
    them: each one's bytes read from the request when it is staged (in order, once each:
    `_stage`), the rest read after the commit (`drain`); never a pending one (those are
    written in process, with the pending index)."""

    __slots__ = ("source", "taken")
    status = "confirmed"

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.taken = 0

    def to_bytes(self) -> bytes:
        self.taken += 1
        return read_data(self.source)

    def drain(self, count: int) -> None:
        """Read the bytes of the request's receipts not staged (after a failed flush)."""
        while self.taken < count:
            try:
                self.to_bytes()
            except ValueError:
                pass


_UNANSWERED = OSError(errno.EIO, "not answered by the receipt writer process")  # until it answers

Staged = tuple[int, str, Path, str, bytes, bool]  # index, namespace folder, final path, temp path, data, pending
Linked = tuple[int, Path, bool]  # index, path, pending under the name its chunk's list gives


class _GroupCommit:
    """One `ReceiptStore.write_many` once its receipts are named: slices staged, flushed
    and linked in turn, a flush running on its own thread while this one works (see
    `write_many`)."""

    def __init__(
        self, store: ReceiptStore, receipts: Sequence[_Writable], results: list[Path | Exception],
        created: list[str | Path], listing: Path | None,
    ) -> None:
        self.store = store
        self.receipts = receipts
        self.results = results
        self.created = created  # parents of folders made since the last flush began
        self.listing = listing
        self.first = [str(listing)] if listing is not None else []  # flushed with the first slice
        self.token = int.from_bytes(os.urandom(4), "big")  # temp names: token + index
        self.flushes = BackgroundFlushes()
        self.flush: Future[None] | None = None  # the flush running on `flushes`' thread
        self.flushing: list[Staged] = []  # the slice the running flush makes durable
        self.covering: list[Linked] = []  # the links it makes durable
        self.fresh: list[Linked] = []  # links made since it began
        self.durable: list[int] = []  # receipts whose links a finished flush covered
        self.listed: list[Path] = []  # receipts linked under the names the list gives

    def run(self, plan: list[tuple[int, str, str]]) -> None:
        staged: list[Staged] = []
        try:
            parts = slices(len(plan))
            for n, (start, end) in enumerate(parts):
                staged = self.store._stage(plan[start:end], self.receipts, self.results, self.created, self.token)
                ready = self._finish()
                self._begin(staged, background=bool(ready) or n + 1 < len(parts))
                staged = []
                self._link(ready)
            self._link(self._finish())
            self._begin([], background=False)
            self._finish()
        except OSError as exc:  # a flush failed: nothing not durable yet is written
            self._fail(exc, plan, staged)
        finally:
            self.flushes.close()  # after an error of another kind: no flush left running
            if self.listing is not None:
                self.store._index.close_list(self.listing, self.listed)

    def _begin(self, staged: list[Staged], *, background: bool) -> None:
        """A flush of `staged`'s data, the folders made and the links made since the last one
        began (and the list, the first time); on a thread when there is work meanwhile."""
        files = [*self.first, *(tmp for _, _, _, tmp, _, _ in staged)]
        self.first = []
        created, linked = self.created, self.fresh
        # looked at without syncfs only (each folder fsynced then), on the flush's thread
        folders = itertools.chain(created, (os.path.dirname(path) for _, path, _ in linked))
        on = self.store._flush_points()
        self.created = []
        self.flushing, self.covering, self.fresh = staged, linked, []
        if background:
            self.flush = self.flushes.start(lambda: sync_barrier(files=files, folders=folders, on=on))
        else:
            sync_barrier(files=files, folders=folders, on=on)
            self.flush = None
            self._done()

    def _finish(self) -> list[Staged]:
        """Wait for the running flush (raises its OSError); the slice it made durable, to link."""
        if self.flush is not None:
            flush, self.flush = self.flush, None
            flush.result()
            self._done()
        ready, self.flushing = self.flushing, []
        return ready

    def _done(self) -> None:
        self.durable += [index for index, _, _ in self.covering]
        self.covering = []

    def _link(self, ready: list[Staged]) -> None:
        linked = self.store._link(ready, self.results, self.created)
        self.fresh += linked
        self.listed += [path for _, path, listed in linked if listed]

    def _fail(self, exc: OSError, plan: list[tuple[int, str, str]], staged: list[Staged]) -> None:
        """Every receipt not durable fails with `exc`: staged ones lose their temp files,
        linked ones stay (found again from their token at the retry), the rest is not
        written; their folders are made again (or found) at the next write."""
        for _, _, _, tmp, _, _ in [*self.flushing, *staged]:
            unlink_quietly(tmp)
        self.flushing = []
        durable = set(self.durable)
        for index, name, _ in plan:
            if index not in durable and isinstance(self.results[index], Path):
                self.results[index] = exc
                self.store._cleaned.discard(name)


class ReceiptStore:
    """Receipts under `<data_dir>/receipts/<safe namespace>/`.

    Listings return `(Path, Receipt)` pairs. A file that cannot be read or parsed yields
    `(path, ReceiptError)` (its message names the file) instead of stopping the listing.
    """

    INDEX = ".pending"
    STAGING = ".staging"  # temp files of the chunk being written (hidden: no namespace's)
    INDEX_COMPLETE = PendingIndex.COMPLETE

    PROCESS_FROM = 64  # receipts of a chunk from which the receipt writer process writes it

    def __init__(self, root_dir: str | os.PathLike[str], *, in_a_process: bool = False) -> None:
        """`in_a_process`: chunks of PROCESS_FROM receipts or more, none pending, are written
        by a child process (core/store/files/receipt_process.py): the scheduler's store."""
        self.root = Path(root_dir)
        self.index = self.root / self.INDEX
        self._index = PendingIndex(self.root, self.index)
        # Namespace folders (by name) rid of stale temps by this store: names, not Paths (a
        # Path a folder was 0.8 KB a job kept for as long as the daemon runs).
        self._cleaned: set[str] = set()
        self._prepared: set[str] = set()  # made by `prepare`, not written into yet (nor flushed)
        self._found: set[str] = set()  # found there by `prepare`, not written into yet
        self._folders = {"cleaned": self._cleaned, "prepared": self._prepared, "found": self._found}  # by state
        self._foreign: set[str] = set()  # namespace folders found on another file system
        self._staging: bool | None = None  # the staging folder usable (None: not looked at yet)
        self._elsewhere: dict[int, str] = {}  # a device other than the root's -> a folder on it
        self._index_device: int | None = None  # the pending index's folder, looked at once
        self._root_device: int | None = None
        self._root = str(self.root)
        self.process = ReceiptProcess(self._root) if in_a_process else None

    # ---- writing

    @staticmethod
    def file_name(receipt: Receipt) -> str:
        return f"{_stamp(receipt.anchored_at)}-{safe_name(receipt.cadence)}-{receipt.batch.root.removeprefix('sha256:')[:12]}.json"

    def write(self, receipt: Receipt) -> Path:
        """Write a new receipt durably; never replaces an existing file."""
        result = self.write_many([receipt])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def write_many(self, receipts: list[Receipt], encoded: Sequence[bytes] | None = None) -> list[Path | Exception]:
        """Write new receipts as one group commit; each gets its path or its own error.
        `encoded`: their bytes (`Receipt.to_bytes()`), made beforehand by the caller.

        The pending ones named in the chunk's list (the pending index) first; then, SLICE
        receipts at a time, each receipt staged as a temp file and, once a flush of the
        file system begun after its staging is done (its data, the list, new folders
        durable), linked under its final name (link(2): never over a file). Flushes run on
        a thread of their own, one after the other: while one runs this thread stages the
        next slice and links the slice the one before made durable, so a flush begun after
        a slice's links makes them durable along with the next slice's data. A chunk of n
        slices costs n + 1 flushes (two for one slice), not two fsyncs per receipt. A
        final name never points at data that is not durable, nor at a pending receipt its
        list does not name durably; nothing is returned as written before a flush begun
        after its link is done. A failed flush fails every receipt not yet durable (a
        receipt already linked is found again from its token when the engine retries:
        core/store/files/claims.py) and the ones not staged yet.
        """
        results: list[Path | Exception] = []
        plan: list[tuple[int, str, str]] = []  # index, namespace folder, file name
        root = self._root
        small_or_pending = len(receipts) < self.PROCESS_FROM or any(r.status == "pending" for r in receipts)
        process = None if small_or_pending else self.process
        for index, receipt in enumerate(receipts):
            try:
                name, file = safe_name(receipt.namespace), self.file_name(receipt)
            except Exception as exc:
                results.append(exc)
                continue
            # by the process: each path made from its answer (a `-<n>` name when taken)
            results.append(_UNANSWERED if process is not None else Path(f"{root}/{name}/{file}"))
            plan.append((index, name, file))
        writable: Sequence[_Writable] = (
            receipts if encoded is None else [_Made(data, r.status) for r, data in zip(receipts, encoded, strict=True)]
        )
        if process is not None:
            self._write_in(process, writable, results, plan)
        elif plan:
            self._commit(writable, results, plan)
        return results

    def _commit(self, receipts: Sequence[_Writable], results: list[Path | Exception], plan: list[tuple[int, str, str]]) -> None:
        """`plan`'s receipts as one group commit, in this process (`write_many`)."""
        created: list[str | Path] = []  # parents of folders made, for the next flush
        listing = self._open_list(receipts, results, plan, created)
        _GroupCommit(self, receipts, results, created, listing).run(plan)

    def _write_in(
        self, process: ReceiptProcess, receipts: Sequence[_Writable], results: list[Path | Exception],
        plan: list[tuple[int, str, str]],
    ) -> None:
        """`plan`'s receipts written by the receipt writer process: their bytes made here,
        the folders' state sent with them and updated from the outcomes."""
        unmade: dict[int, Exception] = {}

        def made() -> Iterator[bytes | None]:
            for index, _, _ in plan:
                try:
                    yield receipts[index].to_bytes()
                except Exception as exc:
                    unmade[index] = exc
                    yield None

        known = {name: state for _, name, _ in plan if (state := self._folder_state(name)) is not None}
        outcomes = process.write([(name, file) for _, name, file in plan], known, made())
        for (index, name, _), outcome in zip(plan, outcomes, strict=True):
            if index in unmade:
                results[index] = unmade[index]
            elif isinstance(outcome, str):
                results[index] = Path(outcome)
                self._know_folder(name, "cleaned")
            else:
                results[index] = outcome if isinstance(outcome, Exception) else OSError(errno.EIO, repr(outcome))
                self._cleaned.discard(name)

    def _folder_state(self, name: str) -> str | None:
        """What this store knows of a namespace folder (`_ready`): cleaned, prepared, found."""
        return next((state for state, names in self._folders.items() if name in names), None)

    def _know_folder(self, name: str, state: str) -> None:
        """A namespace folder's state is `state` now (and no other: `_folder_state`)."""
        for names in self._folders.values():
            names.discard(name)
        self._folders[state].add(name)

    def write_streamed(self, items: list[Item], known: dict[str, str], source: IO[bytes]) -> list[Outcome]:
        """The receipt writer process's side of `write_many` (core/store/files/receipt_worker.py):
        receipts (never pending ones) whose bytes `source` gives in order, as one group
        commit; each one's path (text) or error. `known`: the scheduler's store's view of
        their folders, taken over here."""
        for name, state in known.items():
            self._know_folder(name, state)
        results: list[Path | Exception] = [Path(f"{self._root}/{name}/{file}") for name, file in items]
        streamed = _Streamed(source)
        try:
            self._commit([streamed] * len(items), results, [(index, *item) for index, item in enumerate(items)])
        finally:
            streamed.drain(len(items))
        return [str(result) if isinstance(result, Path) else result for result in results]

    def keep_open_in_process(self, fd: int) -> None:
        """A file descriptor the receipt writer process inherits: the data dir's lock."""
        if self.process is not None:
            self.process.keep_open = (*self.process.keep_open, fd)

    def close(self) -> None:
        """End the receipt writer process, if one runs."""
        if self.process is not None:
            self.process.close()

    def _open_list(
        self, receipts: Sequence[_Writable], results: list[Path | Exception], plan: list[tuple[int, str, str]],
        created: list[str | Path],
    ) -> Path | None:
        """The chunk's list naming its pending receipts (None without any); when it cannot be
        made, each pending receipt fails with its error and leaves `plan` (the others go on)."""
        pending = [index for index, _, _ in plan if receipts[index].status == "pending"]
        if not pending:
            return None
        try:
            listing = self._index.open_list([cast(Path, results[index]) for index in pending], cast(list[Path], created))
        except OSError as exc:  # no list, no pending receipt
            for index in pending:
                results[index] = exc
            plan[:] = [item for item in plan if isinstance(results[item[0]], Path)]
            return None
        if listing is not None and self._index_device is None:
            self._index_device = self._device_of(self.index)
        return listing

    def _flush_points(self) -> list[str]:
        """A folder on each file system the receipts may be on: the root's, and the few
        others found (a namespace folder or the index mounted or linked elsewhere). A
        folder made here is on its parent's file system, so only folders found are
        looked at (once each), never the 10,000 a chunk makes."""
        return [self._root, *self._elsewhere.values()]

    def _device_of(self, folder: str | Path) -> int:
        """`folder`'s device, remembered when it is not the root's; 0 when it cannot be read."""
        try:
            if self._root_device is None:
                self._root_device = os.stat(self._root).st_dev
            device = os.stat(folder).st_dev
        except OSError:
            return 0
        if device != self._root_device:
            self._elsewhere.setdefault(device, str(folder))
        return device

    def _link(
        self, staged: list[Staged], results: list[Path | Exception], created: list[str | Path],
    ) -> list[Linked]:
        """Each staged receipt under its final name (a `-<n>` one when taken), its folder made
        first when it is new (then its name and the receipt's are made durable by one
        flush: a folder's block journaled once, not at its making and again at its first
        name); the receipts linked (index, path), each with whether it is pending under the
        name its chunk's list gives."""
        linked: list[Linked] = []
        ready: list[Staged] = []
        for item in staged:
            try:
                self._ready(item[1], created)
            except Exception as exc:
                self._unwritten(item, exc, results)
                continue
            ready.append(item)
        outcomes = publish_all([(tmp, str(path)) for _, _, path, tmp, _, _ in ready])
        for item, done in zip(ready, outcomes, strict=True):
            index, name, path, tmp, data, pending = item
            try:
                if isinstance(done, OSError):
                    if done.errno != errno.EXDEV:
                        raise done
                    # its folder is on another file system than the staging folder (a mount
                    # point, a link): written there on its own, fsynced (staged there next time)
                    done = atomic_create_bytes(path, data, sync_folder=False)
                if done:
                    linked.append((index, path, pending))
                    continue
                path = results[index] = self._create_under_free_name(path, data, pending)
            except Exception as exc:
                self._unwritten(item, exc, results)
                continue
            linked.append((index, path, False))
        return linked

    def _unwritten(self, item: Staged, exc: Exception, results: list[Path | Exception]) -> None:
        """A staged receipt that could not be linked: its temp file goes, its error is its
        result, its folder is looked at again at the retry (removed meanwhile?)."""
        index, name, _, tmp, _, _ = item
        unlink_quietly(tmp)
        results[index] = exc
        self._cleaned.discard(name)

    def _stage(
        self, part: list[tuple[int, str, str]], receipts: Sequence[_Writable], results: list[Path | Exception],
        created: list[str | Path], token: int,
    ) -> list[Staged]:
        """Each receipt of `part` as a temp file in the staging folder (in its own folder when
        that one is on another file system), nothing fsynced; the receipts staged; a
        failure is the receipt's result."""
        staged: list[Staged] = []
        staging = self._staging_folder(created)
        foreign = self._foreign
        files: list[tuple[int, str, str, str, bytes]] = []  # index, namespace folder, folder staged in, name, data
        for index, name, file in part:
            try:
                data = receipts[index].to_bytes()
                folder = staging if staging is not None and name not in foreign else self._ready(name, created)
            except Exception as exc:
                self._not_staged(name, exc, index, results)
                continue
            files.append((index, name, folder, file, data))
        temps = stage_all([(folder, file, data, token + index) for index, _, folder, file, data in files])
        for (index, name, _, _, data), tmp in zip(files, temps, strict=True):
            if isinstance(tmp, OSError):
                self._not_staged(name, tmp, index, results)
                continue
            staged.append((index, name, cast(Path, results[index]), tmp, data, receipts[index].status == "pending"))
        return staged

    def _not_staged(self, name: str, exc: Exception, index: int, results: list[Path | Exception]) -> None:
        """A receipt that could not be staged: its error is its result; its folder, and the
        staging folder, are looked at again at the retry."""
        self._cleaned.discard(name)  # removed meanwhile? made again at the retry
        self._staging = None  # the staging folder too
        results[index] = exc

    def _staging_folder(self, created: list[str | Path]) -> str | None:
        """`<root>/.staging`, where a chunk's temp files are staged (made at its first use, its
        parent then in `created`); None when it is not on the root's file system (each
        receipt then staged in its own folder)."""
        folder = f"{self._root}/{self.STAGING}"
        if self._staging is None:
            made = self._make_folder(self.STAGING, created)
            self._staging = made or (os.path.isdir(folder) and self._device_of(folder) == self._root_device)
        return folder if self._staging else None

    def _create_under_free_name(self, taken: Path, data: bytes, pending: bool) -> Path:
        """`taken` exists (a clash): create the receipt under the next free `-<n>` name (a
        pending one marked on its own first: its chunk's list names `taken`)."""
        m = re.match(r"(.*?)(?:-(\d+))?\.json\Z", taken.name)
        stem, n = (m.group(1), int(m.group(2) or 0)) if m else (taken.stem, 0)
        while True:
            n += 1
            path = taken.with_name(f"{stem}-{n}.json")
            if pending and not self._index.mark(path):
                continue
            written = False
            try:
                written = atomic_create_bytes(path, data, sync_folder=False)
            finally:
                if pending:
                    self._index.marked(path, written)
            if written:
                return path

    def _ready(self, name: str, created: list[str | Path]) -> str:
        """The namespace folder `name`, there to write into. One this store has written into
        is taken as there (no system call), as is one `prepare` made (its name to flush:
        the root in `created`); a new one is made (its parent in `created`); one found
        (here or by `prepare`) is rid of a kill -9's temp files before the first write
        here, and its file system noted when it is not the root's."""
        folder = f"{self._root}/{name}"
        if name in self._cleaned:
            return folder
        if name in self._prepared:
            self._prepared.discard(name)
            created.append(self._root)
        elif name in self._found or not self._make_folder(name, created):
            self._found.discard(name)
            remove_stale_temps(folder)
            if self._device_of(folder) != self._root_device:
                self._foreign.add(name)
            # its name maybe not durable yet (made by `prepare` unflushed, or before a failed
            # flush): without syncfs the root is fsynced with the receipt's name (with
            # syncfs any flush covers it)
            created.append(self._root)
        self._cleaned.add(name)
        return folder

    def _make_folder(self, name: str, created: list[str | Path]) -> bool:
        """The namespace folder `name` made (its parent to sync in `created`); False when it
        was there."""
        try:
            made = make_folder(f"{self._root}/{name}")
        except FileNotFoundError:  # no receipts root yet
            ensure_dir(self.root / name, parents_to_sync=cast(list[Path], created))
            return True
        if made:
            created.append(self._root)
        return made

    def prepare(self, namespaces: Iterable[str]) -> int:
        """Make the receipt folders of these namespaces that are not there yet; how many
        were made. The engine calls it at start, while the first pass reads its batches,
        so that its receipts find their folders made (a mkdir is most of what a first
        receipt costs the disk); they are made by mkdir(1) child processes
        (`make_folders`), so the reads go on meanwhile. Their names are made durable by the
        first receipts' own flush, as for a folder the write makes; the file system is
        flushed here as well, on this (the engine's worker) thread while the reads go on,
        so that the first receipts' flush is not the one that writes 10,000 new folders
        out (it took the first chunk 80 ms more than the next ones). A folder already
        there is left for its first write (which does not try to make it again), which
        rids it of a kill -9's temp files."""
        wanted = {safe_name(ns) for ns in namespaces} - self._cleaned - self._prepared - self._found
        if not wanted:
            return 0
        if self.process is not None and len(wanted) >= self.PROCESS_FROM:
            try:
                self.process.start()  # its imports beside the reads, not in the first chunk's way
            except OSError:
                pass  # the first chunk tries again (and fails it, if it still cannot)
        if not os.path.isdir(self._root):
            ensure_dir(self.root)  # durable at once: the folders made below are its children
        self._staging_folder([])  # its name needs no flush: a temp file's is never looked up after a crash
        made = make_folders(self._root, sorted(wanted))
        if made:
            sync_barrier(on=self._flush_points())  # their metadata out now: see above
        self._prepared.update(made)
        self._found.update(wanted.difference(made))  # cleaned, and their names flushed, at the first write
        return len(made)

    def remove_stale_temps(self) -> list[Path]:
        """Temp files left by a kill -9 in the receipts root, its staging folder and the
        pending index (at start).

        Namespace folders (where older versions staged, and a receipt whose folder is on
        another file system is) are cleaned the first time this store writes into them, so
        a start never lists every receipt ever written.
        """
        removed = (
            remove_stale_temps(self.root)
            + remove_stale_temps(f"{self._root}/{self.STAGING}")
            + remove_stale_temps(self.index)
        )
        return removed

    def load(self, path: str | os.PathLike[str]) -> Receipt:
        """One receipt of this store by its path (the PostgreSQL store: by its name)."""
        return load_receipt(path)

    def confirm(self, path: str | os.PathLike[str], observed: int) -> Receipt:
        """Move a pending receipt to confirmed (the only rewrite allowed); idempotent. Its
        index entry goes once the confirmation is durable (a chunk's list with the last
        of its receipts)."""
        path = Path(path)
        receipt = load_receipt(path)
        if receipt.status != "confirmed":
            receipt = receipt.confirmed(observed)
            atomic_write_bytes(path, receipt.to_bytes())
        self._index.forget(path)
        return receipt

    # ---- reading

    def _namespace_dirs(self, root: Path | None = None) -> Iterator[Path]:
        """The namespace folders under `root` (the receipts root, or the pending index)."""
        try:
            entries = list(os.scandir(root or self.root))
        except FileNotFoundError:
            return
        for e in entries:
            if not e.name.startswith(".") and e.is_dir():
                yield Path(e.path)

    @staticmethod
    def _names(folder: Path) -> list[str]:
        try:
            return [
                e.name
                for e in os.scandir(folder)
                if e.name.endswith(".json") and not is_temp_name(e.name)
            ]
        except FileNotFoundError:
            return []

    @staticmethod
    def _read(path: Path) -> tuple[Path, Receipt | ReceiptError]:
        try:
            return path, load_receipt(path)
        except ReceiptError as exc:
            return path, exc

    def recent(self, limit: int = 50) -> Listing:
        """The newest `limit` receipts of all namespaces, newest first (by file name)."""
        if limit <= 0:
            return []
        candidates = (
            (name, folder) for folder in self._namespace_dirs() for name in self._names(folder)
        )
        newest = heapq.nlargest(limit, candidates, key=lambda c: c[0])
        return [self._read(folder / name) for name, folder in newest]

    def for_job(self, namespace: str, cadence: str, limit: int = 50) -> Listing:
        """The newest `limit` receipts of one job, newest first."""
        if limit <= 0:
            return []
        folder = self.root / safe_name(namespace)
        want = safe_name(cadence)
        names = []
        for name in self._names(folder):
            m = _NAME_RE.match(name)
            if m and m.group(2) == want:
                names.append(name)
        return [self._read(folder / n) for n in heapq.nlargest(limit, names)]

    def all_paths(self) -> list[Path]:
        return sorted(
            (folder / name for folder in self._namespace_dirs() for name in self._names(folder)),
            key=lambda p: p.name,
        )

    def find(self, *, root: str | None = None, batch_id: str | None = None, limit: int = 50) -> Listing:
        """Newest first (by file name); a file is parsed only when it holds the text asked
        for (a million receipts: a read each, a parse for the few that match)."""
        wanted = [json.dumps(v, ensure_ascii=False)[1:-1].encode() for v in (root, batch_id) if v is not None]
        out: Listing = []
        for path in reversed(self.all_paths()):
            if len(out) >= limit:
                break
            try:
                data = path.read_bytes()
            except OSError:
                continue  # removed meanwhile, or unreadable: verify names such files
            if all(w in data for w in wanted):
                _, item = self._read(path)
                if isinstance(item, Receipt) and receipt_matches(item, root=root, batch_id=batch_id):
                    out.append((path, item))
        return out

    def every(self) -> Iterator[tuple[Path, Receipt | ReceiptError]]:
        """Every receipt, oldest first (by file name), read one at a time."""
        return map(self._read, self.all_paths())

    def pending(self) -> list[tuple[Path, Receipt]]:
        """Receipts still `pending` (oldest first). The first call reads the ones the index
        names (every receipt, once, in a data dir without an index); later calls read only
        the ones this store knows are pending (it tracks write/confirm). Unreadable files
        are not listed here (their status is unknown); `recent` shows them."""
        seen = self._index.load(self._read, self.all_paths)
        out = []
        for path in self._index.known():
            got = seen.get(path)
            path, receipt = (path, got) if got is not None else self._read(path)
            if isinstance(receipt, Receipt) and receipt.status == "pending":
                out.append((path, receipt))
            elif isinstance(receipt, Receipt) or not path.exists():
                self._index.forget(path)  # confirmed, or gone: its entry goes too
        return out

    @staticmethod
    def namespace_of(path: Path) -> str:
        return unsafe_name(path.parent.name)
