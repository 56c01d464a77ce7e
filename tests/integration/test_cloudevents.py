"""CloudEvents emission against a real local HTTP receiver and a real file, driven by a real
scheduler (the `stack` fixture: Runtime, embedded local TSA, Metrics, HTTP endpoints)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.config import CLOUDEVENT_TYPES, CloudEventsSettings, ConfigError, load_config
from core.events import AnchorSucceeded, ReceiptConfirmed
from core.jobs import JobKey
from core.observe import cloudevents as ce_mod
from core.observe.cloudevents import CONTENT_TYPE, start_cloudevents, to_cloudevent

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
REQUIRED = ("specversion", "id", "source", "type")


# --------------------------------------------------------------------------- a real receiver


class Receiver:
    """A CloudEvents receiver on 127.0.0.1 (http.server in a thread, HTTP/1.1 keep-alive).

    `statuses` answers the next requests with those codes (then 202); `hold` makes every
    request wait until it is set (a stalled receiver).
    """

    def __init__(self, port: int = 0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.hold.wait(10)
                with outer.lock:
                    status = outer.statuses.pop(0) if outer.statuses else 202
                    if status < 300:
                        outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict]:
        with self.lock:
            return [json.loads(body) for _, body in self.requests]

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(port: int = 0) -> Receiver:
        r = Receiver(port)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(ce_mod, "BACKOFF_BASE", 0.01)


def settings(**kw) -> CloudEventsSettings:
    return CloudEventsSettings.model_validate(kw)


@pytest.fixture
async def emitting():
    """`await emitting(stack, settings)` -> the emitter; closed (drained) after the test."""
    closers = []

    async def start(s, cfg=None):
        closer = await start_cloudevents(s.runtime, cfg, s.metrics.registry)
        closers.append(closer)
        return closer

    yield start
    for closer in closers:
        await closer()


def check_envelope(event: dict, source: str = "/vaultmesh/scheduler") -> None:
    for name in REQUIRED:
        assert isinstance(event[name], str) and event[name], name
    assert event["specversion"] == "1.0"
    assert event["source"] == source
    assert event["type"].startswith("org.vaultmesh.scheduler.")
    assert RFC3339_UTC.match(event["time"]), event["time"]
    assert event["datacontenttype"] == "application/json"
    assert isinstance(event["data"], dict)  # a JSON value, not an encoded string
    assert "data_base64" not in event


def types(events: list[dict]) -> list[str]:
    return [e["type"].removeprefix("org.vaultmesh.scheduler.") for e in events]


# --------------------------------------------------------------------------- config section


def test_config_section_defaults_and_validation(tmp_path):
    base = "namespaces:\n  a:\n    cadence:\n      fast: {target: 'local:dev', every: '10s'}\n"
    path = tmp_path / "c.yaml"
    path.write_text(base)
    assert load_config(path, env={}, cwd=tmp_path).config.cloudevents is None  # off unless configured

    path.write_text(base + "cloudevents:\n  http: {url: 'http://127.0.0.1:9/e'}\n  file: out/ce.jsonl\n")
    ce = load_config(path, env={}, cwd=tmp_path).config.cloudevents
    assert ce is not None and ce.http is not None
    assert ce.http.timeout == 5.0 and ce.http.max_queue == 1000 and ce.http.retries == 3
    assert ce.file == tmp_path / "out" / "ce.jsonl"  # relative to the config file
    assert ce.source == "/vaultmesh/scheduler"
    assert tuple(ce.types) == CLOUDEVENT_TYPES

    path.write_text(
        base
        + "cloudevents:\n"
        + "  http: {url: 'ftp://x/e', retries: -1, max_queue: 0}\n"
        + "  types: [anchor.succeeded, anchor.sent]\n"
        + "  sorce: /x\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, env={}, cwd=tmp_path)
    text = str(err.value)
    assert "c.yaml:6:" in text and "cloudevents.http.url" in text and "http:// or https://" in text
    assert "cloudevents.http.retries" in text and "cloudevents.http.max_queue" in text
    assert "cloudevents.types[1]" in text and "anchor.sent" in text
    assert "unknown key 'sorce'" in text and "did you mean 'source'" in text


# --------------------------------------------------------------------------- format


def test_cloudevent_format_and_no_secrets():
    job = JobKey("ns-a", "fast")
    ok = to_cloudevent(
        AnchorSucceeded(at=1_700_000_000.25, job=job, target="local:dev", root="sha256:" + "ab" * 32,
                        duration=0.012, status="confirmed"),
        "/vaultmesh/scheduler",
    )
    assert ok is not None
    check_envelope(ok)
    assert ok["type"] == "org.vaultmesh.scheduler.anchor.succeeded"
    assert ok["subject"] == "ns-a/fast"
    assert ok["time"] == "2023-11-14T22:13:20.250Z"
    assert ok["data"] == {"namespace": "ns-a", "cadence": "fast", "target": "local:dev",
                          "root": "sha256:" + "ab" * 32, "receipt_status": "confirmed", "duration_seconds": 0.012}
    again = to_cloudevent(
        AnchorSucceeded(at=1.0, job=job, target="local:dev", root="r", duration=0, status="pending"), "/s"
    )
    assert again is not None and again["id"] != ok["id"]

    from core.events import AnchorFailed

    failed = to_cloudevent(
        AnchorFailed(at=1.0, job=job, target="rfc3161:tsa", kind="auth",
                     message="POST https://user:hunter2@tsa.example/ts?token=s3cret failed: 401", duration=0.5),
        "/s",
    )
    assert failed is not None
    assert failed["type"] == "org.vaultmesh.scheduler.anchor.failed"
    assert failed["data"]["kind"] == "auth"
    assert "hunter2" not in json.dumps(failed) and "s3cret" not in json.dumps(failed)
    assert "https://tsa.example/ts" in failed["data"]["message"]

    confirmed = to_cloudevent(ReceiptConfirmed(at=1.0, job=job, target="eip155:1", path="/secret/dir/r1.json"), "/s")
    assert confirmed is not None and confirmed["data"]["receipt"] == "r1.json"  # the file name, not where the data dir lives


# --------------------------------------------------------------------------- HTTP, end to end


async def test_real_scheduler_events_reach_the_receiver_in_structured_mode(stack, emitting, receiver, obs):
    r = receiver()
    s = await stack({"a": {"fast": "10s"}, "b": {"fast": "10s"}})
    closer = await emitting(s, settings(http={"url": r.url}, source="urn:vmsh:test"))

    await s.anchor_pass()  # both anchor (local TSA): two anchor.succeeded
    s.bad_batch("b", 2)
    s.clock.advance(10)
    await s.anchor_pass()  # a anchors again; b fails on its unreadable batch
    s.runtime.bus.publish(ReceiptConfirmed(at=s.clock.now(), job=JobKey("a", "fast"), target="local:dev", path="x/r.json"))
    s.batch("c", 1)
    s.config_path.write_text(obs.config_text({"a": {"fast": "10s"}, "b": {"fast": "10s"}, "c": {"fast": "5s"}}))
    assert s.runtime.reload().changed

    await obs.eventually(lambda: len(r.events()) >= 6, 5.0, "six events delivered")
    events = r.events()
    for e in events:
        check_envelope(e, source="urn:vmsh:test")
    assert sorted(types(events)) == sorted(
        ["anchor.succeeded"] * 3 + ["anchor.failed", "receipt.confirmed", "config.reloaded"]
    )
    assert len({e["id"] for e in events}) == len(events)
    failed = next(e for e in events if e["type"].endswith("anchor.failed"))
    assert failed["subject"] == "b/fast" and failed["data"]["namespace"] == "b"
    reloaded = next(e for e in events if e["type"].endswith("config.reloaded"))
    assert reloaded["data"]["added"] == ["c/fast"] and "subject" not in reloaded
    for headers, _ in r.requests:
        assert headers["content-type"] == CONTENT_TYPE  # structured content mode
        assert "ce-id" not in headers

    _, samples = await s.scrape()  # the counters are on the scheduler's own /metrics
    assert obs.value(samples, "vmsh_cloudevents_sent_total", sink="http") == 6
    assert obs.value(samples, "vmsh_cloudevents_dropped_total", sink="http", reason="queue_full") == 0
    assert closer.emitter.sinks[0].queue.empty()


async def test_receiver_down_events_dropped_and_counted_anchoring_unaffected(
    stack, emitting, receiver, fast_retries, obs
):
    port = free_port()
    s = await stack({"a": {"fast": "10s"}})
    await emitting(s, settings(http={"url": f"http://127.0.0.1:{port}/events", "retries": 2, "timeout": 1.0}))

    started = time.monotonic()
    await s.anchor_pass()
    assert time.monotonic() - started < 2.0  # the pass never waits for the receiver
    code, body = await s.health()
    assert code == 200 and body["namespaces"]["a"]["lastAnchor"]["fast"] == int(s.clock.now())

    async def dropped():
        _, samples = await s.scrape()
        return obs.value(samples, "vmsh_cloudevents_dropped_total", sink="http", reason="send_failed") == 1

    await obs.eventually(dropped, 5.0, "the undeliverable event counted as send_failed")
    _, samples = await s.scrape()
    assert obs.value(samples, "vmsh_anchors_succeeded_total", namespace="a", cadence="fast", target="local:dev") == 1
    assert obs.value(samples, "vmsh_cloudevents_sent_total", sink="http") == 0
    assert any("could not deliver" in rec.msg for rec in s.logs)  # said once, in the log

    # The receiver comes back on the same port: the next event is delivered.
    r = receiver(port)
    s.clock.advance(10)
    await s.anchor_pass()
    await obs.eventually(lambda: len(r.events()) == 1, 5.0, "delivery after the receiver is back")
    assert types(r.events()) == ["anchor.succeeded"]
    await obs.eventually(lambda: any("reachable again" in rec.msg for rec in s.logs), 5.0, "'reachable again' logged")


async def test_transient_errors_are_retried_and_4xx_is_not(stack, emitting, receiver, fast_retries, obs):
    r = receiver()
    r.statuses = [503, 500]  # the first event needs two retries
    s = await stack({"a": {"fast": "10s"}})
    await emitting(s, settings(http={"url": r.url, "retries": 2}))
    await s.anchor_pass()
    await obs.eventually(lambda: len(r.events()) == 1, 5.0, "delivered after two 5xx")

    r.statuses = [400]
    s.clock.advance(10)
    await s.anchor_pass()

    async def rejected():
        _, samples = await s.scrape()
        return obs.value(samples, "vmsh_cloudevents_dropped_total", sink="http", reason="rejected") == 1

    await obs.eventually(rejected, 5.0, "a 400 is dropped as rejected, not retried")
    assert len(r.events()) == 1


async def test_full_queue_drops_without_blocking_the_bus(stack, emitting, receiver, obs):
    r = receiver()
    r.hold.clear()  # a stalled receiver: requests hang until released
    s = await stack({"a": {"fast": "10s"}})
    closer = await emitting(s, settings(http={"url": r.url, "max_queue": 3, "timeout": 10}))
    emitter = closer.emitter
    job = JobKey("a", "fast")

    def publish(n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            s.runtime.bus.publish(
                AnchorSucceeded(at=s.clock.now(), job=job, target="local:dev", root=obs.root(i), duration=0.0,
                                status="confirmed")
            )
        return time.perf_counter() - t0

    publish(1)
    await obs.eventually(lambda: emitter.sinks[0].queue.empty(), 2.0, "the first event is in flight")
    elapsed = publish(50)
    assert elapsed < 0.5  # put_nowait only: a stalled receiver costs the publisher nothing
    _, samples = await s.scrape()
    assert obs.value(samples, "vmsh_cloudevents_dropped_total", sink="http", reason="queue_full") == 47

    r.hold.set()
    await obs.eventually(lambda: len(r.events()) == 4, 5.0, "one in flight + three queued delivered")
    roots = [e["data"]["root"] for e in r.events()]
    assert roots == [obs.root(0), obs.root(0), obs.root(1), obs.root(2)]  # in order, the oldest kept


async def test_close_drains_then_gives_up_on_a_stalled_receiver(stack, receiver, obs, monkeypatch):
    r = receiver()
    s = await stack({"a": {"fast": "10s"}})
    closer = await start_cloudevents(s.runtime, settings(http={"url": r.url}), s.metrics.registry)
    await s.anchor_pass()
    await closer()  # drains: the event is delivered before the closer returns
    assert types(r.events()) == ["anchor.succeeded"]

    monkeypatch.setattr(ce_mod, "DRAIN_SECONDS", 0.3)
    r.hold.clear()
    closer = await start_cloudevents(s.runtime, settings(http={"url": r.url, "timeout": 10}), s.metrics.registry)
    emitter = closer.emitter  # type: ignore[attr-defined]  # set on the closer for tests
    s.clock.advance(10)
    await s.anchor_pass()
    s.clock.advance(10)
    await s.anchor_pass()
    started = time.monotonic()
    await emitter.close(drain=0.3)
    assert time.monotonic() - started < 2.0
    counts = {tuple(sorted(smp.labels.items())): smp.value for m in emitter.dropped.collect() for smp in m.samples
              if smp.name.endswith("_total")}
    assert counts[(("reason", "shutdown"), ("sink", "http"))] == 2  # in flight + queued
    s.runtime.bus.publish(ReceiptConfirmed(at=0.0, job=JobKey("a", "fast"), target="local:dev", path="r"))
    assert emitter.sinks[0].queue.empty()  # unsubscribed: nothing queued after close
    _, samples = await s.scrape()
    assert obs.value(samples, "vmsh_cloudevents_dropped_total", sink="http", reason="shutdown") is None


# --------------------------------------------------------------------------- file sink


async def test_file_sink_writes_json_lines_filtered_by_type(stack, emitting, receiver, obs, tmp_path):
    r = receiver()
    out = tmp_path / "events" / "ce.jsonl"
    s = await stack({"a": {"fast": "10s"}, "b": {"fast": "10s"}})
    await emitting(s, settings(http={"url": r.url}, file=str(out), types=["anchor.failed", "config.reloaded"]))

    await s.anchor_pass()  # two successes: not wanted
    s.bad_batch("a", 2)
    s.clock.advance(10)
    await s.anchor_pass()  # a fails
    await obs.eventually(lambda: out.exists() and len(out.read_text().splitlines()) == 1, 5.0, "one line")
    lines = out.read_text().splitlines()
    event = json.loads(lines[0])
    check_envelope(event)
    assert types([event]) == ["anchor.failed"] and event["subject"] == "a/fast"
    await obs.eventually(lambda: len(r.events()) == 1, 5.0, "the same event over HTTP")
    assert r.events()[0]["id"] == event["id"]  # one CloudEvent, two sinks

    _, samples = await s.scrape()
    assert obs.value(samples, "vmsh_cloudevents_sent_total", sink="file") == 1


async def test_file_sink_from_the_config_file_alone(stack, obs, tmp_path):
    text = obs.config_text({"a": {"fast": "10s"}}) + "cloudevents:\n  file: ce.jsonl\n  source: /vmsh/ci\n"
    s = await stack(text=text)
    closer = await start_cloudevents(s.runtime, registry=s.metrics.registry)  # settings from runtime's config
    await s.anchor_pass()
    await closer()
    lines = (tmp_path / "ce.jsonl").read_text().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    check_envelope(event, source="/vmsh/ci")
    assert event["data"]["namespace"] == "a" and event["data"]["receipt_status"] == "confirmed"


async def test_file_sink_unwritable_is_counted(stack, emitting, obs, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    s = await stack({"a": {"fast": "10s"}})
    await emitting(s, settings(file=str(blocker / "ce.jsonl")))
    await s.anchor_pass()

    async def counted():
        _, samples = await s.scrape()
        return obs.value(samples, "vmsh_cloudevents_dropped_total", sink="file", reason="write_failed") == 1

    await obs.eventually(counted, 5.0, "write failure counted")
    code, _ = await s.health()
    assert code == 200


# --------------------------------------------------------------------------- disabled


async def test_disabled_starts_nothing(stack):
    s = await stack({"a": {"fast": "10s"}})
    before = len(s.runtime.bus._subscribers)
    closer = await start_cloudevents(s.runtime, None, s.metrics.registry)  # no section in the config
    assert len(s.runtime.bus._subscribers) == before
    await closer()
    closer = await start_cloudevents(s.runtime, settings(), s.metrics.registry)  # a section, no sink
    assert len(s.runtime.bus._subscribers) == before
    await closer()
    assert "vmsh_cloudevents" not in (await s.client.get("/metrics")).text
