"""A namespace's latest batch: the newest JSON file of its batch folder (VaultMesh `out/batches`).

Rules:

- Candidates are regular files named `*.json` that are not hidden (`.name`), so temp
  files of writers (`.x.json.1234.tmp`, `x.json.tmp`, `.x.json`) are never read.
  Symbolic links are skipped, and a file is opened with O_NOFOLLOW, unless the folder's
  limits say `follow_symlinks` (a link could point at any file the daemon can read).
- Newest by file name in natural order: runs of digits compare as numbers, so
  `2026-01-01T00-00-00Z.json` < `2026-01-02T...` and `99.json` < `100.json`
  (zero-padded names sort the same either way). The file's mtime does not matter.
- A file larger than its folder's `max_bytes` (default 1 MiB, `scheduler.max_batch_bytes`)
  is refused from its fstat, before any byte is read.
- The file is a JSON object with `id` (a non-empty string of at most MAX_ID_CHARS
  characters; an integer is accepted and turned into its decimal string) and `root`;
  extra fields are ignored.
- `root` is `sha256:<64 hex>`. Upper-case hex (and an upper-case `SHA256:` prefix) is
  normalised to lower case; 64 bare hex digits without the prefix are accepted and get
  the prefix (some VaultMesh tools write bare hex). Anything else is an error.
- Every problem raises `SourceError` (a `core.errors.ValidationError`, so the engine
  treats it as a validation failure of that job alone) naming the file or folder. A
  message never repeats the offending value (it may be huge, or hold what a link pointed
  at): it says what is wrong with it.

`latest_batch` is called for every due job, for thousands of namespaces per pass: it
keeps a per-folder cache keyed by (folder mtime_ns, newest file name, its mtime_ns and
size). An unchanged folder costs one stat of the folder and one of the newest file, no
listing, no read. Adding, removing or renaming a file changes the folder's mtime and
forces a listing. As git does for its index, a folder or file whose mtime is within
`_RACY_NS` of the time it was checked is not trusted (file-system timestamps are coarse,
a change in the same tick would be invisible) and is looked at again the next time.
A bad file's error is cached as its message and raised as a new exception each time: a
cached exception object re-raised keeps every traceback it was raised with.

The cache is keyed by the folder actually read (a namespace falling back to the shared
folder shares its entry) and also checks the folder's device and inode (a folder replaced
by another is listed again). A listing is one `os.scandir` pass; the natural-order key of
each name is kept from the folder's previous listing, so listing again a folder of 10,000
files after one was added computes the key of the new name only.

Reading off the event loop: `prefetch(folders)`, run on a worker thread, reads each folder
ONCE however many times it is named (namespaces sharing a folder: the VaultMesh
`out/batches/`) and hands the result (batch or error) to the `latest_batch` calls that
follow for that folder, within `_HANDOFF_S`, which then cost no I/O at all: one call per
time the folder was named, on any thread; and, until the next prefetch, every call made
on a thread running an event loop (the engine's pass), however many, so the loop never
lists a folder the pass's prefetch has read. A call without a prefetch, or past its
hand-off, reads as before. The folders go to the reader threads READ_CHUNK at a time
(core/readers.py: a thread stuck on a dead folder gives the rest of its chunk back): per
folder, the pool's hand-over, locks and GIL switches cost as much as the read itself. The engine prefetches the folders of the jobs due before each
pass.

Limits per folder come from the configuration through `configure(...)`; a folder not
configured gets `BatchLimits()`. A folder's `fallbacks` are read while it is not a
folder (the VaultMesh layout: a namespace's own `out/batches/<namespace>/`, else the
shared `out/batches/`), decided at each read.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TypeVar

from core import batchread, safejson
from core.errors import ValidationError
from core.fsutil import atomic_write_json, is_temp_name
from core.readers import Patience, Read, Readers

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_DIGITS = re.compile(r"(\d+)")
_RACY_NS = 2_000_000_000
_HANDOFF_S = 5.0  # a prefetched result older than this is checked again before use
_INTERN_ID_CHARS = 64  # batch ids and file names this long at most are held once however many folders have them
_KEEP_KEYS_FROM = 64  # a folder's listing keeps its names' sort keys from this many names
_READ_AT_LEAST = 4096  # bytes a read of a batch file asks for at least
READ_CHUNK = 64  # folders a reader thread takes at once (core/readers.py `submit_many`)

DEFAULT_MAX_BATCH_BYTES = 1024 * 1024
MAX_ID_CHARS = 256

T = TypeVar("T")
READERS = Readers(name="vmsh-batch-read")  # every folder read of `prefetch`


class SourceError(ValidationError):
    """A batch folder or file that does not give a usable {id, root}; the message names it."""


class Batch:
    """A batch read: its `id`, `root` ("sha256:<64 lowercase hex>") and the file's `path`.

    Immutable. One is kept per folder read (the cache) for as long as the daemon runs, so
    it holds the file's folder and name as the texts the cache holds anyway (a `Path`
    object costs ~470 bytes, its text ~120), and `path` makes the `Path` when asked."""

    __slots__ = ("id", "root", "_folder", "_name")

    id: str
    root: str
    _folder: str
    _name: str

    def __init__(self, id: str, root: str, path: str | os.PathLike[str]) -> None:
        folder, name = os.path.split(os.fspath(path))
        self._set(id, root, folder, name)

    @classmethod
    def _in(cls, id: str, root: str, folder: str, name: str) -> Batch:
        """The batch of file `name` of `folder` (texts the caller keeps: shared, not copied)."""
        batch = object.__new__(cls)
        batch._set(id, root, folder, name)
        return batch

    def _set(self, id: str, root: str, folder: str, name: str) -> None:
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "_folder", folder)
        object.__setattr__(self, "_name", name)

    @property
    def path(self) -> Path:
        return Path(self._folder, self._name)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Batch is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Batch):
            return NotImplemented
        return (self.id, self.root, self._folder, self._name) == (other.id, other.root, other._folder, other._name)

    def __hash__(self) -> int:
        return hash((self.id, self.root, self._folder, self._name))

    def __repr__(self) -> str:
        return f"Batch(id={self.id!r}, root={self.root!r}, path={os.path.join(self._folder, self._name)!r})"


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """How a batch folder may be read: `scheduler.max_batch_bytes`, `follow_symlinks`."""

    max_bytes: int = DEFAULT_MAX_BATCH_BYTES
    follow_symlinks: bool = False
    # Folders read instead while this one is not a folder, the first that is: a namespace
    # without `source` falls back to the shared batch folder (see `source_folder`).
    fallbacks: tuple[Path, ...] = ()


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key comparing digit runs as numbers: str, int, str, int, ... (types line up)."""
    parts = _DIGITS.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def normalise_root(value: object) -> str | None:
    """Normalise "sha256:<64 hex>" or bare 64 hex (any case) -> "sha256:<64 lowercase hex>"; else None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text[:7].lower() == "sha256:":
        text = text[7:]
    if not _HEX64.fullmatch(text):
        return None
    return "sha256:" + text.lower()


def _describe(value: object) -> str:
    """What a JSON value is, without repeating it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"a {len(value)}-character string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def parse_batch(path: Path, data: bytes) -> Batch:
    """The batch a file's bytes give; SourceError naming `path` if they give none."""
    return Batch(*_batch_fields(path, data), path)


