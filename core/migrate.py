"""Moving from the original VaultMesh service: its last-anchored times, imported once.

The original service keeps its state in one JSON file (its `VMSH_STATE`):
`{"<namespace>": {"last": {"<cadence>": <epoch seconds>, ...}, "backoff": k}, ...}`.
Started on a fresh data dir, this scheduler would anchor every job at once; importing
those times instead makes each job due one period after the original anchored it, and
jobs the original never anchored are due at once.

Where the file comes from: `--import-state FILE`, or `VMSH_STATE` (which also names
this scheduler's own state file, `scheduler.state_file`). A file at `VMSH_STATE` in the
original format is read as the file to import, and this scheduler keeps its own state in
`<data_dir>/state/scheduler.json`, on every start, so both meanings of the variable work.

Imported only when this scheduler's state file does not exist yet (its first start):
the import writes it, so it never happens again. A file that is not the original's
format is a `StateImportError` naming the file. The original's `backoff` level is not
carried over: a job that was failing is tried again at its due time and backs off anew.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import safejson
from core.config import Config
from core.jobs import JobKey, JobSpec, JobState
from core.store.files.state import StateStore

# Our own state file begins with its version (core.store.files.state.StateStore.write); a look at its
# first bytes saves parsing a large file just to tell the two formats apart.
_OURS = re.compile(rb'\s*\{\s*"version"\s*:')
_SHAPE = '{"<namespace>": {"last": {"<cadence>": <epoch seconds>}, "backoff": k}}'


class StateImportError(Exception):
    """The original service's state file cannot be imported; the message names the file."""


@dataclass(frozen=True)
class StateImport:
    """What an import did, for the log line at start."""

    source: Path
    imported: int = 0  # jobs whose last anchor time came from the file
    never_anchored: int = 0  # configured jobs the file has no time for: due at once
    not_configured: int = 0  # times in the file for jobs not configured here: ignored
    skipped: bool = False  # --import-state given, but our state existed: nothing imported

    def log_fields(self) -> dict[str, Any]:
        if self.skipped:
            return {"file": str(self.source)}
        return {
            "file": str(self.source),
            "imported": self.imported,
            "never_anchored": self.never_anchored,
            "not_configured": self.not_configured,
        }

    @property
    def message(self) -> str:
        if self.skipped:
            return (
                "--import-state not applied: this scheduler has its own state already; "
                "an import happens only on the first start"
            )
        return (
            "imported the last-anchored times of the original VaultMesh service; jobs it "
            "never anchored are due now"
        )


def default_state_file(config: Config) -> Path:
    return Path(config.scheduler.data_dir) / "state" / "scheduler.json"


def is_original_state(path: Path) -> bool:
    """Whether `path` is a JSON object in the original service's format (not ours)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            if _OURS.match(head):
                return False
            doc = safejson.loads(head + f.read())
    except (OSError, ValueError):
        return False  # missing, unreadable or corrupt: the state store says which
    return isinstance(doc, dict) and "version" not in doc and "jobs" not in doc


def state_files(config: Config, import_from: Path | None = None) -> tuple[Path, Path | None]:
    """(this scheduler's state file, the original service's state file to import or None).

    `scheduler.state_file` (VMSH_STATE) holding the original's format is the file to
    import (unless `import_from` names another), and our state goes to the data dir.
    """
    configured = config.scheduler.state_file
    if configured is not None and is_original_state(Path(configured)):
        return default_state_file(config), import_from or Path(configured)
    return Path(configured or default_state_file(config)), import_from


def read_original_state(path: Path) -> dict[JobKey, float]:
    """The last-anchored time of each (namespace, cadence) in the original's state file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StateImportError(f"{path}: cannot read the state file to import: {exc.strerror or exc}") from exc
    try:
        doc = safejson.loads(data)
    except UnicodeDecodeError as exc:
        raise StateImportError(f"{path}: the state file to import is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise StateImportError(
            f"{path}:{exc.lineno}:{exc.colno}: the state file to import is not valid JSON: {exc.msg}"
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise StateImportError(f"{path}: the state file to import is not usable JSON") from exc
    if not isinstance(doc, dict):
        raise StateImportError(
            f"{path}: expected the original VaultMesh service's state, {_SHAPE}; "
            f"got a JSON {type(doc).__name__}"
        )
    if "version" in doc and "jobs" in doc:
        raise StateImportError(
            f"{path}: this is a vmsh-scheduler state file, not the original service's; "
            "there is nothing to import (use it as scheduler.state_file instead)"
        )
    out: dict[JobKey, float] = {}
    for namespace, entry in doc.items():
        if not isinstance(entry, dict):
            raise StateImportError(
                f'{path}: namespace {namespace!r}: expected an object with "last", '
                f"got a JSON {type(entry).__name__}"
            )
        last = entry.get("last")
        if last is None:
            continue
        if not isinstance(last, dict):
            raise StateImportError(
                f'{path}: namespace {namespace!r}: "last" must map cadences to epoch seconds, '
                f"got a JSON {type(last).__name__}"
            )
        for cadence, at in last.items():
            if at is None:
                continue  # never anchored
            if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at) or at < 0:
                raise StateImportError(
                    f'{path}: namespace {namespace!r}: "last"."{cadence}" must be epoch seconds '
                    f"(a number >= 0), got {json.dumps(at)[:40]}"
                )
            out[JobKey(namespace, cadence)] = float(at)
    return out


def import_original_state(source: Path, store: StateStore, jobs: list[JobSpec]) -> StateImport:
    """Write our state file from the original's last-anchored times (configured jobs only).

    Jobs get `last_anchored_at` and nothing else: the engine makes each due one period
    later (core.engine), and a time in the future is moved back to now by its load rule.
    """
    times = read_original_state(source)
    configured = [spec.key for spec in jobs]
    states = {key: JobState(last_anchored_at=times[key]) for key in configured if key in times}
    store.save(states)
    return StateImport(
        source=source,
        imported=len(states),
        never_anchored=len(configured) - len(states),
        not_configured=len(set(times) - set(configured)),
    )
