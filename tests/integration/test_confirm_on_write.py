"""A pending receipt deep enough when written is confirmed at once, not at the next round.

An EVM receipt is written `pending` even when its transaction already has the
confirmations its cadence requires (one, on a node that mines each transaction). The
tracker checks a receipt the engine has just announced without waiting its interval.
Real node (ganache), engine, receipts and tracker on a fake clock that never moves here,
so the tracker's interval never comes.
"""

from __future__ import annotations

import asyncio

from core.events import ReceiptConfirmed, ReceiptWritten
from tests.integration.test_evm import Stack, backend, node  # noqa: F401 (node: the fixture)


async def test_a_receipt_deep_enough_when_written_is_confirmed_at_once(node, tmp_path):  # noqa: F811
    evm = backend(node, tmp_path / "data", confirmations=1)
    stack = Stack(tmp_path, lambda target: evm, confirmations=1)
    asleep = asyncio.Event()
    sleep_until = stack.clock.sleep_until

    async def sleeping(deadline, wake):  # the tracker's first round is over: it waits
        asleep.set()
        await sleep_until(deadline, wake)

    stack.clock.sleep_until = sleeping
    task = asyncio.create_task(stack.tracker.run())
    try:
        await asyncio.wait_for(asleep.wait(), 10)
        await stack.engine.run_once()
        assert [e.status for e in stack.of(ReceiptWritten)] == ["pending"]  # as written
        for _ in range(100):
            if stack.of(ReceiptConfirmed):
                break
            await asyncio.sleep(0.05)
        assert len(stack.of(ReceiptConfirmed)) == 1  # was: at the next round, 5 s later
        assert [r.status for _, r in stack.all_receipts()] == ["confirmed"]
    finally:
        stack.tracker.stop()
        await asyncio.wait_for(task, 5)
    await evm.close()