def _batch_fields(path: str | os.PathLike[str], data: bytes) -> tuple[str, str]:
    """(id, root) of a batch file's bytes (see parse_batch)."""
    try:
        doc = safejson.loads(data)
    except safejson.JsonTooDeep:
        raise SourceError(
            f"batch file {path}: JSON nested too deeply (over {safejson.MAX_DEPTH} levels)"
        ) from None
    except UnicodeDecodeError as exc:
        raise SourceError(f"batch file {path}: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise SourceError(
            f"batch file {path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}"
        ) from None
    except RecursionError:
        raise SourceError(f"batch file {path}: JSON nested too deeply") from None
    except ValueError:  # an integer of more digits than Python converts (sys.int_info)
        raise SourceError(f"batch file {path}: not usable JSON: a number is too long") from None
    if not isinstance(doc, dict):
        raise SourceError(f"batch file {path}: expected a JSON object, got {_describe(doc)}")
    if "id" not in doc:
        raise SourceError(f'batch file {path}: missing "id"')
    if "root" not in doc:
        raise SourceError(f'batch file {path}: missing "root"')
    batch_id = doc["id"]
    if isinstance(batch_id, int) and not isinstance(batch_id, bool):
        try:
            batch_id = str(batch_id)
        except ValueError:
            raise SourceError(f'batch file {path}: "id" is a number too long to use') from None
    if not isinstance(batch_id, str) or not batch_id.strip():
        raise SourceError(f'batch file {path}: "id" must be a non-empty string, got {_describe(doc["id"])}')
    if len(batch_id) > MAX_ID_CHARS:
        raise SourceError(
            f'batch file {path}: "id" is {len(batch_id)} characters long, more than {MAX_ID_CHARS}'
        )
    root = normalise_root(doc["root"])
    if root is None:
        raise SourceError(
            f'batch file {path}: "root" is not sha256:<64 hex> (got {_describe(doc["root"])})'
        )
    if len(batch_id) <= _INTERN_ID_CHARS:  # many folders hold the same id ("000001"): kept once
        batch_id = sys.intern(batch_id)
    return batch_id, root


