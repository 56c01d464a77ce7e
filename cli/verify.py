"""`vmsh-scheduler verify`: check receipts offline (core/verify.py, core/explain.py)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from cli.common import overrides_from

if TYPE_CHECKING:
    import argparse


def cmd_verify(args: argparse.Namespace) -> int:
    """OK / FAIL / CANNOT CHECK per receipt (exit 0 / 1 / 3). Trust comes from the flags,
    else from a config if one is found, read leniently: only trust bundles, node URLs and
    the data dir matter, so an unset secret variable does not stop verify."""
    from core.config import ConfigError, NoConfigFound, load_config
    from core.verify import ReadOnlyVerifiers, parse_rpc_urls, run_verify

    try:
        rpc_urls = parse_rpc_urls(args.rpc_url)
    except ValueError as exc:
        print(f"vmsh-scheduler verify: {exc}", file=sys.stderr)
        return 2
    settings_for = config_data_dir = config_problem = None
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
    if args.explain:
        from core.explain import explain_files

        return explain_files(list(args.files), sys.stdout, verifiers)
    return run_verify(list(args.files), sys.stdout, as_json=args.json, verifiers=verifiers)

