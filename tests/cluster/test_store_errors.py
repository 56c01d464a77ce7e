"""A PostgreSQL store that cannot be used says why and what to do, and never shows a secret.

Real `vmsh-scheduler` processes on a real PostgreSQL (tests/cluster/postgres.py): each way
of getting the connection wrong (the password, the role, the database, the port, a host
that never answers, TLS) gives a line naming that cause, never "couldn't get a connection
after N sec". A password planted in the environment appears on no output channel: stdout,
stderr (the JSON log), the files of the data dir, HTTP, `ctl`.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from core.sources import write_batch
from tests.integration.tsa_servers import free_port
from tests.pki import make_root, make_tls_server

from .cluster_rig import CLI, wait_until
from .pg_fixtures import running_server
from .postgres import PASSWORD, PostgresServer

PLANTED = "Pl4nted-Secret-7c1e9"
CONFIG = """\
scheduler:
  tick: 0.2
  data_dir: data
namespaces:
  "demo:a":
    source: batches
    cadence:
      fast: {target: "local:dev", every: "1s"}
"""


def run(tmp: Path, argv: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("VMSH_", "PG"))}
    return subprocess.run(
        [*CLI, *argv], env={**full, **env}, cwd=tmp, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    (tmp_path / "batches").mkdir()
    return path


def host_port(url: str) -> tuple[str, int]:
    info = psycopg.conninfo.conninfo_to_dict(url)
    return str(info["host"]), int(str(info["port"]))


def start_fails(tmp: Path, config: Path, store: str, password: str | None) -> str:
    env = {"VMSH_STORE": store, **({"VMSH_STORE_PASSWORD": password} if password else {})}
    done = run(tmp, ["--no-ui", "--config", str(config)], env)
    assert done.returncode == 2, done
    assert "couldn't get a connection" not in done.stderr
    return done.stderr


def test_a_wrong_password_names_the_user_and_the_variable(tmp_path, config, pg_url):
    err = start_fails(tmp_path, config, pg_url, "not-the-password")
    assert 'authentication failed for user "vmsh"' in err
    assert "VMSH_STORE_PASSWORD" in err and "not-the-password" not in err


def test_no_password_says_to_set_one(tmp_path, config, pg_url):
    err = start_fails(tmp_path, config, pg_url, None)
    assert 'no password given for user "vmsh"' in err and "set VMSH_STORE_PASSWORD" in err


def test_a_role_that_does_not_exist_is_named(tmp_path, config, postgres_server: PostgresServer, pg_url):
    # over the Unix socket (trust) the server says the role is missing; over TCP (scram) it
    # cannot be told from a wrong password, and the message says both
    database = pg_url.rsplit("/", 1)[1]
    store = f"postgresql://ghost@/{database}?host={postgres_server.socket_dir}&port={postgres_server.port}"
    err = start_fails(tmp_path, config, store, None)
    assert 'no role "ghost"' in err and "CREATE ROLE ghost LOGIN PASSWORD" in err
    over_tcp = start_fails(tmp_path, config, pg_url.replace("//vmsh@", "//ghost@"), "x")
    assert 'authentication failed for user "ghost"' in over_tcp and "the role does not exist" in over_tcp


def test_a_database_that_does_not_exist_says_how_to_create_it(tmp_path, config, pg_url):
    err = start_fails(tmp_path, config, pg_url.rsplit("/", 1)[0] + "/nodb", PASSWORD)
    assert 'no database "nodb"' in err and "createdb -O vmsh nodb" in err


def test_a_port_nobody_listens_on_is_named(tmp_path, config, pg_url):
    port = free_port()
    err = start_fails(tmp_path, config, f"postgresql://vmsh@127.0.0.1:{port}/vmsh", PASSWORD)
    assert f"connection refused by 127.0.0.1:{port}" in err


def test_a_host_that_never_answers_times_out_and_says_so(tmp_path, config):
    with socket.socket() as silent:  # accepts TCP (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        err = start_fails(tmp_path, config, f"postgresql://vmsh@127.0.0.1:{port}/vmsh", PASSWORD)
    assert f"timed out: no connection to 127.0.0.1:{port}" in err


def test_tls_required_by_the_url_from_a_server_without_it_is_named(tmp_path, config, pg_url):
    err = start_fails(tmp_path, config, pg_url + "?sslmode=require", PASSWORD)
    host, port = host_port(pg_url)
    assert f"{host}:{port} offers no TLS but VMSH_STORE requires it" in err


@pytest.fixture
def tls_only_server() -> Iterator[PostgresServer]:
    """A PostgreSQL of its own that lets TCP clients in over TLS only (pg_hba.conf hostssl)."""
    for server in running_server():
        issuer = make_root()
        leaf = make_tls_server(issuer)
        (server.data_dir / "server.crt").write_bytes(leaf.pem)
        key = server.data_dir / "server.key"
        key.write_bytes(leaf.key_pem)
        key.chmod(0o600)
        if os.geteuid() == 0:  # the server runs as `postgres` and must own its key
            owner = pwd.getpwnam("postgres")
            for path in (key, server.data_dir / "server.crt"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        with open(server.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        hba = server.data_dir / "pg_hba.conf"
        hba.write_text(re.sub(r"(?m)^host(\s)", r"hostssl\1", hba.read_text()))
        server.restart()
        yield server


def test_a_server_that_requires_tls_says_to_ask_for_it(tmp_path, config, tls_only_server):
    url = tls_only_server.url
    host, port = host_port(url)
    err = start_fails(tmp_path, config, url + "?sslmode=disable", PASSWORD)
    assert f'{host}:{port} requires TLS for user "vmsh"' in err and "sslmode=require" in err
    asked = run(tmp_path, ["store", "migrate", "--config", str(config)],
                {"VMSH_STORE": url + "?sslmode=require", "VMSH_STORE_PASSWORD": PASSWORD})
    assert asked.returncode == 0, asked.stderr


def test_store_migrate_names_the_cause_too(tmp_path, config, pg_url):
    done = run(tmp_path, ["store", "migrate", "--config", str(config)],
               {"VMSH_STORE": pg_url.rsplit("/", 1)[0] + "/nodb", "VMSH_STORE_PASSWORD": PASSWORD})
    assert done.returncode == 1
    assert 'no database "nodb"' in done.stderr and "couldn't get a connection" not in done.stderr


# ------------------------------------------------------------------------ no secret shown


def planted_role(server: PostgresServer, pg_url: str) -> str:
    """A role `planted` whose password is PLANTED, owning nothing but allowed into the
    test's database; its URL."""
    database = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS planted"))
        conn.execute(sql.SQL("CREATE ROLE planted LOGIN PASSWORD {}").format(sql.Literal(PLANTED)))
        conn.execute(sql.SQL("GRANT ALL ON DATABASE {} TO planted").format(sql.Identifier(database)))
    with psycopg.connect(server.admin_url.replace("/postgres?", f"/{database}?"), autocommit=True) as conn:
        conn.execute("GRANT ALL ON SCHEMA public TO planted")
    return pg_url.replace("//vmsh@", "//planted@")


