"""What a job is: one (namespace, cadence) pair, the settings the engine needs for it, and
its state (`JobState`: what the scheduler knows of its anchors; `Row`: where a shared store
kept it). How a state is stored is core/store/."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple


class JobKey(NamedTuple):
    namespace: str
    cadence: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.cadence}"

    @classmethod
    def parse(cls, text: str) -> JobKey:
        namespace, _, cadence = text.rpartition("/")
        if not namespace or not cadence:
            raise ValueError(f"{text!r} is not a job (expected <namespace>/<cadence>)")
        return cls(namespace, cadence)


REDUNDANT = re.compile(r"^(?P<min>[1-9][0-9]*) of (?P<targets>[^\s,]+(?:,[^\s,]+)+)$")


def redundant_target(least: int, targets: Sequence[str]) -> str:
    """The one text that names a redundant job's targets: "2 of rfc3161:a,rfc3161:b,eip155:8453"
    (`min` attestations of these targets). A job's `target`, its intents' and its receipts'
    (version 3) carry it; a single target is its own name, as always."""
    return f"{least} of {','.join(targets)}"


def redundant_parts(target: str) -> tuple[int, tuple[str, ...]] | None:
    """(min, targets) of a redundant target text, None for a single target."""
    m = REDUNDANT.match(target)
    if m is None:
        return None
    return int(m.group("min")), tuple(m.group("targets").split(","))


def member_targets(target: str) -> tuple[str, ...]:
    """The targets a job's target text names: its members, or itself."""
    parts = redundant_parts(target)
    return (target,) if parts is None else parts[1]


