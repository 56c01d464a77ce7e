"""Metrics, /health, /livez, /readyz over real HTTP against a real runtime on a fake clock."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from core import __version__
from core.events import (
    AnchorFailed,
    AnchorStarted,
    AnchorSucceeded,
    EventBus,
    ReceiptConfirmed,
    ReceiptWritten,
)
from core.jobs import JobKey
from core.observe import http as http_mod
from core.observe.http import ListenError, start_http
from core.observe.metrics import Metrics
from core.receipts import Receipt, load_receipt, parse_iso_utc
from core.runtime import Runtime

ATTEMPTED = "vmsh_anchors_attempted_total"
SUCCEEDED = "vmsh_anchors_succeeded_total"
FAILED = "vmsh_anchors_failed_total"


def parse_samples(text, parser=text_string_to_metric_families) -> dict:
    """{(sample name, frozenset(labels)): value}, through prometheus_client's own parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in parser(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """The sample's value; KeyError naming it when the series is missing."""
    return samples[(name, frozenset(labels.items()))]


def receipts_by_job(stack) -> dict[tuple[str, str, str], list[Receipt]]:
    out: dict[tuple[str, str, str], list[Receipt]] = {}
    for path in stack.runtime.receipts.all_paths():
        r = load_receipt(path)
        out.setdefault((r.namespace, r.cadence, r.target), []).append(r)
    return out


async def test_counters_agree_with_the_receipts_written(stack):
    s = await stack({"a:x": {"fast": "10s", "strong": "3*fast"}, "b": {"fast": "10s"}})
    passes = 6
    for _ in range(passes):
        await s.anchor_pass()
        s.clock.advance(10)
    s.clock.advance(-10)  # back to the time of the last pass

    response, samples = await s.scrape()
    assert response.headers["content-type"].startswith("text/plain")
    written = receipts_by_job(s)
    assert {k: len(v) for k, v in written.items()} == {
        ("a:x", "fast", "local:dev"): 6,
        ("a:x", "strong", "local:dev"): 2,
        ("b", "fast", "local:dev"): 6,
    }
    for (ns, cad, target), receipts in written.items():
        labels = {"namespace": ns, "cadence": cad, "target": target}
        assert value(samples, SUCCEEDED, **labels) == len(receipts)
        assert value(samples, ATTEMPTED, **labels) == len(receipts)
        assert value(samples, FAILED, **labels) == 0
        newest = max(parse_iso_utc(r.anchored_at).timestamp() for r in receipts)
        assert value(samples, "vmsh_last_anchor_timestamp_seconds", **labels) == pytest.approx(newest, abs=0.001)
        assert value(samples, "vmsh_anchor_duration_seconds_count", **labels, status="success") == len(receipts)
        assert value(samples, "vmsh_backoff_state", namespace=ns, cadence=cad) == 0
    assert value(samples, "vmsh_tick_duration_seconds_count") == passes
    assert value(samples, "vmsh_build_info", version=__version__) == 1
    assert value(samples, "vmsh_config_reloads_total", result="ok") == 0
    assert value(samples, "vmsh_config_reloads_total", result="error") == 0


async def test_openmetrics_when_the_accept_header_asks(stack):
    s = await stack({"a": {"fast": "10s"}})
    await s.anchor_pass()
    response = await s.client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    samples = parse_samples(response.text, parse_openmetrics)
    assert value(samples, SUCCEEDED, namespace="a", cadence="fast", target="local:dev") == 1
    # A plain scrape, and a nonsense Accept, get the Prometheus text format.
    for accept in (None, "application/openmetrics-text; version=banana", "*/*"):
        plain, _ = await s.scrape(accept)
        assert plain.headers["content-type"].startswith("text/plain")


async def test_health_goes_healthy_degraded_unhealthy_with_the_right_codes(stack):
    s = await stack({"a": {"fast": "10s"}, "b": {"fast": "10s"}})
    t0 = s.clock.now()

    # Before the first pass: nothing is wrong yet, but it is not ready.
    assert (await s.client.get("/readyz")).status_code == 503
    await s.anchor_pass()
    code, body = await s.health()
    assert code == 200
    assert body["status"] == "healthy"
    assert body["lastTick"] == int(t0)
    assert body["uptime"] == 0
    assert body["namespaces"] == {
        "a": {"lastAnchor": {"fast": int(t0)}, "backoff": 0, "status": "ok"},
        "b": {"lastAnchor": {"fast": int(t0)}, "backoff": 0, "status": "ok"},
    }
    ready = await s.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"

    # A malformed batch: b backs off, the scheduler is degraded, a is untouched.
    s.bad_batch("b", 2)
    s.clock.advance(10)
    await s.anchor_pass()
    code, body = await s.health()
    assert code == 503
    assert body["status"] == "degraded"
    assert body["namespaces"]["b"]["status"] == "backing_off"
    assert body["namespaces"]["b"]["backoff"] == 1
    assert body["namespaces"]["b"]["lastAnchor"] == {"fast": int(t0)}
    assert body["namespaces"]["a"] == {"lastAnchor": {"fast": int(t0 + 10)}, "backoff": 0, "status": "ok"}
    _, samples = await s.scrape()
    b = {"namespace": "b", "cadence": "fast", "target": "local:dev"}
    assert value(samples, FAILED, **b) == 1
    assert value(samples, ATTEMPTED, **b) == value(samples, SUCCEEDED, **b) + value(samples, FAILED, **b) == 2
    assert value(samples, "vmsh_backoff_state", namespace="b", cadence="fast") == 1

    # A good batch lands: b recovers, healthy again.
    s.batch("b", 3)
    s.clock.advance(10)
    await s.anchor_pass()
    code, body = await s.health()
    assert (code, body["status"]) == (200, "healthy")
    assert body["namespaces"]["b"] == {"lastAnchor": {"fast": int(t0 + 20)}, "backoff": 0, "status": "ok"}
    _, samples = await s.scrape()
    assert value(samples, "vmsh_backoff_state", namespace="b", cadence="fast") == 0

    # No anchor for more than 2 x 10 s (but the loop is not yet stuck): stale, degraded.
    s.clock.advance(21)
    code, body = await s.health()
    assert (code, body["status"]) == (503, "degraded")
    assert {n: v["status"] for n, v in body["namespaces"].items()} == {"a": "stale", "b": "stale"}
    assert (await s.client.get("/livez")).status_code == 200

    # No pass for more than max(3 x tick, 30 s): the engine is stuck, unhealthy.
    s.clock.advance(10)
    code, body = await s.health()
    assert (code, body["status"]) == (503, "unhealthy")
    assert "stuck" in body["reason"]
    live = await s.client.get("/livez")
    assert live.status_code == 503 and live.json()["status"] == "dead"

    # The loop runs again and anchors: healthy.
    await s.anchor_pass()
    code, body = await s.health()
    assert (code, body["status"]) == (200, "healthy")
    assert (await s.client.get("/livez")).status_code == 200


async def test_stale_factor_comes_from_the_config(stack):
    s = await stack({"a": {"fast": "10s"}}, stale_factor=3.0)
    await s.anchor_pass()
    s.clock.advance(25)
    assert (await s.health())[0] == 200
    s.clock.advance(6)  # 31 s > 3 x 10 s; the loop also counts as stuck now
    code, body = await s.health()
    assert code == 503 and body["namespaces"]["a"]["status"] == "stale"


async def test_a_job_that_never_anchored_goes_stale_from_the_start(stack):
    s = await stack({"a": {"fast": "10s"}}, batches=False)  # no batch: every attempt fails
    await s.anchor_pass()
    code, body = await s.health()
    assert code == 503 and body["namespaces"]["a"] == {
        "lastAnchor": {"fast": None}, "backoff": 1, "status": "backing_off",
    }


async def test_routes_methods_and_hygiene(stack, monkeypatch):
    s = await stack({"a": {"fast": "10s"}})
    await s.anchor_pass()
    for path in ("/", "/metrics/", "/healthz", "/../config.yaml", "/config.yaml", "/data/state/scheduler.json"):
        r = await s.client.get(path)
        assert r.status_code == 404, path
        assert r.text == "not found\n"
    assert (await s.client.get("/health?verbose=1")).status_code == 200

    head = await s.client.head("/health")
    get = await s.client.get("/health")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(get.content)
    assert (await s.client.head("/metrics")).status_code == 200
    assert (await s.client.head("/nope")).status_code == 404

    post = await s.client.post("/health", content=b"x")
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"

    # Nothing in any body names a file, a path or a traceback.
    for path in ("/health", "/livez", "/readyz", "/metrics"):
        text = (await s.client.get(path)).text
        assert str(s.tmp) not in text and "Traceback" not in text, path

    # An unexpected failure is a bare 500 and a log line, never a stack trace.
    def boom(*_args, **_kw):
        raise RuntimeError(f"secret detail at {s.tmp}")

    monkeypatch.setattr(s.engine, "views", boom)
    r = await s.client.get("/health")
    assert r.status_code == 500 and r.text == "internal error\n"
    assert any(rec.msg == "http request failed" and rec.fields["error"] == "RuntimeError" for rec in s.logs)


async def raw_request(port: int, data: bytes, *, wait: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


async def test_malformed_oversized_and_slow_requests_are_bounded(stack, monkeypatch):
    monkeypatch.setattr(http_mod, "READ_TIMEOUT", 0.3)
    s = await stack({"a": {"fast": "10s"}})
    await s.anchor_pass()
    port = s.server.port

    assert (await raw_request(port, b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    assert (await raw_request(port, b"GET /health HTTP/2.0\r\n\r\n")).startswith(b"HTTP/1.1 505 ")
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (http_mod.MAX_HEAD + 10) + b"\r\n\r\n"
    assert (await raw_request(port, big)).startswith(b"HTTP/1.1 431 ")

    # A client that sends half a request and stalls holds nothing up, and is cut off.
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
    slow_writer.write(b"GET /hea")
    await slow_writer.drain()
    code, _ = await asyncio.wait_for(s.health(), 1.0)
    assert code == 200
    await s.anchor_pass()  # the engine is not blocked either
    cut = await asyncio.wait_for(slow_reader.read(), 2.0)
    assert cut.startswith(b"HTTP/1.1 408 ")
    slow_writer.close()


async def test_a_second_server_on_the_same_port_fails_clearly(stack):
    s = await stack({"a": {"fast": "10s"}})
    port = s.server.port
    with pytest.raises(ListenError) as info:
        await start_http(s.runtime, s.metrics, f"127.0.0.1:{port}")
    assert str(info.value) == (
        f"cannot listen on 127.0.0.1:{port}: address already in use (is another scheduler running?)"
    )
    # The first one still serves.
    assert (await s.client.get("/livez")).status_code == 200


async def test_metrics_are_seeded_from_state_after_a_restart(stack):
    s = await stack({"a": {"fast": "10s"}, "b": {"fast": "10s"}})
    await s.anchor_pass()
    s.bad_batch("b", 2)
    s.clock.advance(10)
    await s.anchor_pass()
    s.engine.flush()
    last_a = s.engine.view(JobKey("a", "fast")).state.last_anchored_at

    again = Runtime(s.runtime.loaded, clock=s.clock, rng=random.Random(1))
    fresh = Metrics(again.bus, engine=again.engine, receipts=again.receipts)
    reg = fresh.registry
    labels = {"namespace": "a", "cadence": "fast", "target": "local:dev"}
    assert reg.get_sample_value("vmsh_last_anchor_timestamp_seconds", labels) == last_a
    assert reg.get_sample_value("vmsh_backoff_state", {"namespace": "b", "cadence": "fast"}) == 1
    assert reg.get_sample_value("vmsh_backoff_state", {"namespace": "a", "cadence": "fast"}) == 0
    # Counters are per process, created at zero so rate() and alerts see every job.
    assert reg.get_sample_value(SUCCEEDED, labels) == 0
    fresh.close()
    await again.close()


def test_pending_receipts_count_up_and_down_per_target():
    bus = EventBus()
    m = Metrics(bus)
    job = JobKey("a", "fast")
    for n in range(3):
        bus.publish(ReceiptWritten(at=1.0, job=job, target="eip155:8453", path=f"p{n}", root="r",
                                   status="pending", anchored_at=1.0))
    bus.publish(ReceiptWritten(at=1.0, job=job, target="local:dev", path="q", root="r",
                               status="confirmed", anchored_at=1.0))
    bus.publish(ReceiptConfirmed(at=2.0, job=job, target="eip155:8453", path="p0"))
    get = m.registry.get_sample_value
    assert get("vmsh_receipts_pending", {"target": "eip155:8453"}) == 2
    assert get("vmsh_receipts_pending", {"target": "local:dev"}) is None
    for _ in range(5):
        bus.publish(ReceiptConfirmed(at=3.0, job=job, target="eip155:8453", path="p"))
    assert get("vmsh_receipts_pending", {"target": "eip155:8453"}) == 0


def test_durations_land_in_their_buckets_and_a_new_target_starts_afresh():
    bus = EventBus()
    m = Metrics(bus)
    get = m.registry.get_sample_value
    job = JobKey("a", "fast")
    old = {"namespace": "a", "cadence": "fast", "target": "local:dev"}
    for duration in (0.3, 0.5, 7.0):
        bus.publish(AnchorStarted(at=1.0, target="local:dev", jobs=(job,), digest="d"))
        bus.publish(AnchorSucceeded(at=2.0, job=job, target="local:dev", root="r", duration=duration,
                                    status="confirmed"))
    bus.publish(AnchorStarted(at=3.0, target="local:dev", jobs=(job,), digest="d"))
    bus.publish(AnchorFailed(at=4.0, job=job, target="local:dev", kind="network", message="down",
                             duration=700.0))
    ok = {**old, "status": "success"}
    # Buckets are cumulative and inclusive of their bound, as Prometheus reads them.
    assert get("vmsh_anchor_duration_seconds_bucket", {**ok, "le": "0.25"}) == 0
    assert get("vmsh_anchor_duration_seconds_bucket", {**ok, "le": "0.5"}) == 2
    assert get("vmsh_anchor_duration_seconds_bucket", {**ok, "le": "10.0"}) == 3
    assert get("vmsh_anchor_duration_seconds_bucket", {**ok, "le": "+Inf"}) == 3
    assert get("vmsh_anchor_duration_seconds_sum", ok) == pytest.approx(7.8)
    bad = {**old, "status": "failure"}
    assert get("vmsh_anchor_duration_seconds_bucket", {**bad, "le": "600.0"}) == 0
    assert get("vmsh_anchor_duration_seconds_count", bad) == 1
    assert (get("vmsh_anchors_attempted_total", old), get("vmsh_anchors_failed_total", old)) == (4, 1)
    assert get("vmsh_last_anchor_timestamp_seconds", old) == 2.0

    # The job moves to another target: the old target's series go, the new start at zero.
    bus.publish(AnchorStarted(at=5.0, target="local:other", jobs=(job,), digest="d"))
    new = {**old, "target": "local:other"}
    assert get("vmsh_anchors_attempted_total", old) is None
    assert get("vmsh_anchor_duration_seconds_count", ok) is None
    assert get("vmsh_anchors_attempted_total", new) == 1
    assert get("vmsh_anchors_succeeded_total", new) == 0
    assert get("vmsh_last_anchor_timestamp_seconds", new) is None


async def test_attempts_are_counted_per_job_of_an_aggregated_group(stack):
    s = await stack({"a": {"fast": "10s"}, "b": {"fast": "10s"}, "c": {"fast": "10s"}})
    starts = []
    s.runtime.bus.subscribe(lambda e: starts.append(e) if type(e).__name__ == "AnchorStarted" else None)
    await s.anchor_pass()
    assert len(starts) == 1 and len(starts[0].jobs) == 3  # one backend call for three jobs
    _, samples = await s.scrape()
    counts = Counter(
        labels["namespace"] for (name, lbl), v in samples.items() if name == ATTEMPTED
        for labels in [dict(lbl)] for _ in range(int(v))
    )
    assert counts == {"a": 1, "b": 1, "c": 1}


async def test_a_stopped_engine_is_unhealthy_at_once(stack):
    s = await stack({"a": {"fast": "10s"}})
    await s.anchor_pass()
    assert (await s.health())[0] == 200
    await s.engine.stop(grace=1.0)
    code, body = await s.health()
    assert (code, body["status"], body["reason"]) == (503, "unhealthy", "engine stopped")
    assert (await s.client.get("/livez")).status_code == 503
    assert (await s.client.get("/readyz")).status_code == 503


def test_an_anchored_job_costs_the_metrics_under_300_bytes():
    """10,000 idle namespaces must fit the daemon's memory budget (issue 24): a job's series
    after its first anchor (counters, times, a one-bucket duration histogram) stay small;
    ~250 bytes now; they were ~720 (a dict of histograms, a 16-count list, a members dict)."""
    import tracemalloc

    bus = EventBus()
    m = Metrics(bus)
    jobs = tuple(JobKey(f"ns{i}", "fast") for i in range(2000))
    events = [AnchorSucceeded(at=2.0 + i, job=job, target="local:dev", root="r", duration=0.4, status="confirmed")
              for i, job in enumerate(jobs)]
    started = AnchorStarted(at=1.0, target="local:dev", jobs=jobs, digest="d")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        bus.publish(started)
        for event in events:
            bus.publish(event)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept / len(jobs) < 300, f"{kept / len(jobs):.0f} bytes a job"
    labels = {"namespace": "ns7", "cadence": "fast", "target": "local:dev", "status": "success"}
    assert m.registry.get_sample_value("vmsh_anchor_duration_seconds_bucket", {**labels, "le": "0.25"}) == 0
    assert m.registry.get_sample_value("vmsh_anchor_duration_seconds_bucket", {**labels, "le": "0.5"}) == 1
    assert m.registry.get_sample_value("vmsh_anchor_duration_seconds_count", labels) == 1
