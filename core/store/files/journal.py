"""The file store's intent journal: one JSON file per backend call in progress.

- `<data_dir>/journal/<intent id>.json`: an intent (core.store.protocols.Intent's document),
  rewritten atomically and durably at each note and at the attestation.
- `<data_dir>/journal/quarantine/<intent id>.json`: intents recovery could not resolve,
  kept for an operator with a `<intent id>.reason` beside them (`IntentJournal.quarantine`).

Folders are created 0750 and files 0640 whatever the umask (core.fsutil); temp files a
kill -9 left are removed at start (`remove_stale_temps`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pydantic_core

from core.fsutil import (
    atomic_write_bytes,
    atomic_write_json,
    ensure_dir,
    fsync_dir,
    is_temp_name,
    remove_stale_temps,
)
from core.store.files.jsonio import load_json
from core.store.protocols import Intent, StateError


class FileIntent(Intent):
    """An intent as the file `<journal>/<id>.json` (its `path`)."""

    def persist(self) -> None:
        if self.closed:
            raise StateError(f"{self.path}: intent {self.id} is already closed")
        # Compact JSON by pydantic_core's encoder, as the state file's (10,000 entries: 5 ms,
        # json.dumps 17 ms; floats round-trip the same, the file is read by json.loads).
        atomic_write_bytes(self.path, pydantic_core.to_json(self.to_dict()) + b"\n")

    def close(self, *, sync_folder: bool = True) -> bool:
        """Remove the file (True when there was one). `sync_folder=False`: the caller fsyncs
        the journal."""
        self.closed = True
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        if sync_folder:
            fsync_dir(self.path.parent)
        return True


class IntentJournal:
    """Intents of backend calls in progress, one JSON file each under `<data_dir>/journal/`.

    A corrupt journal file (only disk damage or a hand edit can make one: writes are
    atomic) is moved aside to `<name>.corrupt`, never deleted, and reported by `scan()` /
    `pending()` as a warning naming both files. Its jobs are then simply due again: at
    worst they are anchored twice, which is cheaper than refusing to start.
    """

    SUFFIX = ".json"
    QUARANTINE = "quarantine"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.warnings: list[str] = []

    @property
    def quarantine_folder(self) -> Path:
        return self.folder / self.QUARANTINE

    def quarantine(self, intent: Intent, reason: str) -> Path:
        """Move an intent recovery could not resolve to `quarantine/`, with its reason.

        Kept for an operator (it may hold an attestation that was paid for); recovery
        goes on with the other intents. Returns the new path. Raises OSError.
        """
        folder = self.quarantine_folder
        ensure_dir(folder)
        atomic_write_bytes(folder / f"{intent.id}.reason", reason.encode() + b"\n", sync_folder=False)
        aside = folder / intent.path.name
        if intent.attestation is not None and not intent.closed:
            # The attestation may exist only in memory (its write failed): keep it.
            atomic_write_json(aside, intent.to_dict())
            try:
                os.unlink(intent.path)
            except FileNotFoundError:
                pass
        else:
            os.replace(intent.path, aside)
            fsync_dir(folder)
        fsync_dir(self.folder)
        intent.closed = True
        intent.path = aside
        return aside

    def close_many(self, intents: list[Intent]) -> list[tuple[Intent, OSError]]:
        """Close intents with one journal fsync (group commit); the ones that failed, and why."""
        failed: list[tuple[Intent, OSError]] = []
        removed = False
        for intent in intents:
            try:
                removed |= intent.close(sync_folder=False)
            except OSError as exc:
                intent.closed = False
                failed.append((intent, exc))
        if removed:
            fsync_dir(self.folder)
        return failed

    def remove_stale_temps(self) -> list[Path]:
        """Temp files a kill -9 left in the journal (call at start, under the lock)."""
        return remove_stale_temps(self.folder)

    def open(
        self,
        target: str,
        entries: list[dict[str, Any]],
        digest_hex: str,
        at: float,
        tree_size: int | None = None,
    ) -> Intent:
        """Write a new intent durably and return it; call before the backend call."""
        intent = FileIntent.new(target, entries, digest_hex, at, tree_size)
        intent.path = self.folder / f"{intent.id}{self.SUFFIX}"
        intent.persist()
        return intent

    def scan(self) -> tuple[list[Intent], list[str]]:
        """All intents left over (oldest first) and warnings for corrupt files moved aside."""
        intents: list[Intent] = []
        warnings: list[str] = []
        try:
            names = sorted(
                e.name
                for e in os.scandir(self.folder)
                if e.name.endswith(self.SUFFIX) and not is_temp_name(e.name) and e.is_file()
            )
        except FileNotFoundError:
            return [], []
        for name in names:
            path = self.folder / name
            try:
                intents.append(FileIntent.from_dict(load_json(path, "journal file"), path))
            except (StateError, ValueError) as exc:
                aside = path.with_name(name + ".corrupt")
                try:
                    os.replace(path, aside)
                    fsync_dir(self.folder)
                    where = f"moved aside to {aside}"
                except OSError as move_exc:
                    where = f"could not move it aside: {move_exc}"
                reason = str(exc).removeprefix(f"{path}: ")
                warnings.append(f"corrupt journal file {path} ({reason}); {where}")
        self.warnings = warnings
        return intents, warnings

    def orphans(self) -> tuple[list[Intent], list[str]]:
        """Intents another scheduler left: none, this journal is one scheduler's alone."""
        return [], []

    def pending(self) -> list[Intent]:
        """Intents left over at start, oldest first; warnings of this call in `self.warnings`."""
        return self.scan()[0]
