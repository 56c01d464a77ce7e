"""The child process of core/store/files/receipt_process.py: writes the chunks of receipts
its scheduler sends, with `ReceiptStore`'s group commit, and answers each.

`python -m core.store.files.receipt_worker <receipts root> <requests fd> <answers fd>`.
It ignores SIGINT, SIGTERM and SIGHUP (they reach a terminal's whole process group; the
scheduler decides when a chunk is over) and ends at the end of its requests' pipe.
"""

from __future__ import annotations

import signal
import sys

from core.store.files.receipt_process import picklable, read_message, write_message
from core.store.files.receipts import ReceiptStore


def serve(root: str, requests_fd: int, answers_fd: int) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    store = ReceiptStore(root)
    with open(requests_fd, "rb") as requests, open(answers_fd, "wb") as answers:
        while True:
            request = read_message(requests)
            if request is None:
                return 0
            items, known = request
            outcomes = store.write_streamed(items, known, requests)
            write_message(answers, [picklable(outcome) for outcome in outcomes])


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
