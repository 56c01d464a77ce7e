"""Cadence grammar: "89s", "5m", "1h", "1d" and "34*fast" to whole seconds.

VaultMesh writes periods as a positive integer with a unit, and the slower cadences
(strong, cold) may be written as a multiple of the namespace's fast period.
"""

from __future__ import annotations

import functools
import re

CADENCES = ("fast", "strong", "cold")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Longer than any sane anchoring period (about 100 years) is a typo, not a schedule.
MAX_SECONDS = 100 * 365 * 86400

_PLAIN = re.compile(r"^\s*(-?\d+)\s*([A-Za-z]+)\s*$")
_MULTIPLE = re.compile(r"^\s*(-?\d+)\s*\*\s*([A-Za-z_]+)\s*$")
EXPECTED = "expected <n>s|m|h|d or <n>*fast"


class CadenceError(ValueError):
    """A cadence string that is not a valid period."""


def parse_every(text: object, *, cadence: str = "fast", fast_seconds: int | None = None) -> int:
    """Return the period in seconds that `text` names.

    `cadence` is the name of the cadence being parsed (fast, strong or cold);
    `fast_seconds` is the namespace's fast period, needed to resolve "<n>*fast".
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise CadenceError(f"{text!r} is not a cadence ({EXPECTED})")
    if isinstance(text, int):
        raise CadenceError(f"{text!r} has no unit ({EXPECTED})")
    return _parse_text(text, cadence, fast_seconds)


@functools.lru_cache(maxsize=1024)  # a config of 10,000 namespaces says "89s" 10,000 times
def _parse_text(text: str, cadence: str, fast_seconds: int | None) -> int:
    if text.strip() == "fast":
        raise CadenceError(f"'{text}' needs a multiplier, for example '34*fast'")
    multiple = _MULTIPLE.match(text)
    if multiple:
        n, base = int(multiple.group(1)), multiple.group(2)
        if base != "fast":
            raise CadenceError(f"'{text}' is not a cadence ({EXPECTED})")
        if cadence == "fast":
            raise CadenceError(f"'{text}': the fast cadence cannot be a multiple of itself")
        _check_count(text, n)
        if fast_seconds is None:
            raise CadenceError(f"'{text}' needs a fast cadence to multiply")
        return _check_range(text, n * fast_seconds)
    plain = _PLAIN.match(text)
    if not plain:
        raise CadenceError(f"'{text}' is not a cadence ({EXPECTED})")
    n, unit = int(plain.group(1)), plain.group(2)
    if unit not in UNITS:
        raise CadenceError(f"'{text}' has an unknown unit '{unit}' ({EXPECTED})")
    _check_count(text, n)
    return _check_range(text, n * UNITS[unit])


def _check_count(text: str, n: int) -> None:
    if n < 0:
        raise CadenceError(f"'{text}' is negative; a period must be positive")
    if n == 0:
        raise CadenceError(f"'{text}' is zero; a period must be positive")


def _check_range(text: str, seconds: int) -> int:
    if seconds > MAX_SECONDS:
        raise CadenceError(f"'{text}' is longer than 100 years; check the number")
    return seconds


def format_seconds(seconds: float) -> str:
    """Short human form of a period: 89s, 5m, 2h30m, 1d."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        m, r = divmod(s, 60)
        return f"{m}m{r}s" if r else f"{m}m"
    if s < 86400:
        h, r = divmod(s, 3600)
        return f"{h}h{r // 60}m" if r // 60 else f"{h}h"
    d, r = divmod(s, 86400)
    return f"{d}d{r // 3600}h" if r // 3600 else f"{d}d"
