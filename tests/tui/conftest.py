"""A dashboard on a real Runtime: tmp config, fixed batches, the embedded TSA, a FakeClock."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")

from core.clock import FakeClock  # noqa: E402
from core.config import load_config  # noqa: E402
from core.jobs import safe_name  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from core.sources import write_batch  # noqa: E402

NAMESPACES = {
    "dao:vaultmesh": {"fast": "60s", "strong": "5*fast"},
    "fin:clearing": {"fast": "120s"},
    "ops:metrics": {"fast": "30s"},
}


def root(n: int) -> str:
    return "sha256:" + hashlib.sha256(f"batch-{n}".encode()).hexdigest()


def screen_text(app) -> str:
    """The characters on the app's screen, as an operator would read them."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(segment.text for segment in strip) for strip in strips)


# Real target names as operators have them (what 80 columns must fit); nothing listens at
# these addresses, so anchors to them fail at once and back off.
REMOTE_TARGETS = [
    "  rfc3161:",
    "    freetsa:",
    "      url: http://127.0.0.1:9/tsr",
    "  eip155:",
    '    "11155111":',
    "      rpcUrl: http://127.0.0.1:9/",
    "      chainId: 11155111",
    "      key_env: VMSH_TEST_NO_SUCH_KEY",
]


def config_text(namespaces: dict[str, dict[str, str]], *, extra: str = "") -> str:
    """A cadence is `every` ("60s") or `every@target` ("30s@rfc3161:freetsa")."""
    remote = any("@" in every for cadences in namespaces.values() for every in cadences.values())
    lines = [
        "scheduler:",
        "  tick: 5.0",
        "  data_dir: data",
        "  base_backoff: 5.0",
        "  max_backoff_level: 7",
        "log:",
        "  level: INFO",
        "targets:",
        "  local:",
        "    dev: {}",
        *(REMOTE_TARGETS if remote else []),
        "namespaces:",
    ]
    for ns, cadences in namespaces.items():
        lines += [f'  "{ns}":', f'    description: "{ns} for tests"', "    witnesses:",
                  "      min_required: 1", '      allowlist: ["did:vm:arbiter:test"]',
                  "    schema_policy:", '      allow: ["ledger.append@1.0.x"]', "    cadence:"]
        for cadence, spec in cadences.items():
            every, _, target = spec.partition("@")
            lines += [f"      {cadence}:", f'        target: "{target or "local:dev"}"', f'        every: "{every}"',
                      "        anchor_unchanged: true"]
    return "\n".join(lines) + "\n" + extra


class World:
    """A config file, its batches, and a Runtime on a FakeClock, like `make run` but in tmp."""

    def __init__(self, tmp: Path, namespaces=None, extra: str = "", no_batches=()) -> None:
        self.tmp = tmp
        self.clock = FakeClock()
        self.config_path = tmp / "config.yaml"
        self.write_config(namespaces or NAMESPACES, extra=extra, no_batches=no_batches)
        self.runtime = Runtime(self.load(), loader=self.load, clock=self.clock, rng=random.Random(7))

    def write_config(self, namespaces, *, extra: str = "", no_batches=()) -> None:
        self.config_path.write_text(config_text(namespaces, extra=extra))
        for n, ns in enumerate(namespaces, 1):
            folder = self.tmp / "data" / "batches" / safe_name(ns)
            if not folder.exists() and ns not in no_batches:
                write_batch(folder, f"{n:06d}", root(n))

    def load(self):
        return load_config(self.config_path, env={}, cwd=self.tmp)

    def receipt_count(self) -> int:
        return len(self.runtime.receipts.all_paths())

    def app(self, **kw):
        from tui.app import VaultMeshApp
        from tui.host import InProcessHost

        host = InProcessHost(self.runtime, start_engine=kw.pop("start_engine", False), grace=kw.pop("grace", 2.0))
        kw.setdefault("env", {"COLORTERM": "truecolor"})
        return VaultMeshApp(host, **kw)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def gate_anchors(world: World, monkeypatch) -> asyncio.Event:
    """Hold the real embedded TSA's anchors at a gate until it is set (jobs stay in flight)."""
    backend = world.runtime.backends("local:dev")
    gate, real_anchor = asyncio.Event(), backend.anchor

    async def gated_anchor(*args, **kwargs):
        await gate.wait()
        return await real_anchor(*args, **kwargs)

    monkeypatch.setattr(backend, "anchor", gated_anchor)
    return gate


async def actions_done(app) -> None:
    """Wait for the workers an action started (verify, reload), not the run's own worker,
    which lasts until quit."""
    await app.workers.wait_for_complete([w for w in app.workers if w.group != "run"])
