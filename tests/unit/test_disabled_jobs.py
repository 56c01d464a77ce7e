"""Jobs that can never run (their target is refused: a `btc:` target without a key, a chain id mismatch)
are `disabled` with their reason, everywhere a person looks: the engine's view, /health,
/metrics, check-config. They are not retried, not backed off and not an outage; a reload
that accepts their target enables them.

A real Runtime from a real config file, on a FakeClock, with the real HTTP server on
127.0.0.1 and the embedded `local:` TSA for the jobs that do run.
"""

from __future__ import annotations

import random
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cli.main import main
from core.clock import FakeClock
from core.config import load_config
from core.events import AnchorFailed, AnchorStarted, BackoffChanged, ReceiptWritten
from core.jobs import JobKey, safe_name
from core.observe.http import start_http
from core.observe.metrics import Metrics
from core.runtime import Runtime
from core.sources import write_batch
from core.status import JobStatus

CONFIG = """\
scheduler:
  tick: 1.0
  data_dir: data
  base_backoff: 5.0
http:
  listen: "127.0.0.1:0"
targets:
  local:
    dev: {{}}
  btc:
    mainnet: {{rpcUrl: "http://127.0.0.1:9/", network: mainnet}}
  eip155:
    default: {{rpcUrl: "http://127.0.0.1:9/", chainId: {chain_id}, keyEnv: NO_SUCH_KEY_VARIABLE}}
namespaces:
  a:
    cadence:
      fast: {{target: "local:dev", every: "10s"}}
      strong: {{target: "btc:mainnet", every: "3*fast"}}
  b:
    cadence:
      fast: {{target: "eip155:1", every: "10s"}}
"""
A_FAST, A_STRONG, B_FAST = JobKey("a", "fast"), JobKey("a", "strong"), JobKey("b", "fast")
BTC_REASON = "needs a signing key (key, keyEnv or keyFile) to anchor"


class Stack:
    """Runtime + Metrics + HTTP server over `config.yaml` in `tmp`."""

    def __init__(self, tmp: Path, chain_id: int = 8453) -> None:
        self.tmp = tmp
        self.config = tmp / "config.yaml"
        self.write(chain_id)
        for ns in ("a", "b"):
            write_batch(tmp / "data" / "batches" / safe_name(ns), "1", "sha256:" + "1" * 64)
        self.clock = FakeClock()
        self.runtime = Runtime(self.load(), loader=self.load, clock=self.clock, rng=random.Random(7))
        self.engine = self.runtime.engine
        self.events: list = []
        self.runtime.bus.subscribe(self.events.append)
        self.metrics = Metrics(self.runtime.bus, engine=self.engine, receipts=self.runtime.receipts)

    def write(self, chain_id: int) -> None:
        self.config.write_text(CONFIG.format(chain_id=chain_id))

    def load(self):
        return load_config(self.config, env={}, cwd=self.tmp)

    def of(self, kind, key: JobKey | None = None) -> list:
        return [e for e in self.events if isinstance(e, kind) and (key is None or getattr(e, "job", None) == key)]

    async def passes(self, n: int, step: float = 10.0) -> None:
        for _ in range(n):
            await self.engine.run_once()
            self.clock.advance(step)
        await self.engine.run_once()

    async def __aenter__(self) -> Stack:
        self.server = await start_http(self.runtime, self.metrics)
        self.client = httpx.AsyncClient(base_url=self.server.url, timeout=5.0)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.aclose()
        await self.server.close()
        self.metrics.close()
        await self.engine.settle()
        self.engine.flush()
        await self.runtime.close()


