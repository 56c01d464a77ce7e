"""A real PostgreSQL server for the cluster tests, in its own temp folder.

`PostgresServer(base_dir)` runs the installed server binaries (initdb, pg_ctl, postgres:
the newest /usr/lib/postgresql/<version>/bin, else PATH) on a free TCP port of 127.0.0.1,
its Unix socket inside `base_dir`. Durability settings are the server's defaults (fsync,
synchronous_commit, full_page_writes all on): the tests stop, kill and restart it and
expect committed data back.

Authentication: over the Unix socket, trust (the superuser `postgres`, `admin_url`); over
TCP, scram-sha-256, so the role `vmsh` needs its password `PASSWORD` there (`url`), as our
product reads it from VMSH_STORE_PASSWORD, never from the URL.

initdb and pg_ctl refuse to run as root: as root they run as the `postgres` user
(`runuser -u postgres --`), `base_dir` is chowned to it, and every parent of `base_dir`
must let others traverse it (`tempfile.mkdtemp(dir="/tmp")`, then chmod 0755).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

PASSWORD = "vmsh-test-secret"
ROLE = "vmsh"
DATABASE = "vmsh"
SUPERUSER = "postgres"
SERVER_USER = "postgres"  # who runs initdb and the server when we are root
HOST = "127.0.0.1"

START_TIMEOUT = 60  # s; pg_ctl -w waits this long for the server to accept connections
_SOCKET_PATH_MAX = 107  # sun_path, minus the terminating NUL
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Appended to postgresql.conf once, after initdb. Nothing here weakens durability.
_SETTINGS = """
# --- tests/cluster/postgres.py
listen_addresses = '{host}'
port = {port}
unix_socket_directories = '{socket_dir}'
max_connections = 200
shared_buffers = 32MB
password_encryption = 'scram-sha-256'
logging_collector = off
log_connections = off
fsync = on
synchronous_commit = on
full_page_writes = on
"""


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


class PostgresError(RuntimeError):
    """The server did not initialise, start or stop; the message has the log's tail."""


