"""A real scheduler stack for the observability and reload tests.

`stack(...)` writes a config file into a tmp folder, loads it with the real loader,
builds a real Runtime (embedded `local:` TSA, real state, journal and receipts) on a
FakeClock, attaches Metrics, starts the HTTP server on a free port and gives an httpx
client for it. Everything is torn down at the end of the test.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.clock import FakeClock
from core.config import load_config
from core.events import LogRecord
from core.jobs import safe_name
from core.observe.http import HttpServer, start_http
from core.observe.metrics import Metrics
from core.runtime import Runtime
from core.sources import write_batch

CONFIG_HEAD = """\
scheduler:
  tick: 1.0
  data_dir: data
  base_backoff: 5.0
  stale_factor: {stale_factor}
http:
  listen: "127.0.0.1:0"
targets:
  local:
    dev: {{}}
"""


def namespaces_yaml(namespaces: dict[str, dict[str, str]], *, unchanged: bool = True) -> str:
    """{"a": {"fast": "10s", "strong": "3*fast"}} -> the `namespaces:` section."""
    lines = ["namespaces:"]
    for name, cadences in namespaces.items():
        lines.append(f'  "{name}":')
        lines.append("    cadence:")
        for cadence, every in cadences.items():
            lines.append(f"      {cadence}:")
            lines.append('        target: "local:dev"')
            lines.append(f'        every: "{every}"')
            lines.append(f"        anchor_unchanged: {'true' if unchanged else 'false'}")
    return "\n".join(lines) + "\n"


def config_text(namespaces: dict[str, dict[str, str]], *, stale_factor: float = 2.0, unchanged: bool = True) -> str:
    return CONFIG_HEAD.format(stale_factor=stale_factor) + namespaces_yaml(namespaces, unchanged=unchanged)


def root(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def replace_file(path: Path, text: str) -> None:
    """Save as editors do: write a temp file beside it, then rename it over the original."""
    tmp = path.with_name(f".{path.name}.swp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def parse_samples(text: str, parser: Callable[[str], Any] = text_string_to_metric_families) -> dict:
    """{(sample name, frozenset(labels)): value} of an exposition, via prometheus' parser."""
    out = {}
    for family in parser(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` (sync or async) until it returns a truthy value, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


@dataclass
class Stack:
    tmp: Path
    config_path: Path
    clock: FakeClock
    runtime: Runtime
    metrics: Metrics
    server: HttpServer
    client: httpx.AsyncClient
    logs: list[LogRecord] = field(default_factory=list)

    @property
    def engine(self):
        return self.runtime.engine

    def batch(self, namespace: str, n: int) -> None:
        write_batch(self.tmp / "data" / "batches" / safe_name(namespace), str(n), root(n), name=f"{n:06d}.json")

    def bad_batch(self, namespace: str, n: int) -> None:
        (self.tmp / "data" / "batches" / safe_name(namespace) / f"{n:06d}.json").write_text("{not json")

    async def anchor_pass(self) -> None:
        await self.engine.run_once()

    async def scrape(self, accept: str | None = None) -> tuple[httpx.Response, dict]:
        headers = {"Accept": accept} if accept else {}
        response = await self.client.get("/metrics", headers=headers)
        assert response.status_code == 200
        return response, parse_samples(response.text)

    async def health(self) -> tuple[int, dict]:
        response = await self.client.get("/health")
        return response.status_code, response.json()


@pytest.fixture
async def stack(tmp_path: Path):
    """`await stack(namespaces, ...)` -> a running Stack; closed at the end of the test."""
    made: list[Stack] = []

    async def make(
        namespaces: dict[str, dict[str, str]] | None = None,
        *,
        text: str | None = None,
        stale_factor: float = 2.0,
        unchanged: bool = True,
        batches: bool = True,
    ) -> Stack:
        namespaces = namespaces or {"a": {"fast": "10s"}}
        config_path = tmp_path / "config.yaml"
        if not config_path.exists() or text is not None:
            config_path.write_text(text or config_text(namespaces, stale_factor=stale_factor, unchanged=unchanged))

        def loader():
            return load_config(config_path, env={}, cwd=tmp_path)

        clock = FakeClock()
        runtime = Runtime(loader(), loader=loader, clock=clock, rng=random.Random(7))
        logs: list[LogRecord] = []
        runtime.bus.subscribe(lambda e: logs.append(e) if isinstance(e, LogRecord) else None)
        metrics = Metrics(runtime.bus, engine=runtime.engine, receipts=runtime.receipts)
        server = await start_http(runtime, metrics)
        client = httpx.AsyncClient(base_url=server.url, timeout=5.0)
        s = Stack(tmp_path, config_path, clock, runtime, metrics, server, client, logs)
        if batches:
            for name in runtime.engine.jobs:
                if not (tmp_path / "data" / "batches" / safe_name(name.namespace)).exists():
                    s.batch(name.namespace, 1)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.client.aclose()
        await s.server.close()
        s.metrics.close()
        await s.engine.settle()
        s.engine.flush()
        await s.runtime.close()


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
def obs():
    """The helpers above, for test modules (test folders are not packages here)."""
    return SimpleNamespace(
        parse_samples=parse_samples,
        value=value,
        eventually=eventually,
        replace_file=replace_file,
        config_text=config_text,
        namespaces_yaml=namespaces_yaml,
        root=root,
    )
