"""A real Bitcoin regtest node for the tests: bcoin 1.0.2 from the project's node_modules.

`make test` installs it (`npm ci --ignore-scripts`: package.json pins bcoin 1.0.2 with
leveldown 6.1.1; no native module is built, so the node runs with NODE_BACKEND=js). Each
node keeps its chain in memory, listens for JSON-RPC on a free 127.0.0.1 port (API key
`KEY`, any user name), makes no peer connection (`--only=127.0.0.1:1`, `--listen=false`)
and is stopped (SIGTERM, then SIGKILL) when the test ends. If it cannot be started the
test fails with the reason: nothing is skipped silently.

bcoin regtest has its own address prefixes (`rb1...`, not Core's `bcrt1...`):
`address_of(script)` gives bcoin's address of a raw output script, for
`generatetoaddress`; everything else is handed to the node as raw scripts and raw
transactions. SegWit activates after `SEGWIT_HEIGHT` blocks, coinbases mature after 100.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from embit import bech32
from embit.script import Script, Witness
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

from core.anchors.btc import BtcTarget
from core.anchors.btc.tx import parse_key, signer_script
from tests.integration.ganache import free_port

ROOT = Path(__file__).resolve().parents[2]
BCOIN = ROOT / "node_modules" / "bcoin" / "bin" / "node"
KEY = "vmsh-test-api-key"
START_TIMEOUT = 30.0
SEGWIT_HEIGHT = 432  # BIP9 on bcoin regtest: witness spends are valid from here on
MATURITY = 100
# A P2WPKH output script nobody can spend (its key hash is all 0x11): where blocks pay to.
BURN = bytes([0, 20]) + bytes([0x11] * 20)
_keys = itertools.count(1000)


class BcoinError(RuntimeError):
    pass


def address_of(script: bytes) -> str:
    """bcoin regtest's address of a witness v0 output script (P2WPKH or P2WSH)."""
    if len(script) not in (22, 34) or script[0] != 0 or script[1] != len(script) - 2:
        raise BcoinError(f"not a witness v0 script: {script.hex()}")
    address: str | None = bech32.encode("rb", 0, script[2:])
    if address is None:
        raise BcoinError(f"cannot encode {script.hex()}")
    return address


