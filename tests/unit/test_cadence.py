"""Table tests for the cadence grammar."""

from __future__ import annotations

import pytest

from core.cadence import CadenceError, format_seconds, parse_every

VALID = [
    ("89s", "fast", None, 89),
    ("5m", "fast", None, 300),
    ("1h", "fast", None, 3600),
    ("1d", "fast", None, 86400),
    ("120s", "fast", None, 120),
    ("12h", "cold", None, 43200),
    (" 10s ", "fast", None, 10),
    ("34*fast", "strong", 89, 3026),
    ("17*fast", "strong", 120, 2040),
    ("3 * fast", "cold", 10, 30),
]


@pytest.mark.parametrize(("text", "cadence", "fast", "seconds"), VALID)
def test_valid(text, cadence, fast, seconds):
    assert parse_every(text, cadence=cadence, fast_seconds=fast) == seconds


INVALID = [
    ("0s", "fast", None, "'0s' is zero; a period must be positive"),
    ("0*fast", "strong", 89, "'0*fast' is zero"),
    ("-5m", "fast", None, "'-5m' is negative; a period must be positive"),
    ("-2*fast", "cold", 89, "is negative"),
    ("999999999999d", "fast", None, "longer than 100 years"),
    ("999999999*fast", "strong", 89, "longer than 100 years"),
    ("5y", "fast", None, "'5y' has an unknown unit 'y' (expected <n>s|m|h|d or <n>*fast)"),
    ("10ms", "fast", None, "unknown unit 'ms'"),
    ("fast", "strong", 89, "'fast' needs a multiplier, for example '34*fast'"),
    ("34*fast", "fast", None, "the fast cadence cannot be a multiple of itself"),
    ("34*fats", "strong", 89, "'34*fats' is not a cadence (expected <n>s|m|h|d or <n>*fast)"),
    ("34*fast", "strong", None, "needs a fast cadence to multiply"),
    ("89", "fast", None, "is not a cadence"),
    (89, "fast", None, "89 has no unit (expected <n>s|m|h|d or <n>*fast)"),
    ("", "fast", None, "'' is not a cadence"),
    ("soon", "fast", None, "'soon' is not a cadence"),
    ("1.5h", "fast", None, "'1.5h' is not a cadence"),
    (None, "fast", None, "None is not a cadence"),
    (True, "fast", None, "True is not a cadence"),
    (["1s"], "fast", None, "is not a cadence"),
]


@pytest.mark.parametrize(("text", "cadence", "fast", "message"), INVALID)
def test_invalid(text, cadence, fast, message):
    with pytest.raises(CadenceError) as info:
        parse_every(text, cadence=cadence, fast_seconds=fast)
    assert message in str(info.value)


def test_cadence_error_is_a_value_error():
    assert issubclass(CadenceError, ValueError)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (89, "1m29s"), (59, "59s"), (300, "5m"), (3600, "1h"), (9000, "2h30m"),
     (86400, "1d"), (90000, "1d1h")],
)
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text
