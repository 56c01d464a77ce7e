"""Hot reload: watch the loaded configuration's files and reload when their content changes.

`watch_config(runtime, stop_event)` runs until `stop_event` is set:

- It watches the *folders* of `runtime.loaded.files` (the config file, and in the
  VaultMesh layout `namespaces.yaml` and `anchors.yaml`, plus `.env` when one was read),
  not the files: editors save by writing a temp file and renaming it over the original,
  which a watch on the file itself would lose. Only events on those file names count.
- Changes are debounced (`step_ms` of quiet, at most `debounce_ms` of grouping), then the
  files' bytes are hashed; if nothing changed (a touch, a save without edits) nothing
  happens. Otherwise `runtime.reload_off_loop()` validates and applies the new config, or
  keeps the old one and logs every problem with file:line.
- Hashing and parsing run on a worker thread, bounded in time (`RELOAD_SECONDS`) and, by
  the reader's limits, in size: a huge or hostile file written over the config (an alias
  bomb) is rejected while anchoring and the HTTP endpoints go on.
- Reloads are counted from the bus (`ConfigApplied` / `ConfigRejected`) by
  `core.observe.metrics.Metrics`, so SIGHUP reloads count the same way. An unexpected
  exception from a reload is logged and published as `ConfigRejected` here.
- If a reload changes which files make up the config, the watch follows them.
- A config file replaced by a FIFO, a device or a directory is never waited on: files are
  opened with O_NONBLOCK and read only when fstat says a regular file (the reload then
  refuses it, naming the file). The hashing and reading threads are daemon threads
  (`off_loop`) that nothing joins, so a read stuck on a hung mount never holds up a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import watchfiles

from core.config import NotRegularFile, open_regular
from core.events import ConfigRejected
from core.readers import off_loop

if TYPE_CHECKING:
    from core.control import ReloadResult
    from core.runtime import Runtime

RETRY_SECONDS = 1.0
# What watchfiles.awatch imports on its first call (anyio's asyncio backend, through
# anyio.to_thread): 0.1-0.25 s of the loop at start, /livez's slowest answer then.
AWATCH_IMPORTS = ("anyio._backends._asyncio",)


def _import_awatch_backend() -> None:
    for name in AWATCH_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:  # another anyio: awatch imports what it needs itself, as before
            pass


def config_files(runtime: Runtime) -> list[Path]:
    return [Path(p).resolve() for p in runtime.loaded.files]


def files_digest(files: list[Path]) -> str:
    """sha256 over the files' names and bytes (a missing file counts as missing), read in chunks."""
    h = hashlib.sha256()
    for path in files:
        h.update(str(path).encode() + b"\0")
        try:
            with open_regular(path) as f:  # never blocks on a FIFO
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except NotRegularFile as exc:
            h.update(f"<{exc}>".encode())
        except OSError as exc:
            h.update(f"<unreadable {exc.errno}>".encode())
        h.update(b"\0")
    return h.hexdigest()


async def reload_now(runtime: Runtime) -> ReloadResult | None:
    """`runtime.reload_off_loop()`, turning an unexpected exception into a logged, published rejection."""
    try:
        return await runtime.reload_off_loop()
    except Exception as exc:
        message = f"config reload failed: {type(exc).__name__}: {exc}"
        runtime.bus.publish(ConfigRejected(at=runtime.clock.now(), errors=(message,)))
        runtime.log.error("config reload failed; the previous config stays live", error=message)
        return None


async def watch_config(
    runtime: Runtime,
    stop_event: asyncio.Event,
    *,
    debounce_ms: int = 1600,
    step_ms: int = 100,
    force_polling: bool | None = None,
    on_reload: Callable[[ReloadResult | None], None] | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Reload `runtime` whenever its config files change on disk, until `stop_event` is set.

    `on_reload(result)` (optional) is called with each ReloadResult (None if it raised).
    `ready` (optional) is set once the folders are being watched: a change made after
    that is seen.
    """
    files = config_files(runtime)
    seen = await off_loop(functools.partial(files_digest, files))
    await off_loop(_import_awatch_backend)  # on a thread, not on the loop at awatch's first call
    while not stop_event.is_set():
        names = {str(p) for p in files}
        folders = sorted({p.parent for p in files if p.parent.is_dir()})
        if not folders:
            # Nothing to watch yet (folder removed?): look again in a moment.
            try:
                await asyncio.wait_for(stop_event.wait(), RETRY_SECONDS)
            except TimeoutError:
                pass
            files = config_files(runtime)
            continue

        def only_config(change: watchfiles.Change, path: str, names: set[str] = names) -> bool:
            return path in names or str(Path(path).resolve()) in names

        restart = False
        changes = watchfiles.awatch(
            *folders,
            watch_filter=only_config,
            debounce=debounce_ms,
            step=step_ms,
            stop_event=stop_event,
            recursive=False,
            force_polling=force_polling,
            ignore_permission_denied=True,
        )
        try:
            # aclosing: leaving the loop early (files moved) stops the watcher thread now.
            async with contextlib.aclosing(changes):
                if ready is not None:
                    # awatch registers its watches synchronously on the first __anext__,
                    # before its first await: this runs right after that.
                    asyncio.get_running_loop().call_soon(ready.set)
                async for _batch in changes:
                    digest = await off_loop(functools.partial(files_digest, files))
                    if digest == seen:
                        continue
                    seen = digest
                    runtime.log.info("config files changed; reloading", files=[p.name for p in files])
                    result = await reload_now(runtime)
                    if on_reload is not None:
                        on_reload(result)
                    new_files = config_files(runtime)
                    if new_files != files:
                        files = new_files
                        seen = await off_loop(functools.partial(files_digest, files))
                        restart = True
                        break
        except (FileNotFoundError, OSError) as exc:
            runtime.log.warning("config watch interrupted; retrying", error=f"{type(exc).__name__}: {exc}")
            try:
                await asyncio.wait_for(stop_event.wait(), RETRY_SECONDS)
            except TimeoutError:
                pass
            files = config_files(runtime)
            continue
        if not restart:
            return  # awatch ended: stop_event was set


def start_watch(runtime: Runtime, stop_event: asyncio.Event, **kw: Any) -> asyncio.Task[None]:
    """`watch_config` as a task on the running loop."""
    return asyncio.get_running_loop().create_task(watch_config(runtime, stop_event, **kw), name="config-watch")


__all__ = ["watch_config", "start_watch", "reload_now", "files_digest"]