@dataclass(slots=True)
class _Entry:
    folder_dev: int
    folder_ino: int
    folder_mtime_ns: int
    folder_trusted: bool  # the folder's mtime was old enough when listed
    name: str
    file_mtime_ns: int
    file_size: int
    file_trusted: bool
    batch: Batch | None
    error: str | None  # the message only: see the module docstring


@dataclass(slots=True)
class _Handoff:
    """A prefetch's result for the calls that follow it (see the module docstring)."""

    until: float  # monotonic
    tickets: int  # calls it still serves off an event loop
    generation: int  # the prefetch call that made it: the latest serves the loop
    batch: Batch | None
    error: str | None


_cache: dict[str, _Entry] = {}
_handoffs: dict[str, _Handoff] = {}  # by the folder read, as _cache
_name_keys: dict[str, dict[str, tuple[object, ...]]] = {}  # folder -> its last listing's keys
_resolved: dict[str, str] = {}  # folder named -> the folder its last prefetch read
_generation = 0  # prefetch calls so far
_lock = threading.Lock()
_limits: dict[str, BatchLimits] = {}
_default_limits = BatchLimits()


def clear_cache() -> None:
    with _lock:
        _cache.clear()
        _handoffs.clear()
        _name_keys.clear()
        _resolved.clear()


class KeyedLimits(dict[str, BatchLimits]):
    """Batch folders' limits as `configure` keeps them: by each folder's text (`folder_key`), as
    `Config.batch_limits` gives them and `keyed_limits` makes them of Paths."""


def keyed_limits(limits: Mapping[Path, BatchLimits]) -> KeyedLimits:
    """Limits keyed by Path, keyed as `configure` keeps them: by each folder's own text,
    equal ones held once. The configuration's come keyed so already (`Config.batch_limits`,
    made on a reload's worker thread); this is for a mapping of Paths given to `configure`."""
    shared: dict[BatchLimits, BatchLimits] = {}
    return KeyedLimits({folder_key(folder): shared.setdefault(lim, lim) for folder, lim in limits.items()})


def configure(limits: Mapping[Path, BatchLimits] | KeyedLimits, default: BatchLimits | None = None) -> None:
    """Set the limits of each batch folder (from the configuration); the cache starts afresh."""
    global _default_limits
    keyed = limits if isinstance(limits, KeyedLimits) else keyed_limits(limits)
    with _lock:
        _limits.clear()
        _limits.update(keyed)
        _default_limits = default or BatchLimits()
        _cache.clear()
        _handoffs.clear()
        _name_keys.clear()
        _resolved.clear()


def folder_key(folder: str | os.PathLike[str]) -> str:
    """A folder's text as the caches know it: a Path's own (normalized) text, a str
    normalized as Path does."""
    return str(folder) if isinstance(folder, PurePath) else str(Path(folder))


def limits_for(folder: str | os.PathLike[str]) -> BatchLimits:
    return _limits.get(folder_key(folder), _default_limits)


