"""The PostgreSQL harness is a real server: a password is needed over TCP, a stopped
server refuses connections, committed data survives a stop and a SIGKILL (crash
recovery from the WAL), and a server that cannot start says why from its log.

The stop/kill tests use a server of their own, so the session's server stays up."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.cluster.pg_fixtures import database_name, new_base_dir, require_postgres, running_server
from tests.cluster.postgres import PASSWORD, PostgresError, PostgresServer


@pytest.fixture(autouse=True)
def no_ambient_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq would take a password from these; the tests give it explicitly or not at all."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent/pgpass")


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresServer]:
    yield from running_server()


def rows(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url, password=PASSWORD, connect_timeout=5) as conn:
        return [(int(r[0]), str(r[1])) for r in conn.execute("SELECT id, note FROM t ORDER BY id")]


def write_rows(url: str, notes: list[str]) -> None:
    with psycopg.connect(url, password=PASSWORD, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id serial PRIMARY KEY, note text NOT NULL)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO t (note) VALUES (%s)", [(n,) for n in notes])
    # The connection block committed: the commit returned, so it is durable now.


def test_tcp_needs_the_password(pg_url):
    assert PASSWORD not in pg_url and pg_url.startswith("postgresql://vmsh@127.0.0.1:")
    with psycopg.connect(pg_url, password=PASSWORD, connect_timeout=5) as conn:
        user, host = conn.execute("SELECT current_user, inet_server_addr()::text").fetchone()  # type: ignore[misc]
    assert user == "vmsh" and host.startswith("127.0.0.1")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(pg_url, connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_url, password="not-the-secret", connect_timeout=5)


def test_durability_settings_are_the_defaults(postgres_server):
    with psycopg.connect(postgres_server.admin_url) as conn:
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (["fsync", "synchronous_commit", "full_page_writes", "max_connections"],),
            ).fetchall()
        )
    assert settings == {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on", "max_connections": "200"}


def test_each_test_gets_a_fresh_database_owned_by_vmsh(pg_url, pg_env, postgres_server):
    assert pg_env == {"VMSH_STORE": pg_url, "VMSH_STORE_PASSWORD": PASSWORD}
    assert pg_url != postgres_server.url
    with psycopg.connect(pg_url, password=PASSWORD) as conn:
        owner, tables = conn.execute(
            "SELECT pg_get_userbyid(datdba), (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')"
            " FROM pg_database WHERE datname = current_database()"
        ).fetchone()  # type: ignore[misc]
        conn.execute("CREATE TABLE mine (x int)")  # the owner may create in it
    assert owner == "vmsh" and tables == 0


def test_database_names_are_sanitised_and_unique():
    a, b = database_name("test_x[Ünï-cöde/../ 1]"), database_name("test_x[Ünï-cöde/../ 1]")
    assert a != b
    long = database_name("test_" + "y" * 200)
    for name in (a, b, long):
        assert len(name) <= 63 and name.replace("_", "").isalnum() and name.isascii() and name == name.lower()


def test_stop_refuses_connections_and_start_keeps_the_data(own_server):
    url = own_server.create_database(database_name("stop"))
    write_rows(url, ["before stop"])
    own_server.stop()
    assert not own_server.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, password=PASSWORD, connect_timeout=5)
    own_server.start()
    assert own_server.is_running()
    assert rows(url) == [(1, "before stop")]


def test_kill_then_start_recovers_committed_data(own_server):
    url = own_server.create_database(database_name("kill"))
    write_rows(url, [f"row {i}" for i in range(100)])
    log_size = own_server.log_file.stat().st_size
    own_server.kill()  # no shutdown checkpoint: only the WAL has these rows
    assert not own_server.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, password=PASSWORD, connect_timeout=5)
    own_server.start()
    assert rows(url) == [(i + 1, f"row {i}") for i in range(100)]
    with open(own_server.log_file, encoding="utf-8") as log:
        log.seek(log_size)
        assert "automatic recovery in progress" in log.read()  # it really crashed


def test_restart_keeps_the_port_and_the_url(own_server):
    url = own_server.create_database(database_name("restart"))
    write_rows(url, ["x"])
    port = own_server.port
    own_server.restart()
    assert own_server.port == port and rows(url) == [(1, "x")]


def test_a_server_that_cannot_start_says_why():
    require_postgres()
    server = PostgresServer(new_base_dir())
    try:
        server.start()
        server.stop()
        with open(server.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("shared_buffers = 'plenty'\n")
        with pytest.raises(PostgresError, match="(?s)pg_ctl start failed.*shared_buffers") as failure:
            server.start()
        assert str(server.log_file) in str(failure.value)
    finally:
        server.cleanup()
    assert not server.base_dir.exists()


def test_without_postgres_ci_fails_instead_of_skipping(monkeypatch):
    import tests.cluster.pg_fixtures as cluster_conftest

    monkeypatch.setattr(cluster_conftest, "find_bin_dir", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="ensure-tools.sh"):
        require_postgres()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_postgres()
