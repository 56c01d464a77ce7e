"""Fixtures for the tests on a real PostgreSQL (tests/cluster, the store contract): one
server per session, a fresh database per test. Registered once, by tests/conftest.py, so
that every folder shares the one server.

- `postgres_server`: the session's `PostgresServer` (tests/cluster/postgres.py), started
  once, removed at the end. Without PostgreSQL binaries the tests that use it are skipped,
  except in CI (env `CI` set), where that is a failure: run scripts/ensure-tools.sh.
- `pg_url`: a new database for this test, owned by role `vmsh`; its URL over TCP
  (`postgresql://vmsh@127.0.0.1:<port>/<db>`, no password in it).
- `pg_env`: `{"VMSH_STORE": pg_url, "VMSH_STORE_PASSWORD": PASSWORD}`, the environment a
  scheduler process needs for that database.
- `migrated`: `pg_url` with the schema created; `pair`: replicas a and b (engines in this
  process, tests/cluster/engines.py) on it, sharing a FakeClock, closed after.
"""

from __future__ import annotations

import itertools
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.store.postgres.database import SCHEMA_VERSION, Database
from tests.cluster.engines import Pair
from tests.cluster.postgres import PASSWORD, PostgresServer, find_bin_dir

_unique = itertools.count(1)


def new_base_dir() -> Path:
    """A folder for a server under /tmp, 0755, so that the `postgres` user can reach it
    when the tests run as root (pytest's own tmp folders are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="vmsh-pg-", dir="/tmp"))
    base.chmod(0o755)
    return base


def require_postgres() -> None:
    """Skip without PostgreSQL binaries; in CI that is a failure, never a silent skip."""
    if find_bin_dir() is not None:
        return
    reason = "no PostgreSQL server binaries (initdb) under /usr/lib/postgresql/*/bin or on PATH: run scripts/ensure-tools.sh"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {reason}", pytrace=False)
    pytest.skip(reason)


def running_server() -> Iterator[PostgresServer]:
    """A PostgreSQL of its own, started, and removed afterwards (a fixture's body)."""
    require_postgres()
    server = PostgresServer(new_base_dir())
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    yield from running_server()


def database_name(test_name: str) -> str:
    """`test_x[a-b]` -> `t_test_x_a_b_7`: lower case, [a-z0-9_], unique, at most 63 bytes."""
    suffix = f"_{os.getpid()}_{next(_unique)}"
    stem = re.sub(r"[^a-z0-9_]+", "_", test_name.lower()).strip("_")
    return "t_" + stem[: 63 - 2 - len(suffix)] + suffix


@pytest.fixture
def pg_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    # A test before this one may have stopped or killed the shared server.
    postgres_server.start()
    name = database_name(request.node.name)
    yield postgres_server.create_database(name)
    if postgres_server.is_running():
        postgres_server.drop_database(name)


@pytest.fixture
def pg_env(pg_url: str) -> dict[str, str]:
    return {"VMSH_STORE": pg_url, "VMSH_STORE_PASSWORD": PASSWORD}


@pytest.fixture
def migrated(pg_url: str) -> str:
    db = Database(pg_url, password=PASSWORD)
    assert db.migrate() == (0, SCHEMA_VERSION)
    db.close()
    return pg_url


@pytest.fixture
async def pair(tmp_path: Path, migrated: str):
    replicas = Pair(tmp_path, migrated)
    yield replicas
    await replicas.a.close()
    await replicas.b.close()
