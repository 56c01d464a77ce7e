"""/health and /readyz say whether the store answers and which replicas share it (issue 17).

Real HTTP on 127.0.0.1 against a real Runtime (embedded TSA, FakeClock). Its `cluster`
attribute is set to the stand-in of tests/tui/test_replicas_pane.py, which implements
exactly the seam core/cluster.py gives the runtime (`kind`, `replicas()`, `store_problem`);
the real PostgreSQL cluster behind it is exercised by tests/cluster/.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from core.observe.http import start_http
from core.observe.metrics import Metrics
from core.runtime_control import RuntimeControl
from tests.tui.conftest import World
from tests.tui.test_replicas_pane import A_HASH, B_HASH, StandInCluster, three_replicas

SECRET = "hunter2"


@pytest.fixture
async def served(tmp_path: Path):
    """(world, client): the world's runtime served over HTTP after its first pass."""
    world = World(tmp_path)
    runtime = world.runtime
    metrics = Metrics(runtime.bus, engine=runtime.engine, receipts=runtime.receipts)
    server = await start_http(runtime, metrics, "127.0.0.1:0")
    client = httpx.AsyncClient(base_url=server.url, timeout=5.0)
    await runtime.engine.run_once()
    try:
        yield world, client
    finally:
        await client.aclose()
        await server.close()
        metrics.close()
        await runtime.engine.settle()
        runtime.engine.flush()
        await runtime.close()


async def get(client: httpx.AsyncClient, path: str) -> tuple[int, dict]:
    response = await client.get(path)
    return response.status_code, response.json()


async def test_file_store_is_ok_and_alone(served) -> None:
    world, client = served
    code, body = await get(client, "/health")
    assert (code, body["status"]) == (200, "healthy")
    assert body["store"] == {"kind": "file", "ok": True, "error": None}
    assert body["replicas"] == [] and "warnings" not in body
    code, ready = await get(client, "/readyz")
    assert (code, ready["checks"]["store"]) == (200, "ok")


async def test_cluster_store_up_lists_the_replicas_and_warns_on_different_configs(served) -> None:
    world, client = served
    now = world.clock.now()
    world.runtime.cluster = StandInCluster(three_replicas(now, b_hash=B_HASH))
    code, body = await get(client, "/health")
    assert (code, body["status"]) == (200, "healthy")  # a warning, not a status
    assert body["store"] == {"kind": "postgresql", "ok": True, "error": None}
    assert body["replicas"][0] == {
        "id": "vm-a-4242-x1y2", "host": "vm-a", "pid": 4242, "version": "0.17.0",
        "config_hash": A_HASH, "alive": True, "heartbeat_at": int(now - 3),
    }
    assert [(r["host"], r["alive"]) for r in body["replicas"]] == [("vm-a", True), ("vm-b", True), ("vm-c", False)]
    assert body["warnings"] == [
        f"replicas run different configs: {A_HASH[:12]} on vm-a:4242; {B_HASH[:12]} on vm-b:5151"
    ]
    assert (await client.get("/readyz")).status_code == 200


async def test_store_down_is_degraded_and_not_ready_without_credentials(served) -> None:
    world, client = served
    cluster = StandInCluster(
        three_replicas(world.clock.now()),
        store_problem=f"connection to postgresql://vmsh:{SECRET}@db.internal:5432/vmsh failed: refused",
    )
    world.runtime.cluster = cluster
    code, body = await get(client, "/health")
    assert (code, body["status"]) == (503, "degraded")
    assert body["store"] == {
        "kind": "postgresql", "ok": False,
        "error": "connection to postgresql://db.internal:5432 failed: refused",
    }
    code, ready = await get(client, "/readyz")
    assert (code, ready["status"], ready["checks"]["store"]) == (503, "not ready", "failed")
    for path in ("/health", "/readyz", "/metrics"):
        assert SECRET not in (await client.get(path)).text, path
    # The dashboard's snapshot says the same, by the same rule.
    assert RuntimeControl(world.runtime).snapshot().store.error == body["store"]["error"]

    cluster.store_problem = None  # the database is back
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
