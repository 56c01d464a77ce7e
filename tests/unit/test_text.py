"""What reaches a terminal, a log line or the state file from outside input."""

from __future__ import annotations

import pytest

from core.errors import describe
from core.text import printable, redact_urls, url_origin


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("dao:vaultmesh", "dao:vaultmesh"),
        ("名前空間 ok", "名前空間 ok"),
        ("evil\x1b]0;owned\x07name", "evil\\x1b]0;owned\\x07name"),
        ("tab\tnew\nline\r", "tab\\x09new\\x0aline\\x0d"),
        ("bidi\u202egnp.exe", "bidi\\u202egnp.exe"),
        ("c1\x9bcsi", "c1\\x9bcsi"),
        ("nul\x00", "nul\\x00"),
    ],
)
def test_printable_escapes_what_would_act_on_a_terminal(text, shown):
    assert printable(text) == shown


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://user:pw@tsa.example:8443/v1/KEY?apikey=KEY#frag", "https://tsa.example:8443"),
        ("http://tsa.example/KEY", "http://tsa.example"),
        ("HTTPS://TSA.example", "https://tsa.example"),
        ("http://[::1]:3000/x", "http://[::1]:3000"),
        ("not a url", "<invalid url>"),
        ("http://[::1/x", "<invalid url>"),
    ],
)
def test_url_origin_keeps_scheme_host_and_port_only(url, origin):
    assert url_origin(url) == origin


def test_redact_urls_cuts_every_url_in_a_message_and_keeps_the_punctuation():
    text = (
        "rfc3161:tsa (https://a:b@tsa.example/v3/KEY): error for url "
        "'http://rpc.example:8545/KEY?x=1'. Retry https://c.example/KEY, later."
    )
    assert redact_urls(text) == (
        "rfc3161:tsa (https://tsa.example): error for url "
        "'http://rpc.example:8545'. Retry https://c.example, later."
    )


def test_describe_keeps_keys_and_escape_sequences_out_of_logs_and_state():
    exc = RuntimeError("cannot reach https://mainnet.example/v3/0123456789abcdef\x1b[2J\nsecond line")
    assert describe(exc) == "cannot reach https://mainnet.example"
    assert describe(ValueError("bad \x1b[31mred")) == "bad \\x1b[31mred"


def test_printable_lines_keeps_the_line_breaks_of_a_message_and_escapes_the_rest():
    assert printable("first \x1b[2J\n  second\r", lines=True) == "first \\x1b[2J\n  second\\x0d"
