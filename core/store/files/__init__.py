"""The file store (`scheduler.store: file`, the default): the data dir, one scheduler.

- `state.py`: job state, `<data_dir>/state/scheduler.json` (or VMSH_STATE)
- `journal.py`: intents of backend calls in flight, `<data_dir>/journal/`
- `receipts.py`: receipts, `<data_dir>/receipts/<namespace>/`, and their pending index
- `claims.py`: a lone scheduler's claims (always granted, fenced in memory)
- `audit.py`: the control API's audit log, `<data_dir>/audit.jsonl`
- `lock.py`: the data-dir lock that keeps a second scheduler out
"""

from __future__ import annotations

from core.store.files.audit import FileAudit
from core.store.files.claims import FileClaims
from core.store.files.journal import IntentJournal
from core.store.files.receipts import ReceiptStore
from core.store.files.state import StateStore
from core.store.protocols import Store, StoreOptions


def open_file_store(url: str, options: StoreOptions) -> Store:
    """The file store on `options.data_dir` (the state file: `options.state_file`)."""
    data_dir = options.data_dir
    receipts = ReceiptStore(data_dir / "receipts", in_a_process=True)
    return Store(
        kind="file",
        display=str(data_dir),
        state=StateStore(options.state_file or data_dir / "state" / "scheduler.json"),
        journal=IntentJournal(data_dir / "journal"),
        receipts=receipts,
        audit=FileAudit(data_dir / "audit.jsonl"),
        claims=FileClaims(receipts),
        keep_lock=receipts.keep_open_in_process,
        release=receipts.close,
    )


__all__ = ["FileAudit", "FileClaims", "IntentJournal", "ReceiptStore", "StateStore", "open_file_store"]
