"""The file store's pending index: where the receipts that may still be pending are named,
so that a start reads only those, not every receipt ever written
(core/store/files/receipts.py `ReceiptStore` writes the receipts and asks this index).

`<receipts>/.pending/<8 hex>.list`, one per commit chunk holding pending receipts: their
paths (`<safe namespace>/<file name>`), one a line. It is created with the chunk's temp
files and made durable by the chunk's first flush, before any of its receipts has its
final name. So a list torn by a crash names only receipts that were never linked (and a
last line cut short is skipped when read). It goes once none of its receipts is pending:
when `confirm()` confirms the last of them, or when it is read at a start and every one
it names is confirmed or gone; a list read at a start with fewer than half of its
receipts still pending is written again with only those (the next start reads less).

`<receipts>/.pending/<safe namespace>/<file name minus .json>`, an empty marker per
pending receipt: the older format, still read (a marker whose receipt is confirmed or gone
is removed), and still written for a receipt whose name was taken when it was linked (it
moves to a `-<n>` name its chunk's list does not give: marked and fsynced on its own
before it is created). Names stay unique without a reservation: a receipt is linked with
link(2), which fails on a name taken, and no other process writes here (the data-dir lock,
core/store/files/lock.py).

`.pending/.complete`: the index is trusted only once it exists; a data dir from before
the index is scanned in full once and indexed (one list).

`pending()` runs on another thread than the writer (the confirmation tracker's), so an
entry in flight (a chunk's list from its creation to its receipts' links, a marker before
its receipt) is never removed by a reader.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

from core.fsutil import (
    atomic_write_bytes,
    create_empty,
    create_new,
    ensure_dir,
    fsync_dir,
    is_temp_name,
    sync_barrier,
)
from core.receipts import Receipt, ReceiptError

MARKER = ""  # the index entry of a receipt marked on its own (no list)
# A list's line: `<safe namespace>/<name>.json` (no other slash, not hidden, no NUL).
_LINE = re.compile(r"[^./\x00][^/\x00]*/[^/\x00]+\.json")

Read = Callable[[Path], tuple[Path, Receipt | ReceiptError]]


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class PendingIndex:
    COMPLETE = ".complete"
    SUFFIX = ".list"

    def __init__(self, root: Path, folder: Path) -> None:
        self.root = root  # the receipts root, the lists' paths are relative to it
        self.folder = folder
        self._lock = threading.Lock()  # the maps below: the writer's and readers' threads
        self._loading = threading.Lock()  # one load, whatever the threads asking
        self._known: dict[Path, str] = {}  # receipt known pending -> its list's name, or MARKER
        self._live: dict[str, int] = {}  # a list -> how many of `_known` it holds
        self._busy: set[str] = set()  # lists and markers in flight: no reader removes them
        self._loaded = False
        self._made = False  # the index folder is there (made or seen by this store)

    # ---- writing

    def open_list(self, paths: list[Path], created: list[Path]) -> Path | None:
        """A new list naming `paths` (their receipts not linked yet), not fsynced: the
        caller's `sync_barrier` makes it durable before any of them is linked, then calls
        `close_list`. None without paths."""
        if not paths:
            return None
        if not self._made:
            ensure_dir(self.folder, parents_to_sync=created)
            self._made = True
        body = "".join(f"{p.parent.name}/{p.name}\n" for p in dict.fromkeys(paths)).encode()
        while True:
            name = secrets.token_hex(4) + self.SUFFIX
            with self._lock:
                self._busy.add(name)
            made = False
            try:
                made = create_new(self.folder / name, body)
            except FileNotFoundError:
                self._made = False  # the folder went meanwhile: made again at the retry
                raise
            finally:
                if not made:
                    with self._lock:
                        self._busy.discard(name)
            if made:
                return self.folder / name

    def close_list(self, listing: Path, linked: list[Path]) -> None:
        """The receipts of `listing` linked under the names it gives are known pending; a
        list holding none goes (a chunk whose flush failed: none)."""
        name = listing.name
        with self._lock:
            held = self._hold(name, linked)
            self._busy.discard(name)
            self._live[name] = held
            if not held:
                self._drop_list(name)

    def _hold(self, name: str, paths: list[Path]) -> int:
        """(Under the lock.) The receipts of `paths` not known yet known as list `name`'s;
        how many of the known ones the list then holds (not stored: the caller decides)."""
        held = self._live.get(name, 0)
        for path in paths:
            if path not in self._known:
                self._known[path] = name
                held += 1
        return held

    def _drop_list(self, name: str) -> None:
        """(Under the lock.) Not durable, nor need it be: a list left names no pending receipt."""
        self._live.pop(name, None)
        _unlink(self.folder / name)

    def _marker(self, path: Path) -> Path:
        return self.folder / path.parent.name / path.name.removesuffix(".json")

    def mark(self, path: Path) -> bool:
        """The receipt `path`'s own marker, created durably before the receipt (then
        `marked`); False if one exists."""
        marker = self._marker(path)
        with self._lock:
            self._busy.add(str(marker))
        made = False
        try:
            made = create_empty(marker)
            if made:
                fsync_dir(marker.parent)  # never raises
            return made
        finally:
            if not made:
                with self._lock:
                    self._busy.discard(str(marker))

    def marked(self, path: Path, written: bool) -> None:
        """After `mark`: the receipt is written (known pending) or not (its marker goes)."""
        marker = self._marker(path)
        with self._lock:
            self._busy.discard(str(marker))
            if written:
                self._known.setdefault(path, MARKER)
            else:
                _unlink(marker)

    def forget(self, path: Path) -> None:
        """`path` is confirmed or gone: its entry goes (a list with the last of its receipts)."""
        with self._lock:
            entry = self._known.pop(path, None)
            if entry:  # a list
                held = self._live.get(entry, 0) - 1
                if held > 0:
                    self._live[entry] = held
                elif entry in self._busy:
                    self._live.pop(entry, None)
                else:
                    self._drop_list(entry)
                return
            marker = self._marker(path)  # its own marker, or an older data dir's
            if str(marker) not in self._busy:
                _unlink(marker)

    def known(self) -> list[Path]:
        """The receipts known pending, oldest first (by file name)."""
        with self._lock:
            paths = list(self._known)
        return sorted(paths, key=lambda p: p.name)

    # ---- reading at a start

    def load(self, read: Read, scan: Callable[[], list[Path]]) -> dict[Path, Receipt]:
        """Once per store: the index read into `known` (every receipt of `scan()` read
        and indexed when there is no complete index); returns the pending receipts it read."""
        with self._loading:
            if self._loaded:
                return {}
            if (self.folder / self.COMPLETE).exists():
                seen = self._read_index(read)
            else:
                seen = self._build(read, scan)
            self._loaded = True
            return seen

    def _build(self, read: Read, scan: Callable[[], list[Path]]) -> dict[Path, Receipt]:
        found: dict[Path, Receipt] = {}
        for path in scan():
            path, receipt = read(path)
            if isinstance(receipt, Receipt) and receipt.status == "pending":
                found[path] = receipt
        created: list[Path] = []
        ensure_dir(self.folder, parents_to_sync=created)
        self._made = True
        listing = self.open_list(list(found), created)
        try:
            sync_barrier(files=[listing] if listing else [], folders=[*created, self.folder])
            atomic_write_bytes(self.folder / self.COMPLETE, b"")
        finally:
            if listing:
                self.close_list(listing, list(found))
        return found

    def _entries(self) -> tuple[list[str], list[Path]]:
        """The lists' names, and the receipts an older format's markers name."""
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return [], []
        self._made = True
        lists: list[str] = []
        marked: list[Path] = []
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.name.endswith(self.SUFFIX) and e.is_file():
                lists.append(e.name)
            elif e.is_dir():
                marked += [self.root / e.name / f"{m.name}.json" for m in os.scandir(e.path) if not is_temp_name(m.name)]
        return lists, marked

    def _read_list(self, name: str) -> list[Path]:
        """The receipts a list names; a line cut short (a crash mid-write) or garbled is skipped."""
        try:
            data = (self.folder / name).read_bytes()
        except FileNotFoundError:
            return []
        out: list[Path] = []
        for line in data.split(b"\n")[:-1]:  # the last piece is what follows the last newline
            try:
                text = line.decode()
            except UnicodeDecodeError:
                continue
            if _LINE.fullmatch(text):
                out.append(self.root / text)
        return list(dict.fromkeys(out))

    def _read_index(self, read: Read) -> dict[Path, Receipt]:
        seen: dict[Path, Receipt] = {}

        def still(path: Path) -> bool:
            """Pending, or unreadable (status unknown: kept); not confirmed, not gone."""
            if path in seen:
                return True
            path, receipt = read(path)
            if isinstance(receipt, Receipt):
                if receipt.status == "pending":
                    seen[path] = receipt
                    return True
                return False
            return path.exists()

        names, markers = self._entries()
        lists = {name: self._read_list(name) for name in names}
        kept = {name: [p for p in paths if still(p)] for name, paths in lists.items()}
        marked = [p for p in markers if still(p)]
        shrink = self._settle(kept, {name: len(paths) for name, paths in lists.items()}, marked, markers)
        if shrink:
            self._rewrite(shrink)
        return seen

    def _settle(
        self, kept: dict[str, list[Path]], sizes: dict[str, int], marked: list[Path], markers: list[Path],
    ) -> dict[str, list[Path]]:
        """What the index read becomes known; lists and markers naming nothing pending go.
        Returns the lists to write again smaller (fewer than half of theirs pending)."""
        shrink: dict[str, list[Path]] = {}
        with self._lock:
            for path in marked:
                self._known.setdefault(path, MARKER)
            for path in set(markers).difference(marked):
                if str(self._marker(path)) not in self._busy:
                    _unlink(self._marker(path))
            for name, paths in kept.items():
                held = self._hold(name, paths)
                if name in self._busy:
                    self._live[name] = held
                elif not held:
                    self._drop_list(name)
                else:
                    self._live[name] = held
                    if 2 * held < sizes[name]:
                        shrink[name] = [p for p in paths if self._known.get(p) == name]
        return shrink

    def _rewrite(self, shrink: dict[str, list[Path]]) -> None:
        """Each list of `shrink` written again naming only its pending receipts: the new
        one durable before the old one goes (a failure leaves the old one)."""
        created: list[Path] = []
        new: dict[str, Path] = {}
        try:
            for name, paths in shrink.items():
                if listing := self.open_list(paths, created):
                    new[name] = listing
            sync_barrier(files=list(new.values()), folders=[*created, self.folder])
        except OSError:
            for listing in new.values():
                self.close_list(listing, [])
            return
        with self._lock:
            for name, listing in new.items():
                moved = [p for p in shrink[name] if self._known.get(p) == name]
                for path in moved:
                    self._known[path] = listing.name
                self._live[listing.name] = self._live.get(listing.name, 0) + len(moved)
                self._live[name] = self._live.get(name, 0) - len(moved)
                if self._live[name] <= 0 and name not in self._busy:
                    self._drop_list(name)
        for listing in new.values():
            self.close_list(listing, [])


__all__ = ["MARKER", "PendingIndex"]