class Bcoin:
    """One bcoin process; `rpc(method, *params)` is a synchronous JSON-RPC call for tests."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://x:{KEY}@127.0.0.1:{self.port}/"
        self.log_path = log_dir / f"bcoin-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in: float | None = None
        self._miner: threading.Thread | None = None
        self._mining = threading.Event()

    def start(self) -> Bcoin:
        if not BCOIN.exists():
            raise BcoinError(
                f"{BCOIN} is missing: run `make node_modules/.installed` (npm ci) first"
            )
        t0 = time.monotonic()
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the process for its life
        self.proc = subprocess.Popen(
            [
                "node",
                str(BCOIN),
                "--network=regtest",
                "--memory=true",
                "--no-wallet",
                f"--http-port={self.port}",
                f"--api-key={KEY}",
                "--workers=false",
                "--listen=false",
                "--only=127.0.0.1:1",
                "--log-level=info",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "NODE_BACKEND": "js"},
        )
        log.close()
        deadline = t0 + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise BcoinError(
                    f"bcoin exited with status {self.proc.returncode} before answering; "
                    f"its output:\n{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            with contextlib.suppress(httpx.HTTPError, BcoinError, ValueError):
                if self.rpc("getblockcount") == 0:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise BcoinError(f"bcoin did not answer on port {self.port} within {START_TIMEOUT:.0f} s")
            time.sleep(0.1)
        self.started_in = time.monotonic() - t0
        return self

    def rpc(self, method: str, *params: object) -> Any:
        reply = httpx.post(
            f"http://127.0.0.1:{self.port}/",
            auth=("x", KEY),
            json={"method": method, "params": list(params), "id": 1},
            timeout=30,
        ).json()
        if reply.get("error"):
            raise BcoinError(f"{method}: {reply['error']}")
        return reply.get("result")

    # Conveniences the tests use.
    def mine(self, blocks: int, script: bytes) -> list[str]:
        """Mine `blocks` blocks paying their coinbase to `script`; their hashes."""
        hashes: list[str] = self.rpc("generatetoaddress", blocks, address_of(script))
        return hashes

    def height(self) -> int:
        return int(self.rpc("getblockcount"))

    def funded(self, script_type: str = "p2wpkh", key_number: int | None = None, **settings: Any) -> BtcTarget:
        """`btc:regtest` settings for a fresh test key, funded by a mature coinbase (50 BTC);
        the node must be past SEGWIT_HEIGHT."""
        key = f"{next(_keys) if key_number is None else key_number:064x}"
        script = signer_script(parse_key(key), script_type)[0]
        [block_hash] = self.mine(1, script)
        coinbase = self.rpc("getblock", block_hash, True)["tx"][0]
        self.mine(MATURITY, BURN)
        return BtcTarget.model_validate(
            {"rpcUrl": self.url, "network": "regtest", "key": key, "scriptType": script_type,
             "funding": f"{coinbase}:0", "confirmations": 1, "feeRate": 2, **settings}
        )

    def small_coin(self, script: bytes, sats: int) -> str:
        """A mined coin of `sats` paying `script` ("txid:0"), split off a fresh coinbase (the
        rest burnt): a signer with little money."""
        payer = parse_key(f"{next(_keys):064x}")
        payer_script = signer_script(payer, "p2wpkh")[0]
        [block_hash] = self.mine(1, payer_script)
        coinbase = self.rpc("getblock", block_hash, True)["tx"][0]
        self.mine(MATURITY, BURN)
        value = round(float(self.rpc("gettxout", coinbase, 0)["value"]) * 100_000_000)
        tx = Transaction(
            version=2,
            vin=[TransactionInput(bytes.fromhex(coinbase), 0)],
            vout=[TransactionOutput(sats, Script(script)), TransactionOutput(value - sats - 2000, Script(BURN))],
        )
        code = Script(b"\x76\xa9\x14" + payer_script[2:] + b"\x88\xac")
        sig = payer.sign(tx.sighash_segwit(0, code, value, SIGHASH.ALL)).serialize() + bytes([SIGHASH.ALL])
        tx.vin[0].witness = Witness([sig, payer.get_public_key().sec()])
        txid = self.rpc("sendrawtransaction", tx.serialize().hex())
        self.mine(1, BURN)
        if self.rpc("gettxout", txid, 0) is None:
            raise BcoinError(f"the small coin {txid}:0 was not mined")
        return f"{txid}:0"

    def start_miner(self, interval: float = 0.05) -> None:
        """Mine a block (to BURN) whenever the mempool holds a transaction, until stop()."""
        def run() -> None:
            while self._mining.is_set():
                with contextlib.suppress(httpx.HTTPError, BcoinError, ValueError):
                    if self.rpc("getrawmempool"):
                        self.mine(1, BURN)
                time.sleep(interval)

        self._mining.set()
        self._miner = threading.Thread(target=run, name="bcoin-miner", daemon=True)
        self._miner.start()

    @contextlib.contextmanager
    def mining(self) -> Iterator[None]:
        """`start_miner` for the block, `stop_miner` after it, whatever happens."""
        self.start_miner()
        try:
            yield
        finally:
            self.stop_miner()

    def stop_miner(self) -> None:
        self._mining.clear()
        if self._miner is not None:
            self._miner.join(5)
            self._miner = None

    def stop(self) -> None:
        self.stop_miner()
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


def segwit_node(folder: Path) -> Iterator[Bcoin]:
    """A regtest node past SegWit's activation (bcoin: BIP9 at 432 blocks), stopped after:
    the body of a module fixture (`yield from segwit_node(...)`)."""
    node = Bcoin(folder).start()
    node.mine(SEGWIT_HEIGHT + 1, BURN)
    try:
        yield node
    finally:
        node.stop()
