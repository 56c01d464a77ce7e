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


def unsafe_name(safe: str) -> str:
    """The inverse of safe_name."""
    from urllib.parse import unquote

    return unquote(safe)
