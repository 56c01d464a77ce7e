"""What a job is: one (namespace, cadence) pair and the settings the engine needs for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple


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


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job as the configuration defines it. Equal specs mean an unchanged job on reload."""

    key: JobKey
    target: str  # "<scheme>:<name>", e.g. "local:dev", "rfc3161:tsa", "eip155:8453"
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


def safe_name(name: str) -> str:
    """A file-name-safe, reversible form of a namespace: "dao:vaultmesh" -> "dao%3Avaultmesh"."""
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
