"""The control socket at scale (issue 24): what attached clients fetch, and what their mirror shows.

A real headless scheduler (a subprocess) serves its socket; the clients are the real ones
(core/remote_control.py RemoteControl, `vmsh-scheduler ctl`). Between them, where a test
must see what a client asks for, a relay: a Unix socket that forwards every byte both
ways and records each request line and the bytes answered (no figures: timings are in
bench/control_bench.py). Waits are bounded polls, never sleeps standing in for a schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cli.ctl import status_doc
from core.control_client import ControlClient
from core.events import Event, ReceiptWritten
from core.remote_control import RemoteControl
from core.sources import write_batch
from tests.integration.test_control import ctl, headless, serving, sock_path, stop
from tests.integration.test_headless import CLI, receipts, wait_for

KEEP = 1 << 20


@dataclass
class Exchange:
    request: str  # "GET /v1/snapshot HTTP/1.1"
    answered: int = 0  # bytes
    head: bytes = b""  # the answer's first KEEP bytes


@dataclass
class Relay:
    """A Unix socket at `path` relaying to `target`, recording each connection's request
    line and how many bytes were answered."""

    path: Path
    target: Path
    drop: bytes = b""  # taken out of each request (a query option an older scheduler ignores)
    seen: list[Exchange] = field(default_factory=list)

    def start(self) -> Relay:
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(self.path))
        self._server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(str(self.target))
            exchange = Exchange("")
            self.seen.append(exchange)
            threading.Thread(target=self._pipe, args=(conn, upstream, exchange, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, conn, exchange, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, exchange: Exchange, request: bool) -> None:
        try:
            while data := src.recv(65536):
                if request and self.drop:
                    data = data.replace(self.drop, b"")
                if request and not exchange.request:
                    exchange.request = data.split(b"\r\n", 1)[0].decode("latin-1")
                if not request:
                    exchange.answered += len(data)
                    exchange.head += data[: max(0, KEEP - len(exchange.head))]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def requests(self, path: str) -> list[Exchange]:
        return [e for e in self.seen if e.request.split(" ")[1:2] and e.request.split(" ")[1].startswith(path)]

    def close(self) -> None:
        self._server.close()


def table(snap: object) -> dict[str, tuple[object, ...]]:
    """A snapshot's job table as a user sees it: each job's status, state, due time, flight."""
    return {str(v.key): (v.status, v.state, v.due_at, v.in_flight, v.disabled) for v in snap.views}  # type: ignore[attr-defined]


def test_an_attached_mirror_follows_views_lines_and_equals_a_fresh_snapshot(tmp_path: Path) -> None:
    names = [f"ns{i:02d}" for i in range(30)]
    config, proc = headless(tmp_path, names, every="1s", unchanged=True)
    relay = Relay(tmp_path / "relay.sock", sock_path(tmp_path))
    try:
        wait_for(lambda: serving(tmp_path) and len(receipts(tmp_path)) >= len(names), timeout=60)
        relay.start()
        written: list[Event] = []

        async def follow() -> tuple[Any, dict[str, Any]]:
            control = RemoteControl.connect(relay.path)
            control.subscribe(lambda e: written.append(e) if isinstance(e, ReceiptWritten) else None)
            control.start()
            try:
                while len(written) < 3 * len(names):  # three rounds of every job, applied live
                    await asyncio.sleep(0.05)
                assert ctl(config, "pause").returncode == 0
                while not (control.snapshot().paused and not control.in_flight()):
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # the views lines of the last landings
                with ControlClient(sock_path(tmp_path)) as client:
                    fresh = status_doc(client.call("GET", "snapshot"))
                return control.snapshot(), fresh
            finally:
                await control.close()

        mirror, fresh = asyncio.run(asyncio.wait_for(follow(), 60))
    finally:
        relay.close()
        stop(proc)
    # What the dashboard shows equals what a fresh snapshot says, job by job...
    shown = {j["job"]: {k: v for k, v in j.items() if k != "due_in"} for j in status_doc(_doc(mirror))["jobs"]}
    assert shown == {j["job"]: {k: v for k, v in j.items() if k != "due_in"} for j in fresh["jobs"]}
    assert len(shown) == len(names) and all(j["status"] == "paused" for j in shown.values())
    assert mirror.counts == _counts(fresh)
    # ...although it took one snapshot only (at connect), and followed one event stream.
    assert len(relay.requests("/v1/snapshot")) == 1, relay.seen
    assert len(relay.requests("/v1/events")) == 1 and "views=1" in relay.requests("/v1/events")[0].request


def _doc(snap: object) -> dict[str, object]:
    from core import wire

    return {"pid": 0, "host": "", "version": "", "health": {}, "snapshot": wire.encode_snapshot(snap)}  # type: ignore[arg-type]


def _counts(status: dict[str, object]) -> object:
    from core.status import Counts, JobStatus

    c = dict(status["counts"])  # type: ignore[call-overload]
    total, in_backoff = c.pop("total"), c.pop("in_backoff")
    return Counts({JobStatus(k): v for k, v in c.items()}, in_backoff, total)


def test_ctl_status_json_comes_from_the_status_endpoint_with_the_snapshots_content(tmp_path: Path) -> None:
    names = [f"ns{i:02d}" for i in range(12)]
    config, proc = headless(tmp_path, names, every="1h")
    try:
        wait_for(lambda: serving(tmp_path) and len(receipts(tmp_path)) >= len(names), timeout=60)
        assert ctl(config, "pause").returncode == 0  # nothing changes between the two reads
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock_path(tmp_path))), base_url="http://vmsh") as c:
            served = c.get("/v1/status")
            assert served.status_code == 200, served.text
            from_snapshot = status_doc(c.get("/v1/snapshot").json())
        printed = ctl(config, "status", "--json")
        assert printed.returncode == 0, printed.stderr
    finally:
        stop(proc)
    # Printed as json.dumps(..., ensure_ascii=False) printed it before: the same bytes for the same document.
    assert printed.stdout == json.dumps(json.loads(printed.stdout), ensure_ascii=False) + "\n"
    for doc in (served.json(), json.loads(printed.stdout)):
        assert list(doc) == list(from_snapshot)  # the same keys, in the same order
        for key in from_snapshot:
            if key == "jobs":
                assert [{k: v for k, v in j.items() if k != "due_in"} for j in doc["jobs"]] == \
                    [{k: v for k, v in j.items() if k != "due_in"} for j in from_snapshot["jobs"]]
                assert all(abs(a["due_in"] - b["due_in"]) < 30 for a, b in zip(doc["jobs"], from_snapshot["jobs"], strict=True))
            elif key == "health":
                assert {k: v for k, v in doc["health"].items() if k not in ("uptime", "lastTick")} == \
                    {k: v for k, v in from_snapshot["health"].items() if k not in ("uptime", "lastTick")}
            else:
                assert doc[key] == from_snapshot[key], key


@contextlib.contextmanager
def tail_through_a_relay(tmp_path: Path, names: list[str]) -> Iterator[tuple[Path, Relay, list[str]]]:
    """A headless scheduler of `names` (each anchored once), and `ctl tail` attached to it
    through a relay that records what it was sent, its stream open (the snapshot's last log
    lines read): (config, relay, those lines). Everything is stopped on the way out."""
    config, proc = headless(tmp_path, names, every="1h")
    relay = Relay(tmp_path / "relay.sock", sock_path(tmp_path))
    tail = None
    try:
        wait_for(lambda: serving(tmp_path) and len(receipts(tmp_path)) >= len(names), timeout=90)
        relay.start()
        tail = subprocess.Popen([*CLI, "ctl", "--socket", str(relay.path), "tail"], stdout=subprocess.PIPE, text=True)
        assert tail.stdout is not None
        printed = [tail.stdout.readline() for _ in range(10)]
        wait_for(lambda: relay.requests("/v1/events"), timeout=20)
        yield config, relay, printed
    finally:
        if tail is not None:
            tail.terminate()
            tail.wait(timeout=10)
        relay.close()
        stop(proc)


def test_ctl_tail_does_not_download_the_job_table_nor_receipts(tmp_path: Path) -> None:
    names = [f"ns{i:03d}" for i in range(300)]
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock_path(tmp_path))), base_url="http://vmsh") as c:
        with tail_through_a_relay(tmp_path, names) as (_, relay, printed):
            whole = len(c.get("/v1/snapshot").content)
            assert all('"msg": "anchored"' in line for line in printed), printed  # the snapshot's last log lines
    (snapshot,) = relay.requests("/v1/snapshot")
    body = json.loads(snapshot.head.split(b"\r\n\r\n", 1)[1])
    assert "snapshot" not in body and body["seq"] > 0 and body["logs"]  # the logs and seq, not 300 jobs
    assert body["receipts"] == []  # nor the newest receipts (read from disk for it; it prints none)
    assert snapshot.answered < whole / 2, (snapshot.answered, whole)


def test_ctl_tail_is_sent_log_records_only(tmp_path: Path) -> None:
    # A pass's events are three a job (ReceiptWritten, AnchorSucceeded, the "anchored" log
    # record); `ctl tail` prints the log records only, and is sent only those: the other
    # two thirds were encoded and written to each tail and parsed by it, on the same cores
    # as the engine, while a 10,000-job pass was written (issue 24, /livez with 3 tails).
    names = [f"ns{i:03d}" for i in range(20)]
    with tail_through_a_relay(tmp_path, names) as (config, relay, _):
        for n in names:
            write_batch(tmp_path / "batches" / n, "000002", "sha256:" + f"{n.encode().hex():0>64}"[-64:].replace("0", "1"))
        done = ctl(config, "force", names[0])
        assert done.returncode == 0, done.stderr
        (stream,) = relay.requests("/v1/events")
        wait_for(lambda: b'"msg":"anchored"' in stream.head or b'"msg": "anchored"' in stream.head, timeout=30,
                 what="the forced anchor's log record on the tail's stream")
    (events,) = relay.requests("/v1/events")
    assert "format=log" in events.request
    # Sent as the scheduler's log prints them (`?format=log`): no tail decodes and formats
    # each of a pass's 10,000 records again; and nothing but log records.
    lines = [json.loads(line) for line in events.head.split(b"\r\n\r\n", 1)[1].splitlines() if line.strip()]
    assert lines and all(list(line)[:3] == ["time", "level", "msg"] and "type" not in line for line in lines), lines
    assert any(line["msg"] == "anchored" and line["job"] == f"{names[0]}/fast" for line in lines)


def test_ctl_tail_prints_the_same_lines_from_a_scheduler_without_log_lines(tmp_path: Path) -> None:
    """A scheduler from before `?format=log` ignores it and sends events as JSON: the tail
    decodes and formats them itself, and prints the same lines."""
    names = ["alpha", "beta"]
    config, proc = headless(tmp_path, names, every="1h")
    newer = Relay(tmp_path / "newer.sock", sock_path(tmp_path))
    older = Relay(tmp_path / "older.sock", sock_path(tmp_path), drop=b"&format=log")
    tails = []
    try:
        wait_for(lambda: serving(tmp_path) and len(receipts(tmp_path)) >= len(names), timeout=90)
        for relay in (newer, older):
            relay.start()
            tails.append(subprocess.Popen([*CLI, "ctl", "--socket", str(relay.path), "tail"], stdout=subprocess.PIPE,
                                          text=True))
            threading.Timer(60, tails[-1].terminate).start()  # a tail that never shows it fails, not hangs
        wait_for(lambda: all(len(r.requests("/v1/events")) == 1 for r in (newer, older)), timeout=20)
        assert ctl(config, "force", "alpha").returncode == 0
        folder = tmp_path / "data" / "receipts" / "alpha"
        forced = wait_for(lambda: sorted(folder.glob("*.json"))[1:], timeout=30, what="the forced receipt")[0]
        printed = []
        for tail in tails:  # each up to the forced anchor's line
            assert tail.stdout is not None
            line = tail.stdout.readline()
            while line and forced.name not in line:
                line = tail.stdout.readline()
            printed.append(line)
    finally:
        for tail in tails:
            tail.terminate()
            tail.wait(timeout=10)
        newer.close()
        older.close()
        stop(proc)
    (events,) = older.requests("/v1/events")
    assert "format=log" not in events.request and b'"type":"LogRecord"' in events.head  # events, as JSON
    (lines,) = newer.requests("/v1/events")
    assert b'\r\n\r\n{"time": ' in lines.head and b'"type":"LogRecord"' not in lines.head  # log lines
    assert printed[0] == printed[1] and '"msg": "anchored"' in printed[0] and '"job": "alpha/fast"' in printed[0]


def test_a_reading_views_client_gets_every_jobs_view_beside_one_that_never_reads(tmp_path: Path) -> None:
    names = [f"ns{i:03d}" for i in range(150)]
    config, proc = headless(tmp_path, names, every="1s", unchanged=True)
    stuck = socket.socket(socket.AF_UNIX)
    try:
        wait_for(lambda: serving(tmp_path) and len(receipts(tmp_path)) >= len(names), timeout=60)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(str(sock_path(tmp_path)))
        stuck.sendall(b"GET /v1/events?views=1 HTTP/1.1\r\nHost: vmsh\r\n\r\n")  # and never reads
        views_jobs: set[str] = set()
        transport = httpx.HTTPTransport(uds=str(sock_path(tmp_path)))
        with httpx.Client(transport=transport, base_url="http://vmsh", timeout=30) as client, \
                client.stream("GET", "/v1/events?views=1") as stream:
            for line in stream.iter_lines():
                message = json.loads(line)
                if message.get("type") == "views":
                    views_jobs |= {v["spec"]["job"] for v in message["views"]}
                if len(views_jobs) == len(names):
                    break  # every job's new view reached the reader
    finally:
        stuck.close()
        stop(proc)
    assert len(views_jobs) == len(names)  # not held up by the one that never reads


def test_an_attaching_dashboard_gets_a_first_page_with_every_jobs_counts_then_every_job(tmp_path: Path) -> None:
    from core.remote_control import FIRST_PAGE

    names = [f"ns{i:03d}" for i in range(FIRST_PAGE + 20)]
    config, proc = headless(tmp_path, names, every="1h")
    try:
        wait_for(lambda: serving(tmp_path) and len(receipts(tmp_path)) >= len(names), timeout=90)

        async def attach() -> tuple[int, int, int]:
            control = RemoteControl.connect(sock_path(tmp_path))
            first = control.snapshot()
            control.start()
            try:
                while len(control.snapshot().views) < len(names):
                    await asyncio.sleep(0.05)
            finally:
                await control.close()
            return len(first.views), first.counts.total, len(control.snapshot().views)

        shown_first, counted_first, shown_then = asyncio.run(asyncio.wait_for(attach(), 30))
    finally:
        stop(proc)
    assert (shown_first, counted_first, shown_then) == (FIRST_PAGE, len(names), len(names))


def test_ctl_tail_starts_without_the_stores_and_the_snapshot_codec(tmp_path: Path) -> None:
    # Three `ctl tail` attached at a 10,000-job pass's start each imported the stores, the
    # receipts and the snapshot's types (core.wire) to decode log records: 0.2 s of CPU
    # each on the engine's cores, now 0.13 s. It still prints what the scheduler logs.
    import sys

    names = ["alpha", "beta"]
    config, proc = headless(tmp_path, names, every="1h")
    watch = ("import runpy, sys\nsys.argv = ['vmsh-scheduler', 'ctl', '--socket', sys.argv[1], 'tail']\n"
             "try:\n    runpy.run_module('cli', run_name='__main__')\nfinally:\n"
             "    print('imported:', ' '.join(m for m in sys.modules if m.startswith(('core.', 'pydantic'))),"
             " file=sys.stderr)\n")
    try:
        wait_for(lambda: serving(tmp_path) and len(receipts(tmp_path)) >= len(names), timeout=90)
        tail = subprocess.Popen([sys.executable, "-c", watch, str(sock_path(tmp_path))], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert tail.stdout is not None
        printed = [tail.stdout.readline() for _ in range(3)]
    finally:
        stop(proc)
    _, err = tail.communicate(timeout=20)
    assert all(line.startswith('{"time": ') for line in printed), printed
    imported = err.split("imported:", 1)[1].split()
    assert "core.wire_events" in imported
    assert not [m for m in imported if m == "core.wire" or m.startswith(("core.store", "core.receipts", "pydantic"))]
