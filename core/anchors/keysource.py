"""The signing key of a chain target (eip155, btc): from `key` (a SecretStr in the config),
the environment variable `key_env`, or the file `key_file`. Read when the first transaction
is signed, so `verify` works without it; messages name the source, never the key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.errors import AuthError, ValidationError


def read_key(target: str, settings: Any) -> str:
    """The key's text (stripped); AuthError when its variable or file cannot be read,
    ValidationError when none is configured."""
    if settings.key is not None:
        text: str = settings.key.get_secret_value().strip()
        return text
    if settings.key_env:
        value = os.environ.get(settings.key_env, "").strip()
        if not value:
            raise AuthError(f"{target}: environment variable {settings.key_env} (the signing key) is not set")
        return value
    if settings.key_file is not None:
        try:
            return Path(settings.key_file).read_text().strip()
        except OSError as exc:
            raise AuthError(
                f"{target}: cannot read key file {settings.key_file}: {exc.strerror or type(exc).__name__}"
            ) from None
    raise ValidationError(f"{target}: no signing key configured (set key_env or key_file)")
