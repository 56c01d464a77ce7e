"""Anchor error kinds and the classifier for anything a backend did not type itself."""

from __future__ import annotations

import errno
import re
from enum import StrEnum

from core.text import printable, redact_urls


class ErrorKind(StrEnum):
    NETWORK = "network"
    AUTH = "auth"
    VALIDATION = "validation"
    STORAGE = "storage"  # our own disk: journal, receipts or state could not be written
    UNKNOWN = "unknown"


class AnchorError(Exception):
    """An anchoring failure with a kind that decides the backoff multiplier."""

    kind: ErrorKind = ErrorKind.UNKNOWN

    def __init__(self, message: str, *, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class NetworkError(AnchorError):
    kind = ErrorKind.NETWORK


class AuthError(AnchorError):
    kind = ErrorKind.AUTH


class ValidationError(AnchorError):
    kind = ErrorKind.VALIDATION


class StorageError(AnchorError):
    """A write or read of the scheduler's own files failed (disk full, permission, name).

    `op` says which step (journal, receipt, state, ...), `path` which file or folder and
    `errno` the OS error number (None when the cause was not an OSError). The message
    names all three, never file contents.
    """

    kind = ErrorKind.STORAGE

    def __init__(self, op: str, path: str | None, cause: BaseException) -> None:
        self.op = op
        self.path = path
        if isinstance(cause, NetworkError):  # a database store out of reach: a network failure
            self.kind = ErrorKind.NETWORK
        self.errno: int | None = getattr(cause, "errno", None) if isinstance(cause, OSError) else None
        if isinstance(cause, OSError):
            reason = cause.strerror or str(cause)
            name = errno.errorcode.get(cause.errno or 0)
            if name:
                reason = f"{reason} ({name})"
            where = path or cause.filename
        else:
            reason, where = describe(cause), path
        # The reason first: a long path may be cut short where messages are (`describe`).
        super().__init__(f"{op}: {reason}: {where}" if where else f"{op}: {reason}")


# The VaultMesh service's rules, applied to the text of an untyped error.
_NETWORK = re.compile(
    r"econnrefused|econnreset|etimedout|timed? ?out|timeout|network|connection (refused|reset)"
    r"|name or service not known|temporary failure in name resolution|unreachable",
    re.I,
)
_AUTH = re.compile(r"\b(401|403)\b|unauthori[sz]ed|forbidden", re.I)
_VALIDATION = re.compile(r"invalid|schema|malformed", re.I)
_NETWORK_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
}


def classify(exc: BaseException) -> ErrorKind:
    """The kind of any exception: typed errors keep theirs, the rest go by VaultMesh's rules."""
    if isinstance(exc, AnchorError):
        return exc.kind
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return ErrorKind.NETWORK
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return ErrorKind.NETWORK
    text = f"{type(exc).__name__}: {exc}"
    if _AUTH.search(text):
        return ErrorKind.AUTH
    if _NETWORK.search(text):
        return ErrorKind.NETWORK
    if _VALIDATION.search(text):
        return ErrorKind.VALIDATION
    return ErrorKind.UNKNOWN


def describe(exc: BaseException) -> str:
    """One line for logs, the state file and the dashboard: the message, or the type when
    it has none. URLs are cut to scheme://host[:port] (a path, query or user:password may
    hold an API key) and control characters are escaped."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return printable(redact_urls(text))[:500]
