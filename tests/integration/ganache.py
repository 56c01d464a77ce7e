"""A real local EVM node for the integration tests: ganache 7 from the project's node_modules.

`make test` installs it (`npm ci`, package.json pins ganache 7.9.2; node_modules is
cached under the project). Each node listens on a free 127.0.0.1 port with chain id
1337 and ganache's deterministic accounts (1000 ETH each), mines every transaction at
once, and is stopped (SIGTERM, then SIGKILL) when the test ends. If it cannot be
started the test fails with the reason: nothing is skipped silently.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
GANACHE = ROOT / "node_modules" / ".bin" / "ganache"
CHAIN_ID = 1337
# ganache --wallet.deterministic: accounts 0 and 1 (public test keys, worthless anywhere else).
KEYS = (
    "0x4f3edf983ac636a65a842ce7c78d9aa706d3b113bce9c46f30d7d21715b23b1d",
    "0x6cbed15c793ce57650b9877cf6fa156fbef513c4e6134f022a85b1ffdd59b2a1",
)
ADDRESSES = (
    "0x90F8bf6A479f320ead074411a4B0e7944Ea8c9C1",
    "0xFFcf8FDEE72ac11b5c542428B35EEF5769C409f0",
)
START_TIMEOUT = 30.0


class GanacheError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ganache:
    """One ganache process; `rpc(method, *params)` is a synchronous JSON-RPC call for tests."""

    def __init__(self, log_dir: Path, chain_id: int = CHAIN_ID) -> None:
        self.chain_id = chain_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"ganache-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in: float | None = None

    def start(self) -> Ganache:
        if not GANACHE.exists():
            node = shutil.which("node")
            raise GanacheError(
                f"{GANACHE} is missing: run `make node_modules/.installed` (npm ci) first"
                + ("" if node else "; node is not on PATH either")
            )
        t0 = time.monotonic()
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the process for its life
        self.proc = subprocess.Popen(
            [
                str(GANACHE),
                "--chain.chainId",
                str(self.chain_id),
                "--wallet.deterministic",
                "--server.host",
                "127.0.0.1",
                "--server.port",
                str(self.port),
                "--logging.quiet",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = t0 + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise GanacheError(
                    f"ganache exited with status {self.proc.returncode} before answering; "
                    f"its output:\n{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            with contextlib.suppress(httpx.HTTPError, GanacheError):
                if int(self.rpc("eth_chainId"), 16) == self.chain_id:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise GanacheError(
                    f"ganache did not answer on {self.url} within {START_TIMEOUT:.0f} s"
                )
            time.sleep(0.1)
        self.started_in = time.monotonic() - t0
        return self

    def rpc(self, method: str, *params: object) -> Any:
        reply = httpx.post(
            self.url,
            json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)},
            timeout=10,
        ).json()
        if "error" in reply:
            raise GanacheError(f"{method}: {reply['error']}")
        return reply.get("result")

    # Conveniences the tests use.
    def mine(self, blocks: int = 1) -> None:
        for _ in range(blocks):
            self.rpc("evm_mine")

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def nonce(self, address: str, tag: str = "latest") -> int:
        return int(self.rpc("eth_getTransactionCount", address, tag), 16)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