def http_get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as resp:
            return str(resp.read().decode(errors="replace"))
    except OSError as exc:
        return str(exc)


def test_a_planted_password_reaches_no_output_channel(tmp_path, config, postgres_server, pg_url):
    url = planted_role(postgres_server, pg_url)
    in_url = url.replace("//planted@", f"//planted:{PLANTED}@")
    seen: list[str] = []
    # the password in the URL: refused by the scheduler, check-config, ctl and store migrate
    for argv in (["--no-ui"], ["check-config"], ["ctl", "status"], ["store", "migrate"]):
        done = run(tmp_path, ["--config", str(config), *argv], {"VMSH_STORE": in_url, "LOG_LEVEL": "DEBUG"})
        assert done.returncode != 0, (argv, done)
        assert argv[0] == "ctl" or "holds a password" in done.stderr, (argv, done.stderr)
        seen += [done.stdout, done.stderr]
    # a wrong one (the planted one, for another role)
    done = run(tmp_path, ["--no-ui", "--config", str(config)],
               {"VMSH_STORE": pg_url, "VMSH_STORE_PASSWORD": PLANTED, "LOG_LEVEL": "DEBUG"})
    assert done.returncode == 2
    seen += [done.stdout, done.stderr]
    # the right one: a scheduler that runs, anchors, answers HTTP and ctl, and stops
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("VMSH_", "PG"))},
           "VMSH_STORE": url, "VMSH_STORE_PASSWORD": PLANTED, "LOG_LEVEL": "DEBUG", "METRICS_PORT": str(port)}
    write_batch(tmp_path / "batches", "0001", "sha256:" + "ab" * 32)
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*CLI, "--no-ui", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=tmp_path)
    try:
        wait_until(lambda: "anchored" in log.read_text(errors="replace"), 60, "a receipt")
        for path in ("/health", "/readyz", "/metrics", "/status"):
            seen.append(http_get(port, path))
        ctl = run(tmp_path, ["--config", str(config), "ctl", "status", "--json"], {"VMSH_STORE": url})
        assert ctl.returncode == 0, ctl
        seen += [ctl.stdout, ctl.stderr]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_socket():
            seen.append(path.read_text(errors="replace"))
    assert any("anchored" in text for text in seen)
    leaks = [text[max(0, text.find(PLANTED) - 200):text.find(PLANTED) + 50] for text in seen if PLANTED in text]
    assert leaks == []
