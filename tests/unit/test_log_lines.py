"""JSON log lines reach their reader within the loop iteration that logged them."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from core.clock import FakeClock
from core.events import EventBus
from core.observe.logs import JsonLineWriter, Log


def read_lines(fd: int) -> list[dict]:
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 1 << 20)
    except BlockingIOError:
        data = b""
    return [json.loads(line) for line in data.decode().splitlines()]


async def test_lines_logged_in_one_loop_iteration_are_all_readable_once_it_ends():
    r, w = os.pipe()
    stream = os.fdopen(w, "w", buffering=1 << 16)  # a pipe's buffered stream (stdout under systemd)
    bus = EventBus()
    writer = JsonLineWriter(stream)
    bus.subscribe(writer)
    log = Log(bus, FakeClock())
    for n in range(200):  # one pass's "anchored" lines, logged without yielding
        log.info("anchored", job=f"ns{n}/fast")
    await asyncio.sleep(0)  # the loop iteration ends
    lines = read_lines(r)
    assert [line["job"] for line in lines] == [f"ns{n}/fast" for n in range(200)]
    log.info("stopped")
    writer.close()  # the last lines are flushed on close, whatever the loop does next
    assert [line["msg"] for line in read_lines(r)] == ["stopped"]
    stream.close()
    os.close(r)


def test_without_a_loop_each_line_is_written_at_once():
    r, w = os.pipe()
    stream = os.fdopen(w, "w", buffering=1 << 16)
    bus = EventBus()
    bus.subscribe(JsonLineWriter(stream))
    Log(bus, FakeClock()).info("check-config done")
    assert [line["msg"] for line in read_lines(r)] == ["check-config done"]
    stream.close()
    os.close(r)


def test_a_line_is_what_json_writes_for_its_record_whatever_its_fields_hold():
    # a line is json.dumps({"time", "level", "msg", **fields}, default=str, ensure_ascii=False),
    # byte for byte: texts that JSON escapes, integers, booleans, nulls, floats, paths,
    # lists and objects, a field named like the record's own keys (not written)
    import random
    from pathlib import Path

    from core.clock import iso_utc
    from core.events import LogRecord
    from core.observe.logs import format_record

    rng = random.Random(24)
    chars = ['"', "\\", "\n", "\x00", "\x1f", "\x7f", "\u2028", "é", "𝄞", "a", " ", "/"]

    def text() -> str:
        return "".join(rng.choice(chars) for _ in range(rng.randrange(8)))

    values = [lambda: None, lambda: True, lambda: False, lambda: rng.randrange(-10**20, 10**20), text,
              lambda: rng.random() * 1e30, lambda: Path("/data") / text().replace("\x00", ""),
              lambda: [text(), 1], lambda: {text(): None}, lambda: ("a", 2)]
    for _ in range(2000):
        fields = {rng.choice(["time", "msg", "job", "level", text()]): rng.choice(values)() for _ in range(rng.randrange(7))}
        record = LogRecord(at=rng.random() * 2e9, level=rng.choice(["INFO", "ERROR"]), msg=text(), fields=fields)
        body: dict[str, Any] = {"time": iso_utc(record.at), "level": record.level, "msg": record.msg}
        body.update((k, v) for k, v in fields.items() if k not in body)
        assert format_record(record) == json.dumps(body, default=str, ensure_ascii=False)
