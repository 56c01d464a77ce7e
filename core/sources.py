"""A namespace's latest batch: the newest JSON file of its batch folder (VaultMesh `out/batches`).

Rules:

- Candidates are regular files named `*.json` that are not hidden (`.name`), so temp
  files of writers (`.x.json.1234.tmp`, `x.json.tmp`, `.x.json`) are never read.
- Newest by file name in natural order: runs of digits compare as numbers, so
  `2026-01-01T00-00-00Z.json` < `2026-01-02T...` and `99.json` < `100.json`
  (zero-padded names sort the same either way). The file's mtime does not matter.
- The file is a JSON object with `id` (a non-empty string; an integer is accepted and
  turned into its decimal string) and `root`; extra fields are ignored.
- `root` is `sha256:<64 hex>`. Upper-case hex (and an upper-case `SHA256:` prefix) is
  normalised to lower case; 64 bare hex digits without the prefix are accepted and get
  the prefix (some VaultMesh tools write bare hex). Anything else is an error.
- Every problem raises `SourceError` (a `core.errors.ValidationError`, so the engine
  treats it as a validation failure of that job alone) naming the file or folder.

`latest_batch` is called for every due job, for thousands of namespaces per pass: it
keeps a per-folder cache keyed by (folder mtime_ns, newest file name, its mtime_ns and
size). An unchanged folder costs one stat of the folder and one of the newest file, no
listing, no read. Adding, removing or renaming a file changes the folder's mtime and
forces a listing. As git does for its index, a folder or file whose mtime is within
`_RACY_NS` of the time it was checked is not trusted (file-system timestamps are coarse,
a change in the same tick would be invisible) and is looked at again the next time.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import ValidationError
from core.fsutil import atomic_write_json, is_temp_name

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_DIGITS = re.compile(r"(\d+)")
_RACY_NS = 2_000_000_000


class SourceError(ValidationError):
    """A batch folder or file that does not give a usable {id, root}; the message names it."""


@dataclass(frozen=True, slots=True)
class Batch:
    id: str
    root: str  # "sha256:<64 lowercase hex>"
    path: Path


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


def parse_batch(path: Path, data: bytes) -> Batch:
    try:
        doc = json.loads(data)
    except UnicodeDecodeError as exc:
        raise SourceError(f"batch file {path}: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise SourceError(
            f"batch file {path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}"
        ) from None
    if not isinstance(doc, dict):
        raise SourceError(f"batch file {path}: expected a JSON object, got {type(doc).__name__}")
    if "id" not in doc:
        raise SourceError(f'batch file {path}: missing "id"')
    if "root" not in doc:
        raise SourceError(f'batch file {path}: missing "root"')
    batch_id = doc["id"]
    if isinstance(batch_id, int) and not isinstance(batch_id, bool):
        batch_id = str(batch_id)
    if not isinstance(batch_id, str) or not batch_id.strip():
        raise SourceError(f'batch file {path}: "id" must be a non-empty string, got {doc["id"]!r}')
    root = normalise_root(doc["root"])
    if root is None:
        shown = repr(doc["root"])
        if len(shown) > 90:
            shown = shown[:87] + "..."
        raise SourceError(f'batch file {path}: "root" is not sha256:<64 hex>: {shown}')
    return Batch(id=batch_id, root=root, path=path)


@dataclass(slots=True)
class _Entry:
    folder_mtime_ns: int
    folder_trusted: bool  # the folder's mtime was old enough when listed
    name: str
    file_mtime_ns: int
    file_size: int
    file_trusted: bool
    batch: Batch | None
    error: SourceError | None


_cache: dict[str, _Entry] = {}
_lock = threading.Lock()


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def _newest_name(folder: Path) -> str:
    best: str | None = None
    best_key: tuple[object, ...] = ()
    try:
        with os.scandir(folder) as it:
            for e in it:
                name = e.name
                if not name.endswith(".json") or is_temp_name(name):
                    continue
                try:
                    if not e.is_file():
                        continue
                except OSError:
                    continue
                key = natural_key(name)
                if best is None or key > best_key:
                    best, best_key = name, key
    except FileNotFoundError:
        raise SourceError(f"batch folder {folder} does not exist") from None
    except NotADirectoryError:
        raise SourceError(f"batch folder {folder} is not a folder") from None
    except OSError as exc:
        raise SourceError(f"batch folder {folder}: cannot list: {exc.strerror or exc}") from None
    if best is None:
        raise SourceError(f"batch folder {folder} has no batch files (*.json)")
    return best


def latest_batch(folder: str | os.PathLike[str]) -> Batch:
    """The newest batch of `folder`; SourceError naming the folder or file on any problem."""
    folder = Path(folder)
    key = str(folder)
    now = time.time_ns()
    try:
        fst = os.stat(folder)
    except FileNotFoundError:
        raise SourceError(f"batch folder {folder} does not exist") from None
    except OSError as exc:
        raise SourceError(f"batch folder {folder}: {exc.strerror or exc}") from None
    with _lock:
        entry = _cache.get(key)
    if entry is not None and not (
        entry.folder_trusted and entry.folder_mtime_ns == fst.st_mtime_ns
    ):
        entry = None  # the folder changed (or was too fresh to trust): list it again
    name = entry.name if entry is not None else _newest_name(folder)
    path = folder / name
    try:
        st = os.stat(path)
    except FileNotFoundError:
        with _lock:
            _cache.pop(key, None)
        if entry is not None:  # removed since we listed: try once more from scratch
            return latest_batch(folder)
        raise SourceError(f"batch file {path} disappeared while reading it") from None
    except OSError as exc:
        raise SourceError(f"batch file {path}: cannot read: {exc.strerror or exc}") from None
    if (
        entry is not None
        and entry.file_trusted
        and entry.file_mtime_ns == st.st_mtime_ns
        and entry.file_size == st.st_size
    ):
        if entry.error is not None:
            raise entry.error
        assert entry.batch is not None
        return entry.batch
    batch: Batch | None = None
    error: SourceError | None = None
    try:
        data = path.read_bytes()
    except OSError as exc:
        # Not cached: a permission fix changes no mtime, so look again next time.
        with _lock:
            _cache.pop(key, None)
        raise SourceError(f"batch file {path}: cannot read: {exc.strerror or exc}") from None
    else:
        try:
            batch = parse_batch(path, data)
        except SourceError as exc:
            error = exc
    new = _Entry(
        folder_mtime_ns=fst.st_mtime_ns,
        folder_trusted=now - fst.st_mtime_ns > _RACY_NS,
        name=name,
        file_mtime_ns=st.st_mtime_ns,
        file_size=st.st_size,
        file_trusted=now - st.st_mtime_ns > _RACY_NS,
        batch=batch,
        error=error,
    )
    with _lock:
        _cache[key] = new
    if error is not None:
        raise error
    assert batch is not None
    return batch


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
