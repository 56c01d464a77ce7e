"""Text that is safe to show: control characters escaped, URLs cut down to their origin.

Names and values come from config files, batch files and remote servers; printed raw, an
escape sequence in one rewrites the operator's terminal, and a URL's path, query or
user:password often carries an API key. Everything that reaches a terminal, a log line or
the state file from such a source goes through these functions.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from urllib.parse import urlsplit

# Characters that are never shown as themselves: C0/C1 controls (Cc), format characters
# such as bidi overrides and zero-width joiners (Cf), unpaired surrogates (Cs), and the
# Unicode line and paragraph separators (Zl, Zp).
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def is_hidden(char: str) -> bool:
    """True for a character that would act on the terminal, or not show, when printed."""
    return unicodedata.category(char) in _HIDDEN_CATEGORIES


def printable(text: str, *, lines: bool = False) -> str:
    """`text` with every hidden character written as a Python escape (\\x1b, \\u202e);
    with `lines`, line breaks are kept (a message of several lines)."""
    if lines:
        return "\n".join(printable(line) for line in text.split("\n"))
    if text.isprintable():  # the common case, in C: nothing to escape (space is printable)
        return text
    return "".join(_escape(c) if is_hidden(c) else c for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def url_origin(url: str) -> str:
    """`scheme://host[:port]` of a URL: never its user:password, path, query or fragment."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if not parts.scheme or not host:
        return "<invalid url>"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port is not None else "")


# A URL in free text: a scheme, "://", then everything up to white space, a quote or a
# bracket; punctuation that ends a sentence is given back to the text.
_URL_IN_TEXT = re.compile(r"""\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>()`]+""")
_TRAILING = ".,;:!?"


def redact_urls(text: str) -> str:
    """`text` with every URL in it replaced by its origin (error messages of HTTP clients
    quote the full URL they were given)."""
    if "://" not in text:
        return text

    def origin(match: re.Match[str]) -> str:
        url = match.group(0)
        kept = url.rstrip(_TRAILING)
        return url_origin(kept) + url[len(kept):]

    return _URL_IN_TEXT.sub(origin, text)


def close_matches(word: str, known: Sequence[str]) -> list[str]:
    """The known word closest to `word` when one is close ("did you mean"), else [].
    difflib is imported when a mistake is named: a daemon whose config and dashboard
    settings are right never holds it (0.5 MiB)."""
    import difflib

    return difflib.get_close_matches(word, known, n=1, cutoff=0.6)
