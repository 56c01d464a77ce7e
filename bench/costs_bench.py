"""What one reply check and one config load cost, beside the machine's own references.

Rows (issue 24), each a few seconds at most:

* checking one RFC 3161 reply: `verify_response` on a real TimeStampResp of the embedded
  TSA (core/anchors/local/), every check (imprint, nonce, policy, signature over the signed
  attributes as sent, ESS, EKU, path at genTime, OpenSSL's second opinion);
* config load, 10,000 namespaces: `load_config` of a plain config.yaml (about 1.6 MB, the
  file of bench/headless_bench.py) and of the VaultMesh layout (VMSH_ROOT with a
  namespaces.yaml of three cadences per namespace and the layout's anchors.yaml);
* the physical references, independent of the code measured above: the embedded TSA
  alone (requests answered per second and CPU per request, `LocalTSA.respond`) and the raw
  fsync rate of the disk under the bench's data dirs (a 4 KiB write and an fsync, again
  and again, in a file under BENCH_DATA_DIR or the temp folder).

Figures are CPU seconds of this process, the best of a few rounds: on a shared machine
wall-clock time and the other rounds measure the neighbours too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.headless_bench import make_config
from core.anchors.local.backend import LOCAL_POLICY_OID, LocalTSA
from core.anchors.tsp import build_request, new_nonce, verify_response
from core.clock import SystemClock
from core.config import load_config

NAMESPACES = 10_000
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "vaultmesh"
VAULTMESH_ENV = {  # what the layout's anchors.yaml reads
    "EVM_RPC": "https://rpc.example/v3/abc",
    "EVM_CHAIN_ID": "8453",
    "EVM_CONTRACT": "0x00000000000000000000000000000000000000aa",
    "EVM_ANCHOR_KEY": "0x" + "11" * 32,
    "BTC_RPC": "http://127.0.0.1:18443",
    "TSA_URL": "https://tsa.example/tsr",
}


def best(rounds: int, run: Callable[[], object]) -> float:
    """The least CPU time of `rounds` runs, in seconds (this process's CPU: the time the
    neighbours take on a shared machine is not counted, the work is)."""
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        run()
        times.append(time.process_time() - t0)
    return min(times)


def reply_check(tmp: Path) -> float:
    """Seconds to check one reply of the embedded TSA (best of 5 rounds of 100 replies, each
    a different one: its own digest, nonce, serial and signature, as in service, so that
    nothing learnt from one reply's bytes can make the next one cheaper)."""
    tsa = LocalTSA(tmp / "reply-data", "bench", SystemClock())
    per_round = 100
    asked = []
    for i in range(per_round):
        digest, nonce = hashlib.sha256(b"reply %d" % i).digest(), new_nonce()
        asked.append((tsa.respond(build_request(digest, nonce=nonce, cert_req=True)), digest, nonce))
    roots = [tsa.certificate]

    def check(reply: bytes, digest: bytes, nonce: int) -> None:
        verify_response(
            reply, digest=digest, nonce=nonce, policy_oid=LOCAL_POLICY_OID, trust_roots=roots,
            now=time.time(), max_clock_skew=60.0, hash_name="sha256",
        )

    def check_all() -> None:
        for one in asked:
            check(*one)

    check(*asked[0])  # the imports done
    return best(5, check_all) / per_round


def vaultmesh_layout(root: Path, n: int) -> Path:
    """A VaultMesh checkout with n namespaces of three cadences each (the fixture's form)."""
    config = root / "vmsh" / "config"
    config.mkdir(parents=True)
    shutil.copyfile(FIXTURES / "anchors.yaml", config / "anchors.yaml")
    lines = ["namespaces:"]
    for i in range(n):
        lines += [
            f"  team{i}:ledger:",
            f'    description: "ledger of team {i}"',
            "    cadence:",
            '      fast:   { target: "eip155:8453", every: "89s", confirmations: 3 }',
            '      strong: { target: "btc:mainnet", every: "34*fast", confirmations: 6 }',
            '      cold:   { target: "rfc3161:tsa", every: "1d" }',
        ]
    (config / "namespaces.yaml").write_text("\n".join(lines) + "\n")
    return config / "namespaces.yaml"


def config_loads(tmp: Path) -> tuple[tuple[float, int], tuple[float, int]]:
    """(seconds, bytes) of loading the plain config and the VaultMesh layout (best of 3 each)."""
    plain = make_config(tmp / "plain", NAMESPACES)
    vm_root = tmp / "vaultmesh"
    namespaces = vaultmesh_layout(vm_root, NAMESPACES)
    env = {"VMSH_ROOT": str(vm_root), **VAULTMESH_ENV}

    def load(path: Path | None, env: dict[str, str]) -> None:
        loaded = load_config(path, env=env, cwd=tmp)
        assert len(loaded.config.namespaces) == NAMESPACES, len(loaded.config.namespaces)

    return (
        (best(3, lambda: load(plain, {})), plain.stat().st_size),
        (best(3, lambda: load(None, env)), namespaces.stat().st_size),
    )


def tsa_alone(tmp: Path, seconds: float = 1.0) -> tuple[float, float]:
    """Requests per second and CPU seconds per request of the embedded TSA answering
    TimeStampReqs (no HTTP, no check of its replies)."""
    tsa = LocalTSA(tmp / "tsa-data", "bench", SystemClock())
    request = build_request(hashlib.sha256(b"tsa alone").digest(), nonce=new_nonce(), cert_req=True)
    tsa.respond(request)
    count = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tsa.respond(request)
        count += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return count / wall, cpu / count


def fsync_rate(folder: Path, seconds: float = 1.0) -> float:
    """fsyncs per second of a file in `folder`, each after a 4 KiB write."""
    path = folder / "fsync-probe"
    block = os.urandom(4096)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        count = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            os.pwrite(fd, block, 0)
            os.fsync(fd)
            count += 1
        return count / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()


def run() -> list[tuple[str, str, str]]:
    data_root = os.environ.get("BENCH_DATA_DIR") or None
    with tempfile.TemporaryDirectory(prefix="vmsh-costs-bench-", dir=data_root) as name:
        tmp = Path(name)
        check = reply_check(tmp)
        (plain, plain_bytes), (layout, layout_bytes) = config_loads(tmp)
        rate, cpu = tsa_alone(tmp)
        fsyncs = fsync_rate(tmp)
    return [
        ("checking one RFC 3161 reply (embedded TSA's token, every check)", f"{check * 1e3:.2f} ms CPU", "< 1 ms (was 14.8 ms)"),
        (
            f"config load, {NAMESPACES:,} namespaces (config.yaml, {plain_bytes / 1e6:.1f} MB)",
            f"{plain:.2f} s CPU",
            "< 0.5 s (was 5.3 s)",
        ),
        (
            f"config load, {NAMESPACES:,} namespaces (VaultMesh namespaces.yaml, 3 cadences each, {layout_bytes / 1e6:.1f} MB)",
            f"{layout:.2f} s CPU",
            "< 0.5 s",
        ),
        ("reference: the embedded TSA alone, requests answered", f"{rate:,.0f} /s", f"{cpu * 1e3:.2f} ms CPU per request"),
        ("reference: raw fsync rate of the data dir's disk (4 KiB write + fsync)", f"{fsyncs:,.0f} /s", f"in {data_root or tempfile.gettempdir()}"),
    ]


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
