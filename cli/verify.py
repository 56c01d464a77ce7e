"""`vmsh-scheduler verify`: check receipts offline (core/verify.py, core/explain.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cli.common import overrides_from
from core.errors import AnchorError

if TYPE_CHECKING:
    import argparse

    from core.config import Config
    from core.receipts import Receipt
    from core.verify import Lookup

STORE_LOOKUP = 1000  # verify --root over the store: at most this many receipts, newest first


def cmd_verify(args: argparse.Namespace) -> int:
    """OK / FAIL / CANNOT CHECK per receipt (exit 0 / 1 / 3). Trust comes from the flags,
    else from a config if one is found, read leniently: only trust bundles, node URLs and
    the data dir matter, so an unset secret variable does not stop verify."""
    from core.config import ConfigError, NoConfigFound, load_config
    from core.receipts import lookup_problem
    from core.verify import Lookup, ReadOnlyVerifiers, parse_rpc_urls, run_verify

    try:
        rpc_urls = parse_rpc_urls(args.rpc_url)
    except ValueError as exc:
        print(f"vmsh-scheduler verify: {exc}", file=sys.stderr)
        return 2
    lookup = None
    if args.root is not None or args.batch is not None:
        problem = lookup_problem(args.root, args.batch)
        if problem:
            print(f"vmsh-scheduler verify: --root/--batch: {problem}", file=sys.stderr)
            return 2
        lookup = Lookup(args.root, args.batch)
    elif not args.files:
        print("vmsh-scheduler verify: name receipt files or folders, or --root/--batch to look "
              "one up in the store", file=sys.stderr)
        return 2
    settings_for = config_data_dir = config_problem = config = None
    try:
        config = load_config(overrides=overrides_from(args), allow_unset=True).config
    except NoConfigFound:
        pass  # verify needs none
    except ConfigError as exc:
        config_problem = "; ".join(str(i) for i in exc.issues[:3])
    except Exception as exc:  # verify works without a config: never stop on one
        config_problem = f"it could not be read: {exc}"
    else:
        settings_for, config_data_dir = config.resolve_target, config.scheduler.data_dir
    verifiers = ReadOnlyVerifiers(
        trust_bundles=args.trust_bundle,
        rpc_urls=rpc_urls,
        settings_for=settings_for,
        config_data_dir=config_data_dir,
        config_problem=config_problem,
        data_dir=getattr(args, "data_dir", None),
    )
    loaded: list[tuple[Path, Receipt]] = []
    if lookup is not None and not args.files:
        data_dir = getattr(args, "data_dir", None) or (config.scheduler.data_dir if config else None)
        if data_dir is None:
            print("vmsh-scheduler verify: --root without receipt files looks in the config's store, "
                  f"and there is no config{verifiers.no_config()}: name a folder of receipts", file=sys.stderr)
            return 2
        try:
            loaded = store_receipts(config, Path(data_dir), lookup)
        except AnchorError as exc:
            print(f"vmsh-scheduler verify: the store: {exc}", file=sys.stderr)
            return 3
    if args.explain:
        from core.explain import explain_files
        from core.verify import chosen

        files = [path for path, _, _ in chosen(list(args.files), lookup, loaded)] if lookup else list(args.files)
        if lookup is not None and not files:
            print(f"vmsh-scheduler verify: no receipt of {lookup.text} to explain", file=sys.stderr)
            return 1
        return explain_files(files, sys.stdout, verifiers)
    return run_verify(list(args.files), sys.stdout, as_json=args.json, verifiers=verifiers, lookup=lookup, loaded=loaded)


def store_receipts(config: Config | None, data_dir: Path, lookup: Lookup) -> list[tuple[Path, Receipt]]:
    """The receipts `lookup` picks in the config's store (the data dir's receipts/ without
    a config, or with a file store), newest first; reads only."""
    from core.receipts import Receipt
    from core.store import is_postgres

    if config is None or not is_postgres(config.scheduler.store):
        from core.store.files.receipts import ReceiptStore

        store = ReceiptStore(data_dir / "receipts")
        found = store.find(root=lookup.root, batch_id=lookup.batch_id, limit=STORE_LOOKUP)
    else:
        from core.store.postgres.database import Database, store_password
        from core.store.postgres.receipts import PgReceiptStore

        db = Database(config.scheduler.store, password=store_password(os.environ), statement_seconds=None)
        try:
            found = PgReceiptStore(db, "verify").find(root=lookup.root, batch_id=lookup.batch_id, limit=STORE_LOOKUP)
        finally:
            db.close()
    return [(path, item) for path, item in found if isinstance(item, Receipt)]

