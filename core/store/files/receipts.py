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
"""

from __future__ import annotations

import functools
import heapq
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from core.fsutil import (
    atomic_create_bytes,
    atomic_write_bytes,
    ensure_dir,
    is_temp_name,
    make_folder,
    make_folders,
    publish,
    remove_stale_temps,
    stage_in,
    sync_barrier,
    unlink_quietly,
)
from core.jobs import safe_name, unsafe_name
from core.receipts import Receipt, ReceiptError, load_receipt, parse_iso_utc, receipt_matches
from core.store.files.pending import PendingIndex
from core.store.protocols import Listing


@functools.lru_cache(maxsize=64)
def _stamp(anchored_at: str) -> str:
    """A receipt file name's time stamp, "YYYYmmddTHHMMSSfffZ", from its `anchored_at` (the
    receipts of one commit share it: computed once)."""
    at = parse_iso_utc(anchored_at)
    return at.strftime("%Y%m%dT%H%M%S") + f"{at.microsecond // 1000:03d}Z"


_NAME_RE = re.compile(r"^(\d{8}T\d{9}Z)-(.+)-([0-9a-f]{12})(?:-(\d+))?\.json$")


class ReceiptStore:
    """Receipts under `<data_dir>/receipts/<safe namespace>/`.

    Listings return `(Path, Receipt)` pairs. A file that cannot be read or parsed yields
    `(path, ReceiptError)` (its message names the file) instead of stopping the listing.
    """

    INDEX = ".pending"
    INDEX_COMPLETE = PendingIndex.COMPLETE

    def __init__(self, root_dir: str | os.PathLike[str]) -> None:
        self.root = Path(root_dir)
        self.index = self.root / self.INDEX
        self._index = PendingIndex(self.root, self.index)
        # Namespace folders (by name) rid of stale temps by this store: names, not Paths (a
        # Path a folder was 0.8 KB a job kept for as long as the daemon runs).
        self._cleaned: set[str] = set()
        self._root = str(self.root)

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

    def write_many(self, receipts: list[Receipt]) -> list[Path | Exception]:
        """Write new receipts as one group commit; each gets its path or its own error.

        Each receipt staged as a temp file and the pending ones named in the chunk's list
        (the pending index), one `sync_barrier` (their data, the list, new folders
        durable), each linked under its final name (link(2): never over a file), one
        `sync_barrier` over their folders: a chunk costs two flushes of the file system,
        not two fsyncs per receipt. A final name never points at data that is not
        durable, nor at a pending receipt its index entry does not name durably; nothing
        is returned as written before the second barrier. A failed flush fails every
        receipt it covered (a receipt already linked is found again from its token when
        the engine retries: core/store/files/claims.py).
        """
        results: list[Path | Exception] = []
        staged: list[tuple[int, Path, str, bytes, bool]] = []  # index, path, temp, data, pending
        created: list[Path] = []  # parents of folders created here
        token = int.from_bytes(os.urandom(4), "big")  # the chunk's temp names: token + index
        for index, receipt in enumerate(receipts):
            results.append(self._stage(index, receipt, staged, created, token + index))
        try:
            listing = self._index.open_list([path for _, path, _, _, pending in staged if pending], created)
        except OSError as exc:  # no list, no pending receipt: the others go on
            listing = None
            for index, _, tmp, _, pending in staged:
                if pending:
                    unlink_quietly(tmp)  # a staged receipt that will not be written
                    results[index] = exc
            staged = [item for item in staged if not item[4]]
        try:
            sync_barrier(files=[tmp for _, _, tmp, _, _ in staged] + ([listing] if listing else []), folders=created)
        except OSError as exc:
            for index, _, tmp, _, _ in staged:
                unlink_quietly(tmp)
                results[index] = exc
            if listing:
                self._index.close_list(listing, [])
            return results
        linked = self._link(staged, results)
        if listing:
            self._index.close_list(listing, [path for _, path, listed in linked if listed])
        try:
            sync_barrier(folders=[os.path.dirname(path) for _, path, _ in linked])
        except OSError as exc:
            for index, _, _ in linked:  # on disk, not known durable: the engine's retry finds them
                results[index] = exc
        return results

    def _link(
        self, staged: list[tuple[int, Path, str, bytes, bool]], results: list[Path | Exception],
    ) -> list[tuple[int, Path, bool]]:
        """Each staged receipt under its final name (a `-<n>` one when taken); the receipts
        linked (index, path), each with whether it is pending under the name its chunk's
        list gives."""
        linked: list[tuple[int, Path, bool]] = []
        for index, path, tmp, data, pending in staged:
            try:
                if publish(tmp, path):
                    linked.append((index, path, pending))
                    continue
                path = results[index] = self._create_under_free_name(path, data, pending)
            except Exception as exc:
                unlink_quietly(tmp)
                results[index] = exc
                continue
            linked.append((index, path, False))
        return linked

    def _stage(
        self, index: int, receipt: Receipt, staged: list[tuple[int, Path, str, bytes, bool]], created: list[Path],
        token: int,
    ) -> Path | Exception:
        """Its folder, its data in a temp file (nothing fsynced)."""
        name = None
        try:
            name = safe_name(receipt.namespace)
            folder = self._ready(name, created)
            file = self.file_name(receipt)
            data = receipt.to_bytes()
            path = Path(f"{folder}/{file}")
            staged.append((index, path, stage_in(folder, file, data, token), data, receipt.status == "pending"))
            return path
        except Exception as exc:
            if name is not None:
                self._cleaned.discard(name)  # removed meanwhile? made again at the retry
            return exc

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

    def _ready(self, name: str, created: list[Path]) -> str:
        """The namespace folder `name`, there to write into. One this store has written into
        is taken as there (no system call); a new one is made (its parent to sync in
        `created`); one found is rid of a kill -9's temp files before the first write here."""
        folder = f"{self._root}/{name}"
        if name in self._cleaned:
            return folder
        if not self._make_folder(name, created):
            remove_stale_temps(folder)
            # made by `prepare` on its thread a moment ago, maybe not flushed yet: this
            # chunk's flush covers its name too
            created.append(self.root)
        self._cleaned.add(name)
        return folder

    def _make_folder(self, name: str, created: list[Path]) -> bool:
        """The namespace folder `name` made (its parent to sync in `created`); False when it
        was there."""
        try:
            return make_folder(f"{self._root}/{name}", created)
        except FileNotFoundError:  # no receipts root yet
            ensure_dir(self.root / name, parents_to_sync=created)
            return True

    def prepare(self, namespaces: Iterable[str]) -> int:
        """Make the receipt folders of these namespaces that are not there yet, durable with
        one flush for all of them; how many were made. The engine calls it on a thread at
        start, so a first pass's receipts find their folders made (a mkdir is most of what
        a first receipt costs the disk); they are made by mkdir(1) child processes
        (`make_folders`), so the pass's batch reads go on meanwhile. A folder already there
        is left for its first write, which rids it of a kill -9's temp files."""
        created: list[Path] = []
        wanted = sorted({safe_name(ns) for ns in namespaces} - self._cleaned)
        if not wanted:
            return 0
        if not os.path.isdir(self._root):
            ensure_dir(self.root, parents_to_sync=created)
        made = make_folders(self._root, wanted, created)
        if created:
            sync_barrier(folders=created)
            self._cleaned.update(made)
        return len(made)

    def remove_stale_temps(self) -> list[Path]:
        """Temp files left by a kill -9 in the receipts root and the pending index (at start).

        Namespace folders are cleaned the first time this store writes into them, so a
        start never lists every receipt ever written.
        """
        removed = remove_stale_temps(self.root) + remove_stale_temps(self.index)
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
