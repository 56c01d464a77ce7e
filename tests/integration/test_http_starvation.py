"""Idle and slow clients cannot starve /health: real sockets on 127.0.0.1 against the real server.

Every loop here is bounded by a deadline and stops by itself; the attackers are torn down
at the end of each test whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

IDLE = 300
SLOWLORIS = 20
ATTACK_SECONDS = 3.0
ANSWER_WITHIN = 1.0


async def probe(port: int, path: str = "/health") -> tuple[bytes, float]:
    """One request on a fresh connection: (what came back, seconds it took)."""
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), ANSWER_WITHIN)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
        await writer.drain()
        left = ANSWER_WITHIN - (time.monotonic() - started)
        answer = await asyncio.wait_for(reader.read(), max(left, 0.001))
    finally:
        writer.close()
    return answer, time.monotonic() - started


async def idle_client(port: int, until: float, opened: list[int]) -> None:
    """Holds a connection open and sends nothing; opens another when the server closes it."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        opened[0] += 1
        try:
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(reader.read(), max(until - time.monotonic(), 0.001))
        finally:
            writer.close()
        await asyncio.sleep(0.05)


async def slowloris(port: int, until: float, cut_after: list[float]) -> None:
    """Trickles a request head one byte every 0.5 s; records how long the server kept it."""
    head = b"GET /health HTTP/1.1\r\nHost: slow\r\nX-Pad: " + b"a" * 100
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        opened = time.monotonic()
        try:
            for byte in head:
                if time.monotonic() >= until:
                    return
                writer.write(bytes([byte]))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(1024), 0.5)
                    break  # answered (a 408) or closed: the server let go of it
        except OSError:
            pass
        finally:
            cut_after.append(time.monotonic() - opened)
            writer.close()


async def test_health_answers_within_a_second_while_hundreds_of_idle_and_slow_clients_connect(stack):
    s = await stack({"a": {"fast": "10s"}})
    await s.anchor_pass()
    port = s.server.port
    until = time.monotonic() + ATTACK_SECONDS
    opened = [0]
    cut_after: list[float] = []
    attackers = [asyncio.create_task(idle_client(port, until, opened)) for _ in range(IDLE)]
    attackers += [asyncio.create_task(slowloris(port, until, cut_after)) for _ in range(SLOWLORIS)]
    answers: list[tuple[bytes, float]] = []
    try:
        # Let every idle connection open first, then probe until the attack ends.
        deadline = time.monotonic() + ATTACK_SECONDS
        while opened[0] < IDLE and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert opened[0] >= IDLE
        while time.monotonic() < until - ANSWER_WITHIN:
            try:
                answers.append(await probe(port))
            except (TimeoutError, OSError) as exc:
                answers.append((repr(exc).encode(), ANSWER_WITHIN))
            await asyncio.sleep(0.2)
    finally:
        for task in attackers:
            task.cancel()
        await asyncio.gather(*attackers, return_exceptions=True)
    assert len(answers) >= 5
    bad = [(a[:40], round(t, 3)) for a, t in answers if not a.startswith(b"HTTP/1.1 200 ") or t > ANSWER_WITHIN]
    assert not bad, f"{len(bad)} of {len(answers)} /health probes not answered within {ANSWER_WITHIN}s: {bad[:5]}"
    # The slow clients were cut off after about a second, not kept for the attack's length.
    assert cut_after and max(cut_after) < 2.0, cut_after
    # /metrics is served under the same conditions once the attack is over, and at once.
    answer, took = await probe(port, "/metrics")
    assert answer.startswith(b"HTTP/1.1 200 ") and took < ANSWER_WITHIN


async def test_a_request_head_trickled_a_byte_at_a_time_is_cut_off_after_about_a_second(stack):
    s = await stack({"a": {"fast": "10s"}})
    reader, writer = await asyncio.open_connection("127.0.0.1", s.server.port)
    started = time.monotonic()
    try:
        answer = b""
        for byte in b"GET /health HTTP/1.1\r\nX-Slow: aaaaaa":
            if time.monotonic() - started > 3.0:
                break
            writer.write(bytes([byte]))
            with contextlib.suppress(TimeoutError):
                answer = await asyncio.wait_for(reader.read(1024), 0.5)  # returns what came
                break
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 1.6