def find_bin_dir() -> Path | None:
    """The folder with initdb, pg_ctl and postgres: the newest /usr/lib/postgresql/*/bin,
    else the one on PATH; None when there is none."""

    def complete(folder: Path) -> bool:
        return all(os.access(folder / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres"))

    def version(folder: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", folder.parent.name)) or (0,)

    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for folder in installed:
        if complete(folder):
            return folder
    on_path = shutil.which("initdb")
    if on_path is not None:
        folder = Path(on_path).resolve().parent
        if complete(folder):
            return folder
    return None


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, which nobody may reap in a container, is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


class PostgresServer:
    """One PostgreSQL cluster under `base_dir` (created if missing; `cleanup()` removes it).

    `start()` initialises it on first use (role `vmsh` with `PASSWORD`, database `vmsh`),
    then starts it and waits until it accepts connections; `stop(mode)`, `kill()` (SIGKILL,
    a crash: the next start recovers from the WAL), `freeze()`/`thaw()` (SIGSTOP/SIGCONT
    of every server process: a hung server), `restart()`, `is_running()`,
    `create_database(name) -> url`. `url` is the `vmsh` database over TCP as role `vmsh`
    (password separate: `password`); `admin_url` the superuser over the Unix socket.
    """

    def __init__(self, base_dir: Path, bin_dir: Path | None = None) -> None:
        found = bin_dir or find_bin_dir()
        if found is None:
            raise PostgresNotFound(
                "no PostgreSQL server binaries (initdb, pg_ctl, postgres) under "
                "/usr/lib/postgresql/*/bin or on PATH: run scripts/ensure-tools.sh"
            )
        self.bin_dir = found
        self.base_dir = Path(base_dir).resolve()
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.log_file = self.base_dir / "server.log"
        self.host = HOST
        self.port = self._configured_port()  # chosen at the first start, then kept (URLs stay valid)
        self.password = PASSWORD
        self.role = ROLE
        self._as_root = os.geteuid() == 0
        socket_path = self.socket_dir / ".s.PGSQL.65535"
        if len(str(socket_path)) > _SOCKET_PATH_MAX:
            raise PostgresError(f"{self.base_dir}: too long a path for a Unix socket ({socket_path})")

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """The `vmsh` database over TCP as role `vmsh` (needs `password`)."""
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        return f"postgresql://{ROLE}@{self.host}:{self.port}/{database}"

    @property
    def admin_url(self) -> str:
        """The superuser over the Unix socket (trust: no password)."""
        return f"postgresql://{SUPERUSER}@/postgres?host={self.socket_dir}&port={self.port}"

    @property
    def version(self) -> str:
        return self._run([str(self.bin_dir / "postgres"), "--version"]).stdout.strip()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Initialise on first use, start, wait until it accepts connections (idempotent)."""
        if self.is_running():
            return
        first = not (self.data_dir / "PG_VERSION").exists()
        if first:
            self._initdb()
        else:
            self._remove_stale_locks()
        self._pg_ctl_start(may_move_port=first)
        if first:
            self._create_role_and_database()

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m mode` (smart, fast or immediate) and wait until it is down."""
        if not self.is_running():
            return
        result = self._run(self._pg_ctl("stop", "-m", mode, "-w", "-t", str(START_TIMEOUT)), check=False)
        if result.returncode != 0 or self.is_running():
            raise PostgresError(self._failure(f"pg_ctl stop -m {mode} failed", result))

    def kill(self) -> None:
        """SIGKILL the postmaster and every process it started: a crash, no shutdown
        checkpoint. The next `start()` replays the WAL."""
        pid = self._postmaster_pid()
        if pid is None or not _process_alive(pid):
            return
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_process_alive(p) for p in (pid, *children)):
            if time.monotonic() > deadline:
                raise PostgresError(f"postmaster {pid} or a child still runs 10 s after SIGKILL")
            time.sleep(0.01)

    def freeze(self) -> list[int]:
        """SIGSTOP the postmaster, then every process it started: a hung server (a stalled
        VM, a storage freeze). The kernel still completes TCP handshakes on its port and
        buffers what clients send, but nothing answers. Returns the pids stopped; `thaw()`
        undoes it (always thaw in a `finally`: a frozen server cannot be stopped)."""
        pid = self._postmaster_pid()
        if pid is None or not _process_alive(pid):
            raise PostgresError(f"PostgreSQL in {self.base_dir}: not running, nothing to freeze")
        os.kill(pid, signal.SIGSTOP)  # first: a stopped postmaster forks no new child
        stopped = [pid]
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
                stopped.append(child)
        return stopped

    def thaw(self) -> None:
        """SIGCONT the postmaster and every process it started (a no-op when not frozen)."""
        pid = self._postmaster_pid()
        if pid is None or not _process_alive(pid):
            return
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        pid = self._postmaster_pid()
        return pid is not None and _process_alive(pid)

    def cleanup(self) -> None:
        """Stop the server (immediate; killed if that fails) and remove `base_dir`."""
        self.thaw()  # a frozen server would never answer pg_ctl stop
        with contextlib.suppress(PostgresError):
            self.stop("immediate")
        if self.is_running():
            self.kill()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # ------------------------------------------------------------------ databases

    def create_database(self, name: str) -> str:
        """A new database owned by `vmsh`; its URL (over TCP, as `vmsh`)."""
        if not _NAME.match(name):
            raise ValueError(f"database name {name!r}: use [a-z_][a-z0-9_]*, at most 63 characters")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(ROLE))
            )
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop it, closing any session still on it."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # ------------------------------------------------------------------ internals

    def _initdb(self) -> None:
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # a half-made cluster from an interrupted start
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self._as_root:
            self._hand_to_server_user()
        result = self._run(
            [
                str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
            ],
            check=False,
        )
        if result.returncode != 0:
            raise PostgresError(self._failure("initdb failed", result))
        self.port = free_port(self.host)
        settings = _SETTINGS.format(host=self.host, port=self.port, socket_dir=self.socket_dir)
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(settings)

    def _pg_ctl_start(self, may_move_port: bool = False) -> None:
        """pg_ctl start -w. On the very first start only (no URL given out yet), a port
        someone took since free_port() chose it is replaced by another."""
        for attempt in range(3):
            offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            result = self._run(
                self._pg_ctl("start", "-w", "-t", str(START_TIMEOUT), "-l", str(self.log_file)), check=False
            )
            if result.returncode == 0 and self.is_running():
                return
            if may_move_port and attempt < 2 and "could not bind" in self._log_tail(offset):
                self._move_to_port(free_port(self.host))
                continue
            raise PostgresError(self._failure("pg_ctl start failed", result, offset))

    def _remove_stale_locks(self) -> None:
        """After kill(), the lock files name a postmaster that is dead, but in a container
        whose PID 1 reaps no orphans it stays a zombie, and PostgreSQL takes a zombie's pid
        for a live postmaster ("lock file already exists"). The process is gone (checked
        above, in is_running), so its lock files are stale, as after a host reboot."""
        for lock in (self.data_dir / "postmaster.pid", self.socket_dir / f".s.PGSQL.{self.port}.lock"):
            lock.unlink(missing_ok=True)

    def _configured_port(self) -> int:
        """The port an existing cluster under base_dir was given; 0 before initdb."""
        try:
            found = re.findall(r"(?m)^port = (\d+)$", (self.data_dir / "postgresql.conf").read_text())
        except OSError:
            return 0
        return int(found[-1]) if found else 0

    def _move_to_port(self, port: int) -> None:
        conf = self.data_dir / "postgresql.conf"
        conf.write_text(re.sub(r"(?m)^port = \d+$", f"port = {port}", conf.read_text()))
        self.port = port

    def _create_role_and_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(PASSWORD))
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(ROLE))
            )

    def _hand_to_server_user(self) -> None:
        try:
            user = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise PostgresError(
                f"initdb refuses to run as root and there is no {SERVER_USER!r} user to run it "
                "(the Debian package 'postgresql' creates one)"
            ) from None
        for parent in self.base_dir.parents:
            if not parent.stat().st_mode & 0o001:
                raise PostgresError(
                    f"{self.base_dir}: user {SERVER_USER!r} cannot enter {parent} (mode "
                    f"{parent.stat().st_mode & 0o777:o}): put base_dir under /tmp with mode 0755"
                )
        for path in (self.base_dir, self.socket_dir):
            os.chown(path, user.pw_uid, user.pw_gid)
        self.base_dir.chmod(0o755)

    def _pg_ctl(self, *args: str) -> list[str]:
        return [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        if self._as_root:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        # pg_ctl start leaves the server holding stdout/stderr unless they go to a file.
        result = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=START_TIMEOUT + 30,
            cwd=self.base_dir if self.base_dir.exists() else "/",
        )
        if check and result.returncode != 0:
            raise PostgresError(self._failure(f"{argv[-1]} failed", result))
        return result

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() else None

    def _log_tail(self, offset: int = 0, lines: int = 30) -> str:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                f.seek(offset)
                return "\n".join(f.read().splitlines()[-lines:])
        except OSError:
            return ""

    def _failure(self, what: str, result: subprocess.CompletedProcess[str], offset: int = 0) -> str:
        output = (result.stdout + result.stderr).strip()
        tail = self._log_tail(offset)
        return (
            f"PostgreSQL in {self.base_dir}: {what} (exit {result.returncode})\n{output}"
            + (f"\n--- {self.log_file} (tail) ---\n{tail}" if tail else "")
        )
