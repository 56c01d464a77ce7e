"""The store: where a scheduler keeps what must survive it, behind one interface.

`open_store(url, ...)` opens the store `scheduler.store` (`VMSH_STORE`) names, by the URL's
scheme, from the one registry below:
- `file` (the default): the data dir (core/store/files/), guarded by the data-dir lock:
  one scheduler.
- a PostgreSQL URL (core/store/postgres/): several schedulers (replicas) on one database,
  each job claimed under a lease before it is anchored.

The engine, the confirmation tracker, verify and the control API see only the parts of a
`Store` (core/store/protocols.py): `state` (job state), `journal` (intents of backend calls
in flight), `receipts`, `claims` (fenced leases and the commit; the file store's always
grant: a lone scheduler owns every job), `shared` (records the backends of several replicas
share; None with the file store) and `audit`.

A new store: a package beside files/ and postgres/ with an opener
`(url, StoreOptions) -> Store`, one line in `STORES`, and one parameter of
tests/contract/test_store_contract.py.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

from core.store.protocols import (
    Audit,
    Claims,
    Committed,
    Intent,
    JournalRepo,
    Listing,
    ReceiptRepo,
    StateError,
    StateRepo,
    Store,
    StoreNotReady,
    StoreOptions,
    Superseded,
    Written,
)

Opener = Callable[[str, StoreOptions], Store]

# A store URL's scheme -> "module:opener". Imported only when a store of that scheme is
# opened (a file store never imports the PostgreSQL driver).
STORES: dict[str, str] = {
    "file": "core.store.files:open_file_store",
    "postgresql": "core.store.postgres:open_postgres_store",
    "postgres": "core.store.postgres:open_postgres_store",
}


def scheme_of(url: str) -> str:
    """`file`, or the scheme of a store URL (`postgresql://...` -> `postgresql`)."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else url


def is_postgres(url: str) -> bool:
    return scheme_of(url) in ("postgresql", "postgres")


def is_shared(url: str) -> bool:
    """A store several schedulers (replicas) share: every store but the data dir, which
    one scheduler holds under its lock."""
    return scheme_of(url) != "file"


def open_store(
    url: str, *, data_dir: str | os.PathLike[str], state_file: Path | None = None,
    env: Mapping[str, str] | None = None, lease: float = 15.0, replica: str | None = None,
) -> Store:
    """The store `url` names ("file", or a URL whose scheme is in `STORES`); ValueError for
    any other."""
    scheme = scheme_of(url)
    if scheme not in STORES:
        raise ValueError(f"no store of scheme {scheme!r}: one of {', '.join(sorted(STORES))}")
    module, _, name = STORES[scheme].partition(":")
    opener = cast(Opener, getattr(importlib.import_module(module), name))
    options = StoreOptions(
        Path(data_dir), state_file, os.environ if env is None else env, lease, replica
    )
    return opener(url, options)


__all__ = [
    "STORES",
    "Audit",
    "Claims",
    "Committed",
    "Intent",
    "JournalRepo",
    "Listing",
    "ReceiptRepo",
    "StateError",
    "StateRepo",
    "Store",
    "StoreNotReady",
    "StoreOptions",
    "Superseded",
    "Written",
    "is_postgres",
    "is_shared",
    "open_store",
    "scheme_of",
]