def samples(text: str, name: str) -> list[dict[str, str]]:
    """The label sets of every sample named `name` (value 1 asserted) in an exposition."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                assert s.value == 1
                out.append(dict(s.labels))
    return out


async def test_a_refused_job_is_disabled_with_its_reason_and_never_attempted(tmp_path):
    async with Stack(tmp_path) as st:
        await st.passes(12)  # two minutes of passes: the btc job would have failed each time
        btc, mismatch, ok = st.engine.view(A_STRONG), st.engine.view(B_FAST), st.engine.view(A_FAST)
        assert btc.status == JobStatus.DISABLED and BTC_REASON in (btc.disabled or "")
        assert mismatch.status == JobStatus.DISABLED and "chainId is 8453, not 1" in (mismatch.disabled or "")
        assert ok.status == JobStatus.OK and ok.disabled is None
        assert btc.due_at is None and btc.state.backoff_level == 0 and btc.state.failures == 0
        assert st.of(AnchorFailed) == [] and st.of(BackoffChanged) == []
        assert [e.target for e in st.of(AnchorStarted)] == ["local:dev"]  # a/fast only, once
        assert len(st.of(ReceiptWritten, A_FAST)) == 1
        assert st.engine.force(A_STRONG) is False  # forcing it cannot run it either
        await st.engine.run_once()
        assert st.of(AnchorFailed) == []


async def test_health_is_healthy_and_lists_the_disabled_jobs_with_their_reasons(tmp_path):
    async with Stack(tmp_path) as st:
        await st.passes(12)
        response = await st.client.get("/health")
        body = response.json()
        assert (response.status_code, body["status"]) == (200, "healthy")
        assert body["namespaces"]["a"]["status"] == "ok"
        assert body["namespaces"]["a"]["backoff"] == 0
        assert list(body["namespaces"]["a"]["disabled"]) == ["strong"]
        assert BTC_REASON in body["namespaces"]["a"]["disabled"]["strong"]
        assert "chainId is 8453" in body["namespaces"]["b"]["disabled"]["fast"]


async def test_metrics_export_the_disabled_jobs_with_their_reasons_and_no_backoff(tmp_path):
    async with Stack(tmp_path) as st:
        await st.passes(12)
        text = (await st.client.get("/metrics")).text
        disabled = samples(text, "vmsh_job_disabled")
        assert sorted((d["namespace"], d["cadence"], d["target"]) for d in disabled) == [
            ("a", "strong", "btc:mainnet"), ("b", "fast", "eip155:1"),
        ]
        assert BTC_REASON in next(d["reason"] for d in disabled if d["cadence"] == "strong")
        assert 'vmsh_backoff_state{cadence="strong",namespace="a"} 0.0' in text
        assert 'vmsh_anchors_failed_total{cadence="strong",namespace="a",target="btc:mainnet"} 0.0' in text


async def test_a_reload_that_fixes_the_chain_id_enables_the_job(tmp_path):
    async with Stack(tmp_path) as st:
        await st.passes(3)
        assert st.engine.view(B_FAST).status == JobStatus.DISABLED
        st.write(chain_id=1)  # the target's settings now say chain 1, as the job asks
        result = st.runtime.reload()
        assert result.applied, result
        view = st.engine.view(B_FAST)
        assert view.status == JobStatus.DUE and view.disabled is None
        assert view.due_at is not None and view.due_at <= st.clock.now()
        assert st.engine.view(A_STRONG).status == JobStatus.DISABLED  # btc stays refused
        text = (await st.client.get("/metrics")).text
        assert [d["namespace"] for d in samples(text, "vmsh_job_disabled")] == ["a"]
        # ...and back: a reload that refuses it again disables it, with no failure.
        st.write(chain_id=8453)
        assert st.runtime.reload().applied
        assert st.engine.view(B_FAST).status == JobStatus.DISABLED
        await st.passes(3)
        assert st.of(AnchorFailed, B_FAST) == []


async def test_a_reload_that_accepts_the_target_makes_the_job_anchor(tmp_path):
    """The engine's side of a reload: `apply` with a target guard that accepts the target
    schedules the job at once and it anchors (to the embedded TSA here)."""
    async with Stack(tmp_path) as st:
        engine, loaded = st.engine, st.runtime.loaded
        jobs = [j for j in loaded.config.jobs() if j.key == A_FAST]
        engine.apply(jobs, "refused", target_guard=lambda target: "chain id 8453 is not 1")
        await st.passes(3)
        assert engine.view(A_FAST).status == JobStatus.DISABLED
        assert st.of(ReceiptWritten) == [] and st.of(AnchorFailed) == []
        engine.apply(jobs, "accepted", target_guard=lambda target: None)
        await engine.run_once()
        assert [str(e.job) for e in st.of(ReceiptWritten)] == ["a/fast"]
        assert engine.view(A_FAST).status == JobStatus.OK


def test_check_config_says_disabled_with_the_reason(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(CONFIG.format(chain_id=8453))
    assert main(["check-config", "--config", str(tmp_path / "config.yaml")]) == 0
    out = capsys.readouterr().out
    [btc] = [line for line in out.splitlines() if line.strip().startswith("a/strong")]
    assert "disabled: btc target btc:mainnet" in btc and BTC_REASON in btc
    [mismatch] = [line for line in out.splitlines() if line.strip().startswith("b/fast")]
    assert "disabled: target eip155:1 resolves to eip155.default whose chainId is 8453, not 1" in mismatch
    assert "REFUSED" not in out


async def test_a_backing_off_job_that_a_reload_disables_drops_its_backoff(tmp_path):
    """A job failing on a target that a new config refuses stops failing: it is disabled,
    its backoff goes to 0 (metrics and /health too) and no retry follows."""
    async with Stack(tmp_path) as st:
        engine, jobs = st.engine, st.runtime.loaded.config.jobs()
        engine.apply(jobs, "no guard", target_guard=lambda target: None)  # btc is attempted
        await st.passes(3, step=60.0)
        assert engine.view(A_STRONG).state.backoff_level >= 2 and st.of(AnchorFailed, A_STRONG)
        engine.apply(jobs, "guarded", target_guard=st.runtime.loaded.config.target_mismatch)
        view = engine.view(A_STRONG)
        assert view.status == JobStatus.DISABLED and view.state.backoff_level == 0
        assert st.of(BackoffChanged, A_STRONG)[-1].level == 0
        failures = len(st.of(AnchorFailed, A_STRONG))
        await st.passes(5, step=60.0)
        assert len(st.of(AnchorFailed, A_STRONG)) == failures
        text = (await st.client.get("/metrics")).text
        assert 'vmsh_backoff_state{cadence="strong",namespace="a"} 0.0' in text
        response = await st.client.get("/health")
        assert response.status_code == 200 and response.json()["namespaces"]["a"]["backoff"] == 0


async def test_the_dashboard_shows_disabled_and_the_reason(tmp_path):
    from tui.detail import namespace_detail
    from tui.rows import Palette, job_row

    async with Stack(tmp_path) as st:
        await st.passes(2)
        now = st.engine.clock.now()
        view = st.engine.view(A_STRONG, now)
        assert job_row(view, 7, False, Palette())[-1].text == "disabled"
        views = [st.engine.view(k, now) for k in (A_FAST, A_STRONG)]
        text = namespace_detail("a", None, views, [], [], now=now, max_level=7).plain
        assert "disabled" in text and BTC_REASON in text