def source_folder(
    folder: str | os.PathLike[str], fallbacks: Iterable[Path] | None = None
) -> Path | None:
    """The folder `folder`'s batches are read from now: itself when it is a folder, else
    the first of its fallbacks (default: its configured ones) that is; None when none is.
    Decided at each read, so a folder created later is used from the next read on."""
    if fallbacks is None:
        fallbacks = limits_for(folder).fallbacks
    for candidate in (Path(folder), *fallbacks):
        if os.path.isdir(candidate):
            return candidate
    return None


def has_batch_files(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` holds a candidate batch file (`*.json`, not hidden or temp)."""
    try:
        with os.scandir(folder) as it:
            return any(e.name.endswith(".json") and not is_temp_name(e.name) for e in it)
    except OSError:
        return False


def _newest_name(folder: str, limits: BatchLimits) -> str:
    """The newest candidate's name. A folder of one candidate (the common case: one batch
    file a namespace) computes no sort key at all; keys are made from the second on."""
    with _lock:
        known = _name_keys.get(folder, {})
    try:
        best, keys, links = _scan_names(folder, limits, known)
    except FileNotFoundError:
        raise SourceError(f"batch folder {folder} does not exist") from None
    except NotADirectoryError:
        raise SourceError(f"batch folder {folder} is not a folder") from None
    except OSError as exc:
        raise SourceError(f"batch folder {folder}: cannot list: {exc.strerror or exc}") from None
    if keys or known:
        with _lock:
            if len(keys) >= _KEEP_KEYS_FROM:
                _name_keys[folder] = keys
            else:  # a small folder's keys cost less to compute again than to keep
                _name_keys.pop(folder, None)
    if best is None:
        skipped = ""
        if links:
            skipped = (
                f"; {links} symbolic link(s) skipped (set follow_symlinks: true on the namespace "
                "or in scheduler: to read them)"
            )
        raise SourceError(f"batch folder {folder} has no batch files (*.json){skipped}")
    return _interned(best)


def _interned(name: str) -> str:
    """A file name held once however many folders have it ("000001.json")."""
    return sys.intern(name) if len(name) <= _INTERN_ID_CHARS else name


def _scan_names(
    folder: str, limits: BatchLimits, known: dict[str, tuple[object, ...]]
) -> tuple[str | None, dict[str, tuple[object, ...]], int]:
    """One listing: the newest candidate, the candidates' sort keys (none for one
    candidate), the symbolic links skipped."""
    best: str | None = None
    best_key: tuple[object, ...] = ()
    links = 0
    keys: dict[str, tuple[object, ...]] = {}
    with os.scandir(folder) as it:
        for e in it:
            name = e.name
            if not name.endswith(".json") or is_temp_name(name):
                continue
            try:
                if not limits.follow_symlinks and e.is_symlink():
                    links += 1
                    continue
                if not e.is_file():
                    continue
            except OSError:
                continue
            if best is None:
                best = name
                continue
            if not keys:  # a second candidate: the first one's key is needed now
                best_key = keys[best] = known.get(best) or natural_key(best)
            key = known.get(name)
            if key is None:
                key = natural_key(name)
            keys[name] = key
            if key > best_key:
                best, best_key = name, key
    return best, keys, links


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _read_capped(path: str, limits: BatchLimits) -> tuple[bytes, os.stat_result]:
    """The file's bytes and fstat; refuses a link (unless allowed), a non-file or a file too large."""
    follow = limits.follow_symlinks
    try:
        fd = os.open(path, _OPEN_FLAGS if follow else _OPEN_FLAGS | _NOFOLLOW)
    except OSError:
        if not follow and os.path.islink(path):
            raise SourceError(
                f"batch file {path} is a symbolic link; not followed (set follow_symlinks: true "
                "on the namespace or in scheduler: to allow it)"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"batch file {path} is not a regular file")
        cap = limits.max_bytes
        size = st.st_size
        if size > cap:
            raise SourceError(_too_large(path, size, limits))
        # Asked for what the fstat announced and a little more, not for the whole cap: a
        # 1 MiB buffer for a 100-byte file is an mmap, a page fault and an munmap.
        want = min(max(size + 1, _READ_AT_LEAST), cap + 1)
        data = os.read(fd, want)
        if len(data) < want and len(data) == size:
            # A short read of a regular file is its end: the whole file the fstat saw, with
            # no second read to find the end (a file that grows later changes the size the
            # cache keeps with it, so it is read again then).
            return data, st
        chunks = [data]
        got = len(data)
        while data and got <= cap:  # it may grow after the fstat: never read past the cap
            data = os.read(fd, min(max(size + 1 - got, _READ_AT_LEAST), cap + 1 - got))
            chunks.append(data)
            got += len(data)
        if got > cap:
            raise SourceError(_too_large(path, got, limits, grew=True))
        return b"".join(chunks), st
    finally:
        os.close(fd)


def _too_large(path: str, size: int, limits: BatchLimits, grew: bool = False) -> str:
    what = "grew past" if grew else f"is {size} bytes, more than"
    return (
        f"batch file {path} {what} the limit of {limits.max_bytes} bytes "
        "(scheduler.max_batch_bytes); not read"
    )


def _result(entry: _Entry) -> Batch:
    if entry.error is not None:
        raise SourceError(entry.error)
    assert entry.batch is not None
    return entry.batch


def latest_batch(folder: str | os.PathLike[str]) -> Batch:
    """The newest batch of `folder`; SourceError naming the folder or file on any problem."""
    return _latest_or_fallback(folder if isinstance(folder, Path) else Path(folder))


def prefetch(
    folders: Iterable[str | os.PathLike[str]], wait: float | Patience | None = None
) -> dict[str, float]:
    """Read the latest batch of the folders now, for the `latest_batch` calls that follow.
    Name a folder once per call to come (once per due job): a folder named many times, or
    read for many namespaces, is read once. Called with none, it ends the hand-off to the
    loop of the previous call's results (the engine's next pass).

    The reads run on `READERS`' daemon threads; this waits for them `wait` seconds at most
    (None: until they end; a `Patience`: while they make progress, core/readers.py) and returns the folders named whose read has not ended, each
    with how long that read has run: a folder that does not answer (a dead mount) holds
    neither the caller nor the other folders, and its read is not started again while it
    hangs. Their calls get no hand-off: the caller leaves them for later."""
    global _generation
    with _lock:
        _generation += 1
        generation = _generation
    named: dict[str, int] = {}
    for name in folders:
        key = folder_key(name)
        named[key] = named.get(key, 0) + 1
    patient = wait if isinstance(wait, Patience) else None
    deadline = time.monotonic() + wait if isinstance(wait, int | float) else None
    # A folder with fallbacks is first resolved (is it a folder? that is I/O too).
    resolving = _submit_all(
        (name, f"resolve:{name}", functools.partial(source_folder, name))
        for name in named
        if _limits.get(name, _default_limits).fallbacks
    )
    READERS.wait(_new(resolving), patient or _left(deadline))
    waiting: dict[str, Read[object]] = {}
    read_from: dict[str, str] = {}
    for name in named:
        resolution = resolving.get(name)
        if resolution is None:
            read_from[name] = name
        elif not resolution[0].done.is_set():
            waiting[name] = resolution[0]  # type: ignore[assignment]
        elif isinstance(resolution[0].value, Path):
            read_from[name] = str(resolution[0].value)
        # else: no folder at all; the call raises without reading anything
    wanted: dict[str, int] = {}
    for name, folder in read_from.items():
        wanted[folder] = wanted.get(folder, 0) + named[name]
    reads = _submit_all((folder, f"read:{folder}", functools.partial(_read_result, folder)) for folder in wanted)
    READERS.wait(_new(reads), patient or _left(deadline))
    now = time.monotonic()
    until = now + _HANDOFF_S
    with _lock:
        _drop_expired_handoffs(now)
        for folder, (read, _) in reads.items():
            if read.done.is_set() and read.value is not None:
                batch, error = read.value
                _handoffs.pop(folder, None)  # kept in the order they expire
                _handoffs[folder] = _Handoff(until, wanted[folder], generation, batch, error)
        for name, folder in read_from.items():
            if name in resolving:  # only a folder with fallbacks is looked up there
                _resolved[name] = folder
            if not reads[folder][0].done.is_set():
                waiting[name] = reads[folder][0]  # type: ignore[assignment]
    now = time.monotonic()
    return {name: read.running_for(now) for name, read in waiting.items()}


def _drop_expired_handoffs(now: float) -> None:
    """Forget the hand-offs past their time (under `_lock`): `_handoffs` is in the order
    they expire, so this looks at the expired ones and the first live one only; an idle
    daemon keeps none of a pass's results but its cache."""
    expired = []
    for folder, handoff in _handoffs.items():
        if handoff.until > now:
            break
        expired.append(folder)
    for folder in expired:
        del _handoffs[folder]


def _submit_all(jobs: Iterable[tuple[str, str, Callable[[], T]]]) -> dict[str, tuple[Read[T], bool]]:
    """For each (name, read key, fn): the read of that key (see core.readers) and whether
    this call started it, by name; one hand-over to the readers for them all."""
    jobs = list(jobs)
    reads = READERS.submit_many(((key, fn) for _, key, fn in jobs), chunk=READ_CHUNK)
    return {name: reads[key] for name, key, _ in jobs}


def _new(reads: Mapping[str, tuple[Read[T], bool]]) -> list[Read[T]]:
    """The reads this call started: one still hanging from an earlier call is not waited for
    again (a dead mount would hold every pass for the whole wait)."""
    return [read for read, started in reads.values() if started]


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _read_result(folder: str) -> tuple[Batch | None, str | None]:
    try:
        return _latest(folder, use_handoff=False), None
    except SourceError as exc:
        return None, str(exc)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _handed_off(key: str) -> _Handoff | None:
    """The prefetched result a call reading `key` now takes, if any (see the docstring)."""
    with _lock:
        handoff = _handoffs.get(key)
        if handoff is None:
            return None
        if time.monotonic() >= handoff.until:
            del _handoffs[key]
            return None
        if handoff.tickets > 0:
            handoff.tickets -= 1
            return handoff
        current = handoff.generation == _generation
    return handoff if current and _on_event_loop() else None


def _latest_or_fallback(folder: Path) -> Batch:
    key = str(folder)  # folder_key of a Path (a pass's due jobs: the key made once)
    fallbacks = _limits.get(key, _default_limits).fallbacks
    if not fallbacks:
        return _latest(key)
    with _lock:  # resolved by the last prefetch: no I/O while its hand-off lasts
        resolved = _resolved.get(key)
        if resolved is not None and resolved not in _handoffs:
            resolved = None
    chosen = Path(resolved) if resolved is not None else source_folder(folder, fallbacks)
    if chosen is None:  # the last fallback is the main one (the shared folder)
        raise SourceError(f"batch folder {folder} does not exist, nor {fallbacks[-1]}")
    if chosen == folder:
        return _latest(key)
    try:
        return _latest(str(chosen))
    except SourceError as exc:
        raise SourceError(f"{exc} (read because there is no folder {folder})") from None


def _latest(folder: str, *, use_handoff: bool = True) -> Batch:
    """`folder`: its text as `folder_key` makes it (the cache's key). A folder not in the
    cache is listed and its newest file read at once (the file's fstat is its entry's);
    one in the cache costs a stat of the folder and of the file while neither changed."""
    handoff = _handed_off(folder) if use_handoff else None
    if handoff is not None:
        if handoff.error is not None:
            raise SourceError(handoff.error)
        assert handoff.batch is not None
        return handoff.batch
    limits = _limits.get(folder, _default_limits)
    now = time.time_ns()
    with _lock:
        entry = _cache.get(folder)
    fst: os.stat_result | None = None
    if entry is not None:
        fst = _folder_stat(folder)
        if not (
            entry.folder_trusted
            and entry.folder_mtime_ns == fst.st_mtime_ns
            and entry.folder_ino == fst.st_ino
            and entry.folder_dev == fst.st_dev
        ):
            entry = None  # the folder changed (or was too fresh to trust): list it again
    if entry is None:  # listed and read by one call (core/batchread.py), if it can be
        listed = batchread.newest(folder, limits.max_bytes, limits.follow_symlinks)
        if listed is not None:
            return _read_listed(folder, listed, now)
    fst = fst if fst is not None else _folder_stat(folder)  # the Python way's own
    name = entry.name if entry is not None else _newest_name(folder, limits)
    if entry is not None:
        path = os.path.join(folder, name)
        try:
            st = os.stat(path, follow_symlinks=limits.follow_symlinks)
        except FileNotFoundError:
            with _lock:
                _cache.pop(folder, None)
            return _latest(folder, use_handoff=False)  # removed since we listed: list again
        except OSError as exc:
            raise SourceError(f"batch file {path}: cannot read: {exc.strerror or exc}") from None
        if entry.file_trusted and entry.file_mtime_ns == st.st_mtime_ns and entry.file_size == st.st_size:
            return _result(entry)
    return _read_entry(folder, name, limits, fst, now, None if entry is None else st)


def _folder_stat(folder: str) -> os.stat_result:
    try:
        return os.stat(folder)
    except FileNotFoundError:
        raise SourceError(f"batch folder {folder} does not exist") from None
    except OSError as exc:
        raise SourceError(f"batch folder {folder}: {exc.strerror or exc}") from None


def _read_entry(
    folder: str, name: str, limits: BatchLimits, fst: os.stat_result, now: int, st: os.stat_result | None
) -> Batch:
    """Read file `name` of `folder` into the cache (`fst`: the folder's stat before it was
    listed; `st`: the file's, if it was taken)."""
    path = os.path.join(folder, name)
    batch: Batch | None = None
    error: str | None = None
    try:
        data, st = _read_capped(path, limits)
    except SourceError as exc:
        error = str(exc)
        if st is None:  # the entry keeps the error while the file is unchanged: its stat
            try:
                st = os.stat(path, follow_symlinks=limits.follow_symlinks)
            except OSError:
                raise exc from None
    except FileNotFoundError:
        with _lock:
            _cache.pop(folder, None)
        raise SourceError(f"batch file {path} disappeared while reading it") from None
    except OSError as exc:
        # Not cached: a permission fix changes no mtime, so look again next time.
        with _lock:
            _cache.pop(folder, None)
        raise SourceError(f"batch file {path}: cannot read: {exc.strerror or exc}") from None
    else:
        batch, error = _parsed(folder, name, data)
    return _remember(
        folder, (fst.st_dev, fst.st_ino, fst.st_mtime_ns), name, (st.st_mtime_ns, st.st_size), batch, error, now
    )


def _read_listed(folder: str, listed: batchread.Listed, now: int) -> Batch:
    """The cache's entry of a folder core/batchread.py listed and read: as `_read_entry`'s."""
    name = _interned(listed.name)
    batch, error = _parsed(folder, name, listed.data)
    return _remember(
        folder, (listed.folder_dev, listed.folder_ino, listed.folder_mtime_ns), name,
        (listed.file_mtime_ns, listed.file_size), batch, error, now,
    )


def _parsed(folder: str, name: str, data: bytes) -> tuple[Batch | None, str | None]:
    """The batch file `name` of `folder` gives, or the message of why it gives none."""
    try:
        return Batch._in(*_batch_fields(os.path.join(folder, name), data), folder, name), None
    except SourceError as exc:
        return None, str(exc)


def _remember(
    folder: str, folder_stat: tuple[int, int, int], name: str, file_stat: tuple[int, int],
    batch: Batch | None, error: str | None, now: int,
) -> Batch:
    """Keep what a read of `folder` found (folder_stat: dev, ino, mtime_ns as listed;
    file_stat: mtime_ns, size); its batch, or SourceError with its problem."""
    (dev, ino, folder_mtime), (file_mtime, size) = folder_stat, file_stat
    new = _Entry(
        folder_dev=dev,
        folder_ino=ino,
        folder_mtime_ns=folder_mtime,
        folder_trusted=now - folder_mtime > _RACY_NS,
        name=name,
        file_mtime_ns=file_mtime,
        file_size=size,
        file_trusted=now - file_mtime > _RACY_NS,
        batch=batch,
        error=error,
    )
    with _lock:
        _cache[folder] = new
    return _result(new)


def write_batch(
    folder: str | os.PathLike[str], batch_id: str, root: str, name: str | None = None
) -> Path:
    """Write a batch file atomically (demo seeder, tests); the name defaults to `<batch_id>.json`."""
    normalised = normalise_root(root)
    if normalised is None:
        raise ValueError(f"{root!r} is not sha256:<64 hex>")
    path = Path(folder) / (name or f"{batch_id}.json")
    atomic_write_json(path, {"id": batch_id, "root": normalised})
    return path