def targets_named(specs: Iterable[JobSpec]) -> list[str]:
    """Every target these jobs anchor to (a redundant job's members each), sorted, once each."""
    return sorted({t for spec in specs for t in member_targets(spec.target)})


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job as the configuration defines it. Equal specs mean an unchanged job on reload."""

    key: JobKey
    target: str  # "<scheme>:<name>", e.g. "local:dev", "rfc3161:tsa", "eip155:8453"; or redundant_target(...)
    every: int  # seconds
    source: Path  # folder of batch JSON files for the namespace
    confirmations: int = 0
    anchor_unchanged: bool = False
    policy_oid: str | None = None

    @property
    def namespace(self) -> str:
        return self.key.namespace

    @property
    def cadence(self) -> str:
        return self.key.cadence


_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


# each ASCII character not in _SAFE, as safe_name writes it ("%3A" for ":")
_ASCII_ESCAPES = {n: f"%{n:02X}" for n in range(128) if chr(n) not in _SAFE}


def safe_name(name: str) -> str:
    """A file-name-safe, reversible form of a namespace: "dao:vaultmesh" -> "dao%3Avaultmesh"
    (each UTF-8 byte of a character not in _SAFE as %XX; a leading "." as %2E)."""
    if name.isascii():  # one str.translate (a receipt's folder: once a receipt written)
        out = name.translate(_ASCII_ESCAPES)
    else:
        out = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in name)
    return "%2E" + out[1:] if out.startswith(".") else out


# The longest file name most file systems allow (ext4, xfs, btrfs, tmpfs: NAME_MAX).
NAME_MAX_BYTES = 255


def namespace_name_problem(name: str) -> str | None:
    """Why `name` cannot name a namespace, or None when it can.

    A namespace becomes a folder, `receipts/<safe_name(name)>/` (and its pending index), so
    the encoded name must be a usable file name: not empty, not `.` or `..`, no `/`, and at
    most NAME_MAX_BYTES once encoded (non-ASCII characters take 3 bytes each in UTF-8, then
    3 more per byte when percent-encoded: 28 CJK characters fit, 29 do not). Control and
    other invisible characters are refused: they would act on a terminal, or make two
    names that look the same. Receipt file names inside that folder hold only the cadence
    (one of fast/strong/cold), a time stamp and a root prefix: under 80 bytes.
    """
    if name.isascii() and name.isprintable() and "/" not in name and name not in ("", ".", ".."):
        if len(name) * 3 <= NAME_MAX_BYTES:  # the common case, checked in C: nothing below applies
            return None
    from core.text import is_hidden

    if name == "":
        return "a namespace name cannot be empty"
    if name in (".", ".."):
        return f"{name!r} cannot be a namespace name (it means a folder itself)"
    if "/" in name:
        return "a namespace name cannot contain '/' (it names a folder, and '/' separates jobs)"
    hidden = sorted({c for c in name if is_hidden(c)})
    if hidden:
        shown = ", ".join(f"U+{ord(c):04X}" for c in hidden)
        return f"a namespace name cannot contain control or invisible characters ({shown})"
    size = len(safe_name(name).encode())
    if size > NAME_MAX_BYTES:
        return (
            f"namespace name too long: its folder name receipts/{safe_name(name)[:24]}... would be "
            f"{size} bytes, over the {NAME_MAX_BYTES}-byte file name limit (letters, digits and "
            "._- count 1 byte, any other character 3 per byte of its UTF-8 form)"
        )
    return None


def unsafe_name(safe: str) -> str:
    """The inverse of safe_name."""
    from urllib.parse import unquote

    return unquote(safe)


# --------------------------------------------------------------------------- job state


def _opt(d: dict[str, Any], name: str, types: tuple[type, ...]) -> Any:
    value = d.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, types):
        raise ValueError(
            f"{name} must be {' or '.join(t.__name__ for t in types)} or null, got {value!r}"
        )
    return value


def _int(d: dict[str, Any], name: str) -> int:
    value: object = d.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Row:
    """Where a job's state came from in a shared store: the row's `version`, and the lease's
    `fence` while this replica holds it (None: not leased here). It travels with the state
    object, so a save always carries the version and fence of the very state it writes,
    never ones a later claim refreshed (core/store/postgres/state.py PgStateStore.write)."""

    version: int
    fence: int | None = None


@dataclass(slots=True)
class JobState:
    last_anchored_at: float | None = None
    last_root: str | None = None
    failures: int = 0  # consecutive
    backoff_level: int = 0
    next_attempt: float | None = None
    last_error_kind: str | None = None
    last_error: str | None = None
    last_receipt: str | None = None
    last_attempt_at: float | None = None
    # Last time the anchored root was known to be the latest: an anchor, or a pass that
    # found the root unchanged. Staleness counts from here, so a quiet namespace is not stale.
    current_at: float | None = None
    # The shared store's row this state is based on (None: the file store, or a new job);
    # never written out, never compared.
    row: Row | None = field(default=None, compare=False, repr=False)

    def with_row(self, row: Row | None) -> JobState:
        """This state based on `row` (a claim's new fence): made directly, where
        dataclasses.replace took 4-7 us a job, 10,000 of them before a pass's TSA call."""
        return JobState(
            self.last_anchored_at, self.last_root, self.failures, self.backoff_level, self.next_attempt,
            self.last_error_kind, self.last_error, self.last_receipt, self.last_attempt_at, self.current_at, row,
        )

    def to_dict(self) -> dict[str, Any]:
        # Written out by hand: dataclasses.asdict deep-copies and is ~10x slower.
        return {
            "last_anchored_at": self.last_anchored_at,
            "last_root": self.last_root,
            "failures": self.failures,
            "backoff_level": self.backoff_level,
            "next_attempt": self.next_attempt,
            "last_error_kind": self.last_error_kind,
            "last_error": self.last_error,
            "last_receipt": self.last_receipt,
            "last_attempt_at": self.last_attempt_at,
            "current_at": self.current_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobState:
        """Strict about types (raises ValueError); unknown keys are ignored (newer writers)."""
        if not isinstance(d, dict):
            raise ValueError(f"expected an object, got {type(d).__name__}")
        num = (int, float)
        return cls(
            last_anchored_at=_opt(d, "last_anchored_at", num),
            last_root=_opt(d, "last_root", (str,)),
            failures=_int(d, "failures"),
            backoff_level=_int(d, "backoff_level"),
            next_attempt=_opt(d, "next_attempt", num),
            last_error_kind=_opt(d, "last_error_kind", (str,)),
            last_error=_opt(d, "last_error", (str,)),
            last_receipt=_opt(d, "last_receipt", (str,)),
            last_attempt_at=_opt(d, "last_attempt_at", num),
            current_at=_opt(d, "current_at", num),
        )
