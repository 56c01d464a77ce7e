"""A job disabled for a chain id mismatch anchors on chain once a reload corrects the
chainId: a real Runtime from a real config file, a real ganache node, a FakeClock."""

from __future__ import annotations

import random

import pytest

from core.clock import FakeClock
from core.config import load_config
from core.events import AnchorFailed, ReceiptWritten
from core.jobs import JobKey, safe_name
from core.runtime import Runtime
from core.sources import write_batch
from core.status import JobStatus
from tests.integration.ganache import ADDRESSES, KEYS, Ganache

CONFIG = """\
scheduler:
  tick: 1.0
  data_dir: data
http:
  listen: "127.0.0.1:0"
targets:
  eip155:
    default: {{rpcUrl: "{url}", chainId: {chain_id}, keyEnv: H5B_TEST_EVM_KEY, confirmations: 0}}
namespaces:
  a:
    cadence:
      fast: {{target: "eip155:1337", every: "10s"}}
"""
JOB = JobKey("a", "fast")


@pytest.fixture
def node(tmp_path):
    g = Ganache(tmp_path).start()
    yield g
    g.stop()


async def test_a_reload_that_fixes_the_chain_id_enables_the_job_and_it_anchors(node, tmp_path, monkeypatch):
    monkeypatch.setenv("H5B_TEST_EVM_KEY", KEYS[0])
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(url=node.url, chain_id=8453))  # the settings name another chain
    write_batch(tmp_path / "data" / "batches" / safe_name("a"), "1", "sha256:" + "ab" * 32)

    def load():
        return load_config(config, env={}, cwd=tmp_path)

    clock = FakeClock()
    runtime = Runtime(load(), loader=load, clock=clock, rng=random.Random(7))
    events: list = []
    runtime.bus.subscribe(events.append)
    engine = runtime.engine
    try:
        sent = node.nonce(ADDRESSES[0], "latest")
        for _ in range(3):
            await engine.run_once()
            clock.advance(10)
        view = engine.view(JOB)
        assert view.status == JobStatus.DISABLED and "chainId is 8453, not 1337" in (view.disabled or "")
        assert node.nonce(ADDRESSES[0], "latest") == sent  # nothing went to the chain

        config.write_text(CONFIG.format(url=node.url, chain_id=1337))
        assert runtime.reload().applied
        assert engine.view(JOB).status == JobStatus.DUE
        await engine.run_once()
        [written] = [e for e in events if isinstance(e, ReceiptWritten)]
        assert written.job == JOB and written.target == "eip155:1337"
        assert node.nonce(ADDRESSES[0], "latest") == sent + 1  # one transaction, on chain 1337
        assert [e for e in events if isinstance(e, AnchorFailed)] == []
        assert engine.view(JOB).status == JobStatus.OK
    finally:
        await engine.settle()
        engine.flush()
        await runtime.close()
