"""The default VaultMesh layout as the daemon runs it: 50 namespaces without a folder of
their own read the shared batch folder (10,000 files, a writer adding more), beside a
namespace on its own folder. The real Runtime, config loader and engine, on a FakeClock.

What is asserted is WHERE the shared folder is listed, never how fast: once per pass (one
change each), always on a worker thread, never on the event loop's thread; and every
namespace, the unrelated one included, anchors the latest batch every pass.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import core.engine.scheduler
from core import batchread, sources
from core.events import ReceiptWritten

NAMESPACES = 50
FILES = 10_000
PASSES = 4


def root(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def batch_text(n: int) -> str:
    return f'{{"id": "{n:06d}", "root": "{root(n)}"}}'


def config(tmp: Path) -> str:
    lines = [
        "scheduler:",
        "  tick: 1.0",
        "  data_dir: data",
        "  base_backoff: 5.0",
        "http:",
        '  listen: "127.0.0.1:0"',
        "targets:",
        "  local:",
        "    dev: {}",
        "namespaces:",
    ]
    for name in [f"ns{n}" for n in range(NAMESPACES)] + ["solo"]:
        lines += [f'  "{name}":']
        if name == "solo":
            lines += [f"    source: {tmp / 'solo'}"]
        lines += [
            "    cadence:",
            "      fast:",
            '        target: "local:dev"',
            '        every: "10s"',
            "        anchor_unchanged: false",
        ]
    return "\n".join(lines) + "\n"


async def test_a_shared_folder_is_listed_once_per_change_off_the_loop(tmp_path, stack, monkeypatch) -> None:
    shared = tmp_path / "data" / "batches"
    shared.mkdir(parents=True)
    for n in range(FILES):
        (shared / f"{n:06d}.json").write_text(batch_text(n))
    solo = tmp_path / "solo"
    solo.mkdir()
    (solo / "000001.json").write_text(batch_text(1))

    s = await stack(text=config(tmp_path), batches=False)
    receipts: list[ReceiptWritten] = []
    s.runtime.bus.subscribe(lambda e: receipts.append(e) if isinstance(e, ReceiptWritten) else None)
    sources_of = {spec.source for spec in s.engine.jobs.values()}
    assert len(sources_of) == NAMESPACES + 1  # each its own (missing) folder, but solo

    loop_thread = threading.current_thread()
    listed: list[tuple[str, threading.Thread]] = []
    real_scandir, real_newest = os.scandir, batchread.newest

    def scandir(path="."):
        listed.append((os.path.abspath(path), threading.current_thread()))
        return real_scandir(path)

    def newest_listed(folder: str, cap: int, follow: bool) -> batchread.Listed | None:
        found = real_newest(folder, cap, follow)
        if found is not None:  # listed by core/batchread.py's one call (else by os.scandir)
            listed.append((os.path.abspath(folder), threading.current_thread()))
        return found

    newest = {"shared": FILES - 1, "solo": 1}
    real_prefetch = sources.prefetch

    def prefetch_then_write(folders, wait=None):
        unanswered = real_prefetch(folders, wait)
        # the writer adds a file right after the pass's read: the folder has changed when
        # the pass takes each namespace's batch (anchored by the next pass)
        n = newest["shared"] + 1 + 1000
        (shared / f"{n:06d}.json").write_text(batch_text(n))
        return unanswered

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(batchread, "newest", newest_listed)
    monkeypatch.setattr(core.engine.scheduler, "prefetch", prefetch_then_write)
    written_late: int | None = None
    for p in range(PASSES):
        if p:
            s.clock.advance(10)
            newest["shared"] = (written_late or 0) + 1
            (shared / f"{newest['shared']:06d}.json").write_text(batch_text(newest["shared"]))
            newest["solo"] += 1
            (solo / f"{newest['solo']:06d}.json").write_text(batch_text(newest["solo"]))
        start, first = len(receipts), len(listed)
        await s.anchor_pass()
        written_late = newest["shared"] + 1 + 1000
        on_shared = [t for path, t in listed[first:] if path == str(shared)]
        assert loop_thread not in [t for _, t in listed[first:]], f"pass {p}: listed on the loop"
        assert len(on_shared) == 1, f"pass {p}: the shared folder listed {len(on_shared)} times"
        anchored = {str(e.job): e.root for e in receipts[start:]}
        assert anchored == {
            **{f"ns{n}/fast": root(newest["shared"]) for n in range(NAMESPACES)},
            "solo/fast": root(newest["solo"]),
        }, f"pass {p}"
