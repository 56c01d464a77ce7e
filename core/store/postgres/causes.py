"""Why a connection to the PostgreSQL store failed, in words that name the cause and the fix.

libpq's own messages name the cause ("password authentication failed for user ...",
"Connection refused", ...) but the pool hides them behind "couldn't get a connection after
N sec"; `cause_of` turns one of them into a line an operator can act on. Nothing secret is
ever in it: libpq never quotes a password, and the store is shown as
postgresql://host:port/db (`display_url`), the user by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import psycopg

PASSWORD_HINT = "VMSH_STORE_PASSWORD (or VMSH_STORE_PASSWORD_FILE)"


def display_url(url: str) -> str:
    """The store as it may be shown: postgresql://host:port/db, never a user or password."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    return f"postgresql://{host}:{port}/{info.get('dbname') or ''}"


def _where(url: str) -> tuple[str, str, str, str]:
    """(host:port, user, database, the store as shown)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    host = str(info.get("host") or "localhost")
    port = str(info.get("port") or "5432")
    user = str(info.get("user") or "(your login name)")
    return f"{host}:{port}", user, str(info.get("dbname") or user), display_url(url)


_Rule = tuple[re.Pattern[str], Callable[[re.Match[str], str, str, str, str], str]]

_RULES: tuple[_Rule, ...] = (
    (re.compile(r'password authentication failed for user "([^"]*)"'), lambda m, hp, user, db, shown: (
        f'authentication failed for user "{m.group(1)}" at {hp}: the password in {PASSWORD_HINT} '
        f"is wrong, or the role does not exist (create it: CREATE ROLE {m.group(1)} LOGIN PASSWORD '...')"
    )),
    (re.compile(r"no password supplied"), lambda m, hp, user, db, shown: (
        f'no password given for user "{user}": {shown} asks for one; set {PASSWORD_HINT} '
        "(never in the URL)"
    )),
    (re.compile(r'role "([^"]*)" does not exist'), lambda m, hp, user, db, shown: (
        f'no role "{m.group(1)}" on {hp}: create it (CREATE ROLE {m.group(1)} LOGIN PASSWORD \'...\') '
        "or name another user in VMSH_STORE"
    )),
    (re.compile(r'database "([^"]*)" does not exist'), lambda m, hp, user, db, shown: (
        f'no database "{m.group(1)}" on {hp}: create it (createdb -O {user} {m.group(1)}, or '
        f"CREATE DATABASE {m.group(1)} OWNER {user}) or name another in VMSH_STORE"
    )),
    (re.compile(r"Connection refused", re.IGNORECASE), lambda m, hp, user, db, shown: (
        f"connection refused by {hp}: no PostgreSQL listens there (is it running? its "
        "listen_addresses and port?), or the host or port in VMSH_STORE is wrong"
    )),
    (re.compile(r"connection timeout expired|timeout expired$", re.IGNORECASE | re.MULTILINE), lambda m, hp, user, db, shown: (
        f"timed out: no connection to {hp} within the connect timeout (nothing answers: a firewall "
        "dropping packets, a wrong host, or a server that hangs)"
    )),
    (re.compile(r"couldn't get a connection after ([\d.]+) sec"), lambda m, hp, user, db, shown: (
        f"timed out: no connection to {hp} within {float(m.group(1)):g} s (nothing answered: a firewall "
        "dropping packets, a wrong host, a server that hangs; or every connection is busy)"
    )),
    (re.compile(r"SSL was required|does not support SSL", re.IGNORECASE), lambda m, hp, user, db, shown: (
        f"{hp} offers no TLS but VMSH_STORE requires it (sslmode=require or stricter): enable ssl "
        "on the server, or lower sslmode"
    )),
    (re.compile(r"no pg_hba\.conf entry .*no encryption", re.IGNORECASE), lambda m, hp, user, db, shown: (
        f'{hp} requires TLS for user "{user}" (pg_hba.conf: hostssl): add ?sslmode=require to VMSH_STORE'
    )),
    (re.compile(r"no pg_hba\.conf entry", re.IGNORECASE), lambda m, hp, user, db, shown: (
        f'{hp} lets no connection in for user "{user}" to database "{db}" from this host: add a line '
        "for it to the server's pg_hba.conf"
    )),
    (re.compile(r"could not translate host name \"([^\"]*)\"", re.IGNORECASE), lambda m, hp, user, db, shown: (
        f'unknown host "{m.group(1)}": fix the host in VMSH_STORE'
    )),
)


def cause_of(error: BaseException | str, url: str) -> str | None:
    """The cause and the fix of a failed connection to `url`, or None when it is none of
    the known ones."""
    text = str(error)
    for pattern, say in _RULES:
        match = pattern.search(text)
        if match:
            return say(match, *_where(url))
    return None


def first_line(error: BaseException) -> str:
    """libpq's message's first line (the rest is hints and context), or the error's type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
