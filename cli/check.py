"""`vmsh-scheduler check-config`: validate the configuration and print a summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cli.common import overrides_from, print_errors

if TYPE_CHECKING:
    import argparse

    from core.config import Config, LoadedConfig


def summary(loaded: LoadedConfig) -> str:
    from core.cadence import format_seconds
    from core.config import WITNESSES_NOTE
    from core.jobs import targets_named
    from core.text import printable

    cfg = loaded.config
    lines: list[str] = []
    files = loaded.files
    lines.append("files:")
    lines += [f"  {f}" for f in files] or ["  (none)"]
    lines.append(f"data dir: {cfg.scheduler.data_dir}")
    if cfg.scheduler.store == "file":
        lines.append("store: file (the data dir; one scheduler)")
    else:  # never the user name or a password: host, port and database only
        from core.store.postgres.causes import display_url

        lines.append(f"store: {display_url(cfg.scheduler.store)} (cluster mode, lease {format_seconds(cfg.scheduler.lease)})")
    lines.append(f"http: {cfg.http.listen}   log level: {cfg.log.level}")
    lines.append(f"namespaces ({len(cfg.namespaces)}):")
    for name, ns in cfg.namespaces.items():
        desc = f"  {ns.description}" if ns.description else ""
        lines.append(f"  {name}{desc}")
        lines.append(f"    batches: {batch_source_line(cfg, name)}")
        if ns.witnesses.allowlist or ns.witnesses.min_required:
            lines.append(f"    witnesses: {ns.witnesses.summary()} ({WITNESSES_NOTE})")
    jobs = cfg.jobs()
    lines.append(f"jobs ({len(jobs)}):")
    width = max((len(str(j.key)) for j in jobs), default=0)
    twidth = max((len(j.target) for j in jobs), default=0)
    for job in jobs:
        extra = []
        if job.confirmations:
            extra.append(f"confirmations {job.confirmations}")
        if job.anchor_unchanged:
            extra.append("anchor_unchanged")
        refusal = cfg.target_mismatch(job.target)
        if refusal:  # the engine never runs it (core.engine: disabled), for this reason
            extra.append(f"disabled: {refusal}")
        tail = ("  " + ", ".join(extra)) if extra else ""
        lines.append(
            f"  {str(job.key):<{width}}  {job.target:<{twidth}}  every {format_seconds(job.every)}{tail}"
        )
    used = targets_named(jobs)
    lines.append(f"targets ({len(used)}):")
    for target in used:
        lines.append(f"  {target} -> {cfg.resolved_entry(target)}{_target_detail(cfg, target)}")
    if loaded.warnings:
        lines.append(f"warnings ({len(loaded.warnings)}):")
        lines += [f"  {w}" for w in loaded.warnings]
    lines.append(f"config hash: {loaded.hash}")
    lines.append("configuration OK")
    return "\n".join(printable(line) for line in lines)  # names and values come from the files


def _target_detail(cfg: Config, target: str) -> str:
    """What check-config shows after a target: its scheme's describe() (a host, never a
    secret or a URL's path), or nothing."""
    from core.anchors.schemes import SCHEMES

    try:
        settings = cfg.resolve_target(target)
    except LookupError:
        return ""
    shown = SCHEMES[target.partition(":")[0]].describe(settings)
    return f"  {shown}" if shown else ""


def batch_source_line(cfg: Config, namespace: str) -> str:
    """Where the namespace's batches are read from now, and whether any are there."""
    from core.sources import has_batch_files, source_folder

    own, fallbacks = cfg.batches_dir(namespace), cfg.batch_fallbacks(namespace)
    folder = source_folder(own, fallbacks)
    if folder is None:
        shared = f", nor {fallbacks[-1]}" if fallbacks else ""
        return f"MISSING: no folder {own}{shared} (each pass looks again)"
    shown = str(folder)
    if folder == cfg.shared_batches_dir and folder != own:
        shown += f" (shared: no folder {own})"
    elif folder != own:
        shown += f" (the name of earlier versions: rename it to {own.name})"
    if not has_batch_files(folder):
        shown += "  EMPTY: no batch files (*.json) yet"
    return shown


def cmd_check_config(args: argparse.Namespace) -> int:
    from core.config import ConfigError, load_config

    try:  # thorough: the dashboard's settings and the files the config names, too
        loaded = load_config(overrides=overrides_from(args), thorough=True)
    except ConfigError as exc:
        print_errors(exc)
        return 2
    print(summary(loaded))
    return 0

