"""A local Bitcoin regtest node for trying `btc:` targets: `make btc-regtest`.

Starts bcoin (node_modules, `make node_modules/.installed`) on 127.0.0.1:PORT with its chain
in memory, mines past SegWit activation, makes a signing key (DIR/btc-key, mode 0600) and
funds it with a mature coinbase, writes DIR/config.yaml (one namespace `demo:btc` anchored
to `btc:regtest`, its batch in DIR/batches) and DIR/node.env (BTC_NODE=the RPC URL), then
mines a block whenever a transaction waits, until Ctrl-C (the chain is gone then).

    .venv/bin/python scripts/btc_regtest.py [--dir .btc-demo] [--port 18443]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.anchors.btc.tx import parse_key, signer_script  # noqa: E402
from core.sources import write_batch  # noqa: E402
from tests.integration.bcoin import BURN, SEGWIT_HEIGHT, Bcoin  # noqa: E402

CONFIG = """\
scheduler:
  data_dir: {dir}/data
http:
  listen: "127.0.0.1:0"
targets:
  btc:
    regtest:
      rpcUrl: "{url}"
      network: regtest
      keyFile: {dir}/btc-key
      funding: "{funding}"
      confirmations: 1
namespaces:
  "demo:btc":
    source: {dir}/batches
    cadence:
      fast: {{target: "btc:regtest", every: "1h", confirmations: 1}}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(".btc-demo"))
    parser.add_argument("--port", type=int, default=18443)
    args = parser.parse_args()
    folder = args.dir.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    node = Bcoin(folder, port=args.port).start()
    try:
        node.mine(SEGWIT_HEIGHT + 1, BURN)
        key_file = folder / "btc-key"
        key_file.touch(mode=0o600)
        key_file.write_text(os.urandom(32).hex() + "\n")
        script = signer_script(parse_key(key_file.read_text()), "p2wpkh")[0]
        [block] = node.mine(1, script)
        coinbase = node.rpc("getblock", block, True)["tx"][0]
        node.mine(100, BURN)
        (folder / "config.yaml").write_text(CONFIG.format(dir=folder, url=node.url, funding=f"{coinbase}:0"))
        (folder / "node.env").write_text(f"BTC_NODE={node.url}\n")
        write_batch(folder / "batches", "1", "sha256:" + os.urandom(32).hex())
        node.start_miner()
        print(f"bcoin regtest on 127.0.0.1:{args.port}, height {node.height()}; config {folder / 'config.yaml'}",
              flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
