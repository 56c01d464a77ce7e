"""The file store's job state: `<data_dir>/state/scheduler.json` (or VMSH_STATE), and the
changes saved since it was written, `scheduler.json.changes` beside it.

- The snapshot: `{"version": 1, "changes": "<token>", "jobs": {"<namespace>/<cadence>":
  {JobState}}}`, written atomically (compact JSON, the jobs encoded a slice at a time:
  `jsonio.to_json_in_slices`); the token is new at each snapshot.
- The changes: one line a save, `{"of": "<token>", "gone": ["<ns>/<cadence>", ...], "jobs":
  {...}}` (the jobs no longer kept, the states that changed since the save before),
  appended and fsync'd before `save` returns. A save writes only what changed: the first
  save of a process, and any save after the changes grew past the snapshot's size (or
  changed half the jobs), writes the whole snapshot instead, then removes the changes file.
- `load` is the snapshot, then each line of its token, in order (a line of another token
  is from before it: a changes file whose removal a crash undid is never applied). A
  last line cut short (a crash during its append, or bytes the disk never wrote) is a save
  that never returned: it is ignored, and the intents it would have accounted for are
  still in the journal (core/engine/persistence.py closes them only after a save).
  Any other bad line, or a corrupt snapshot, raises `StateError` naming the file, line and
  problem. Nothing is ever silently discarded.
- What changed is told by identity: the engine replaces a job's state when it changes and
  sets `current_at` alone in place (core/engine/persistence.py), so a state is written
  again when it is another object or its `current_at` moved.

A 100,000-job pass's saves each wrote all 100,000 states (27 MB); they now write the
1,000-odd states of a commit chunk. Temp files a kill -9 left are removed at start
(`remove_stale_temps`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pydantic_core

from core.fsutil import FILE_MODE, atomic_write_bytes, fsync_dir, remove_stale_temps
from core.jobs import JobKey, JobState
from core.store.files.jsonio import load_json, to_json_in_slices
from core.store.protocols import StateError

STATE_VERSION = 1
CHANGES_SUFFIX = ".changes"  # the changes file: the state file's name and this


class StateStore:
    """The job state file; the caller passes `<data_dir>/state/scheduler.json` (or VMSH_STATE)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.changes = self.path.with_name(self.path.name + CHANGES_SUFFIX)
        # What the files hold, as this store last wrote it: each job's state object and its
        # current_at then (None: nothing written by this instance yet, the next save is whole).
        self._written: dict[JobKey, tuple[JobState, float | None]] | None = None
        self._token = ""  # the snapshot this store wrote last, which its change lines name
        self._whole_bytes = 0  # the snapshot's size, the changes' bound before a new one
        self._change_bytes = 0

    def load(self) -> dict[JobKey, JobState]:
        states, token = self._load_snapshot()
        if token:
            self._apply_changes(states, token)
        return states

    def _load_snapshot(self) -> tuple[dict[JobKey, JobState], str]:
        if not self.path.exists():
            return {}, ""
        doc = load_json(self.path, "state file")
        if not isinstance(doc, dict):
            raise StateError(
                f"{self.path}: state file must be a JSON object, got {type(doc).__name__}"
            )
        version = doc.get("version")
        if version != STATE_VERSION:
            raise StateError(
                f"{self.path}: unsupported state file version {version!r} (expected {STATE_VERSION})"
            )
        token = doc.get("changes", "")
        if not isinstance(token, str):
            raise StateError(f'{self.path}: "changes" must be text, got {type(token).__name__}')
        out: dict[JobKey, JobState] = {}
        _read_jobs(doc.get("jobs"), out, str(self.path))
        return out, token

    def _apply_changes(self, states: dict[JobKey, JobState], token: str) -> None:
        """Apply the change lines of the snapshot `token` to `states`, in order."""
        try:
            data = self.changes.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(f"{self.changes}: cannot read the state's changes: {exc.strerror or exc}") from exc
        lines = data.split(b"\n")
        last = len(lines) - 1 if lines[-1] else len(lines) - 2  # the last line holding bytes
        for number, line in enumerate(lines[: last + 1], 1):
            where = f"{self.changes}:{number}"
            try:
                doc = pydantic_core.from_json(line)
                if not isinstance(doc, dict) or not isinstance(doc.get("of"), str):
                    raise ValueError('not an object naming its snapshot ("of")')
            except ValueError as exc:
                if number - 1 == last:  # a save cut short: it never returned, nothing relied on it
                    break
                raise StateError(f"{where}: a change line is not valid: {exc}") from exc
            if doc["of"] != token:
                continue  # from before the snapshot: accounted for by it
            _read_jobs(doc.get("jobs", {}), states, where)
            gone = doc.get("gone", [])
            if not isinstance(gone, list):
                raise StateError(f'{where}: "gone" must be a list, got {type(gone).__name__}')
            for text in gone:
                states.pop(_key(text, where), None)

    def save(self, states: dict[JobKey, JobState]) -> None:
        """Write `states` durably: the changes since this store's last save as one line,
        or the whole snapshot (module docstring). Blocking: off the loop, one thread."""
        written = self._written
        if written is not None and self._change_bytes <= self._whole_bytes:
            changed: dict[str, Any] = {}
            kept: dict[JobKey, tuple[JobState, float | None]] = {}
            fresh = 0  # jobs this store never wrote
            for key, state in states.items():
                current = state.current_at  # read before to_dict: a later change is written next time
                was = written.get(key)
                if was is None or was[0] is not state or was[1] != current:
                    changed[f"{key[0]}/{key[1]}"] = state.to_dict()
                    kept[key] = (state, current)
                    fresh += was is None
            # written holds the jobs of states it knew, and the gone ones: len(written) - (len(states) - fresh)
            gone = [key for key in written if key not in states] if len(written) + fresh > len(states) else []
            if 2 * (len(changed) + len(gone)) <= len(states):
                if changed or gone:
                    self._written = None  # a failed append may leave a partial line: the next save is whole
                    self._append({"of": self._token, "gone": [f"{k[0]}/{k[1]}" for k in gone], "jobs": changed})
                    self._written = written
                    written.update(kept)
                    for key in gone:
                        del written[key]
                return
        self._save_whole(states)

    def _append(self, doc: dict[str, Any]) -> None:
        line = to_json_in_slices(doc, "jobs") + b"\n"
        created = self._change_bytes == 0
        fd = os.open(self.changes, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.changes.parent)  # the file's name durable with its first line
        self._change_bytes += len(line)

    def _save_whole(self, states: dict[JobKey, JobState]) -> None:
        # What is kept (a pair per job) is made before what is thrown away (the document):
        # made in turn, each pair sat between a job's dict and name in the allocator's pools
        # of their size, and kept those pools, two thirds free, for as long as the process ran.
        written = {key: (state, state.current_at) for key, state in states.items()}
        jobs: dict[str, Any] = {f"{key[0]}/{key[1]}": state.to_dict() for key, state in states.items()}
        token = secrets.token_hex(8)
        data = to_json_in_slices({"version": STATE_VERSION, "changes": token, "jobs": jobs}, "jobs") + b"\n"
        self._written = None
        atomic_write_bytes(self.path, data)
        self._whole_bytes, self._token, self._written = len(data), token, written
        self._drop_changes()  # if this fails, the lines of the new token still apply over it

    def _drop_changes(self) -> None:
        """Remove the changes of an older snapshot (only tidiness: their token is not its)."""
        self._change_bytes = 0
        try:
            os.unlink(self.changes)
        except FileNotFoundError:
            pass

    @staticmethod
    def snapshot(states: dict[JobKey, JobState], holding: frozenset[JobKey] = frozenset()) -> dict[str, Any]:
        """The document to save, copied out of the live states (cheap: call it on the loop,
        then `write` it from a writer thread while the states keep changing). `holding`
        (jobs whose leases a shared store must keep) means nothing to a lone scheduler."""
        return {
            "version": STATE_VERSION,
            "jobs": {f"{k[0]}/{k[1]}": s.to_dict() for k, s in states.items()},
        }

    def write(self, doc: dict[str, Any]) -> None:
        """Encode and write a `snapshot` atomically and durably (blocking: off the loop); the
        next `save` writes the whole snapshot again (this store no longer knows what is written)."""
        # pydantic_core's Rust encoder: 100,000 jobs in ~0.2 s, where json.dumps takes ~0.4 s.
        atomic_write_bytes(self.path, to_json_in_slices(doc, "jobs") + b"\n")  # no token: no change applies
        self._written = None
        self._drop_changes()

    def remove_stale_temps(self) -> list[Path]:
        """Temp files a kill -9 left beside the state file (call at start, under the lock)."""
        return remove_stale_temps(self.path.parent)


def _key(text: object, where: str) -> JobKey:
    if not isinstance(text, str):
        raise StateError(f"{where}: a job must be named by text, got {type(text).__name__}")
    try:
        return JobKey.parse(text)
    except ValueError as exc:
        raise StateError(f"{where}: job {text!r}: {exc}") from exc


def _read_jobs(jobs: object, into: dict[JobKey, JobState], where: str) -> None:
    if not isinstance(jobs, dict):
        raise StateError(f'{where}: "jobs" must be an object, got {type(jobs).__name__}')
    for text, value in jobs.items():
        key = _key(text, where)
        try:
            into[key] = JobState.from_dict(value)
        except ValueError as exc:
            raise StateError(f"{where}: job {text!r}: {exc}") from exc
