"""Real scheduler processes (`vmsh-scheduler --no-ui`) on one real PostgreSQL store and one
real RFC 3161 TSA (OpenSSL's `openssl ts -reply` over HTTP on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from core.sources import write_batch
from tests.integration.tsa_servers import OpenSSLTSA, free_port

from .postgres import PASSWORD

# The `vmsh-scheduler` command (cli.main:main), from this checkout.
CLI = [sys.executable, "-m", "cli"]


def root(ns: str, n: int) -> str:
    return "sha256:" + hashlib.sha256(f"{ns}-{n}".encode()).hexdigest()


class ClusterRig:
    """N replicas of one config on one database; batches in one folder they all read."""

    def __init__(
        self, tmp: Path, url: str, tsa: OpenSSLTSA, namespaces: list[str], *, every: str = "2s",
        lease: float = 3.0, tick: float = 0.5, target: str = "rfc3161:tsa", extra_targets: str = "",
    ) -> None:
        self.tmp = tmp
        self.url = url
        self.tsa = tsa
        self.namespaces = namespaces
        self.batches = tmp / "batches"
        self.published: dict[str, list[tuple[str, float]]] = {ns: [] for ns in namespaces}  # (root, at)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.generation: dict[str, int] = {}
        lines = [
            "scheduler:",
            f"  tick: {tick}",
            "  data_dir: data",
            f"  lease: {lease}",
            "  base_backoff: 0.5",
            "  max_backoff_level: 3",
            "targets:",
            "  rfc3161:",
            "    tsa:",
            f"      url: {tsa.url('/tsa')}",
            f"      trust_bundle: {tsa.pki.path('bundle.pem')}",
            extra_targets,
            "namespaces:",
        ]
        for ns in namespaces:
            lines += [f'  "{ns}":', f"    source: {self.batches / ns}", "    cadence:", "      fast:",
                      f'        target: "{target}"', f'        every: "{every}"']
        self.config = tmp / "config.yaml"
        self.config.write_text("\n".join(line for line in lines if line) + "\n")

    # ----- batches

    def publish(self, ns: str) -> str:
        n = len(self.published[ns]) + 1
        value = root(ns, n)
        write_batch(self.batches / ns, f"{n:06d}", value)
        self.published[ns].append((value, time.monotonic()))
        return value

    # ----- replicas

    def migrate(self) -> subprocess.CompletedProcess[str]:
        """`vmsh-scheduler store migrate`, as an operator (or an init container) runs it."""
        env = {**os.environ, "VMSH_STORE": self.url, "VMSH_STORE_PASSWORD": PASSWORD}
        return subprocess.run(
            [*CLI, "store", "migrate", "--config", str(self.config)], env=env, cwd=self.tmp,
            capture_output=True, text=True, timeout=60,
        )

    def env(self, name: str) -> dict[str, str]:
        return {
            **os.environ, "VMSH_STORE": self.url, "VMSH_STORE_PASSWORD": PASSWORD,
            "VMSH_DATA_DIR": str(self.tmp / f"data-{name}"), "METRICS_PORT": str(self.ports[name]),
            "LOG_LEVEL": "INFO",
        }

    def start(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start replica `name`; `env`: more environment (libfaketime's, for one)."""
        self.ports.setdefault(name, free_port())
        n = self.generation[name] = self.generation.get(name, 0) + 1
        log = open(self.tmp / f"{name}-{n}.log", "wb")  # noqa: SIM115 (the process owns it)
        proc = subprocess.Popen(
            [*CLI, "--no-ui", "--config", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
            env={**self.env(name), **(env or {})}, cwd=self.tmp,
        )
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("*.log")))

    def http(self, name: str, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}{path}", timeout=3) as resp:
                body = resp.read()
                return resp.status, json.loads(body) if body.startswith(b"{") else body.decode()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            return exc.code, json.loads(body) if body.startswith(b"{") else body.decode()
        except OSError:
            return 0, None

    # ----- what the store holds

    def receipts(self) -> list[tuple[str, str, str, str]]:
        """(namespace, cadence, batch root, anchored root) of every receipt."""
        with psycopg.connect(self.url, password=PASSWORD) as conn:
            return [tuple(r) for r in conn.execute(
                "SELECT namespace, cadence, batch_root, anchored_root FROM receipts"
            )]

    def doubles(self) -> list[tuple[str, str, str]]:
        seen: dict[tuple[str, str, str], int] = {}
        for ns, cadence, batch_root, _ in self.receipts():
            seen[(ns, cadence, batch_root)] = seen.get((ns, cadence, batch_root), 0) + 1
        return [k for k, n in seen.items() if n > 1]

    def explain_doubles(self) -> str:
        """For a failure message: each double's receipts (writer, name, tree) and log lines."""
        out = []
        with psycopg.connect(self.url, password=PASSWORD) as conn:
            for ns, cadence, batch_root in self.doubles():
                rows = conn.execute(
                    "SELECT written_by, name, anchored_root FROM receipts WHERE namespace = %s AND cadence = %s "
                    "AND batch_root = %s", (ns, cadence, batch_root),
                ).fetchall()
                out.append(f"{ns}/{cadence} {batch_root[:19]}: {rows}")
                out += [line[:400] for line in self.logs().splitlines() if f'{ns}/' in line or "taken over" in line
                        or "taking over" in line][-30:]
        return "\n".join(out)

    def anchored_latest(self) -> set[str]:
        """The namespaces whose latest published root has a receipt."""
        have = {(ns, batch_root) for ns, _, batch_root, _ in self.receipts()}
        return {ns for ns, roots in self.published.items() if roots and (ns, roots[-1][0]) in have}


def wait_until(predicate, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
