"""Start-up cost of finding the pending receipts among many.

100,000 receipts on disk (a day of 1,000 jobs on a 90 s cadence is about 1,000,000), of
which 10 are pending (EVM receipts waiting for confirmations). Each start must find the
pending ones to count them (`vmsh_receipts_pending`) and track them. Timed: a fresh
`ReceiptStore.pending()` on a data dir from before the pending index (every receipt read
once, then the index is built), and on one with the index (only the marked ones read).
Also `ReceiptStore.find` by root over the same store (the worst case: the oldest receipt).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from core.fsutil import dumps_json
from core.jobs import safe_name
from core.receipts import Receipt, build_receipt
from core.store.files.receipts import ReceiptStore

RECEIPTS = 100_000
PENDING = 10
NAMESPACES = 100


def receipt(i: int, status: str) -> Receipt:
    root = f"{i:064x}"
    return build_receipt(
        namespace=f"bench:{i % NAMESPACES}", cadence="fast", target="eip155:8453",
        batch_id=f"{i:06d}", batch_root="sha256:" + root, anchored_root=bytes.fromhex(root),
        proof=[], leaf_index=0, tree_size=1,
        attestation={"scheme": "eip155", "tx_hash": "0x" + root},
        status=status, confirmations_required=3 if status == "pending" else 0,
        confirmations_observed=0, anchored_at=1767225600.0 + i, version="bench", config_hash="bench",
    )


def run() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory(prefix="vmsh-receipts-bench-") as name:
        root = Path(name) / "receipts"
        store = ReceiptStore(root)
        store.pending()  # a new data dir: the (empty) index is complete from the start
        for i in range(RECEIPTS):
            if i % (RECEIPTS // PENDING) == 0:
                store.write(receipt(i, "pending"))  # the real path: the index's list, then the receipt
            else:  # set-up only: the confirmed ones written plainly, without an fsync each
                doc = receipt(i, "confirmed")
                folder = root / safe_name(doc.namespace)
                folder.mkdir(exist_ok=True)
                (folder / store.file_name(doc)).write_bytes(dumps_json(doc.to_json()))
        t0 = time.perf_counter()
        found = ReceiptStore(root).pending()
        indexed = time.perf_counter() - t0
        assert len(found) == PENDING, len(found)

        for entry in (root / ReceiptStore.INDEX).rglob("*"):
            if entry.is_file():
                entry.unlink()  # as a data dir from before the index
        t0 = time.perf_counter()
        found = ReceiptStore(root).pending()
        scanned = time.perf_counter() - t0
        assert len(found) == PENDING, len(found)

        # verify --root / ctl receipt / GET /v1/receipts?root= on a file store: every file
        # read, the one holding the root parsed. The oldest receipt: the whole store scanned.
        wanted = receipt(1, "confirmed").batch.root
        t0 = time.perf_counter()
        hits = ReceiptStore(root).find(root=wanted, limit=1)
        looked_up = time.perf_counter() - t0
        assert [r.batch.root for _, r in hits] == [wanted], hits
    return [
        (
            f"pending receipts at start, {RECEIPTS:,} on disk ({PENDING} pending), with the index",
            f"{indexed * 1e3:.1f} ms",
            "reads only the pending ones",
        ),
        (
            f"pending receipts at start, {RECEIPTS:,} on disk, no index (older data dir)",
            f"{scanned:.2f} s",
            "once: the index is built then",
        ),
        (
            f"a receipt by root (verify --root, ctl receipt), {RECEIPTS:,} on disk, the oldest",
            f"{looked_up:.2f} s",
            "file store: reads every file (PostgreSQL: one query)",
        ),
    ]


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
