"""The checks of the files a target names (check-config, through each scheme's
``file_problems``): a trust bundle, a key file. Each answers None or why not, in a
sentence that never quotes a key file's content.

This module imports nothing else of core.config, so core/anchors may import it without
importing the configuration (no cycle config <-> anchors).
"""

from __future__ import annotations

from pathlib import Path


def trust_bundle_problem(path: Path, target: str) -> str | None:
    """None if the anchoring backend can use ``path`` as its trust bundle, else why not
    (in a sentence: no parser's error dump)."""
    from core.anchors.rfc3161 import load_trust_bundle
    from core.errors import ValidationError

    try:
        load_trust_bundle(path, target)
    except ValidationError as exc:
        message = str(exc).removeprefix(f"{target}: ").replace("trust_bundle", "trust bundle", 1)
        if "is not PEM certificates" not in message:
            return message
        try:
            pem = b"-----BEGIN CERTIFICATE-----" in Path(path).read_bytes()
        except OSError:
            pem = False
        if pem:
            return f"trust bundle {path} holds a certificate that does not parse"
        return f"trust bundle {path} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)"
    return None


def key_file_problem(path: Path) -> str | None:
    """None if ``path`` holds a usable secp256k1 private key (hex, 0x optional), else why
    not; the message never quotes the file's content."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        return f"cannot read key file {path}: {reason}"
    from eth_account import Account

    try:
        Account.from_key(text)
    except Exception:  # never chained or quoted: the message could hold the key
        return f"key file {path} does not hold a valid secp256k1 private key (64 hex digits)"
    finally:
        del text
    return None
