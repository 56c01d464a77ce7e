"""One running scheduler, wired from a loaded configuration.

Both run modes (headless and the dashboard) build a Runtime: it owns the data-dir lock,
the stores, the backends, the engine and the reload path, so the two modes differ
only in what they show.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core import __version__, sources
from core.anchors.registry import Backends
from core.anchors.schemes import SCHEMES
from core.backoff import BackoffPolicy
from core.clock import Clock, SystemClock
from core.config import Config, ConfigError, ConfigIssue, LoadedConfig
from core.control import ReloadResult
from core.engine import PlannedJobs, Scheduler, plan_jobs
from core.errors import AnchorError
from core.events import ConfigRejected, EventBus
from core.jobs import targets_named
from core.migrate import StateImport, StateImportError, import_original_state, state_files
from core.observe.logs import Log
from core.readers import off_loop
from core.store import StateError, Store, StoreNotReady, is_shared, open_store
from core.store.files.lock import DataDirLock, LockHeld, NoLock
from core.store.files.state import StateStore

if TYPE_CHECKING:
    from core.observe.wallets import WalletWatch
    from core.replicas import ClusterView

Loader = Callable[[], LoadedConfig]


@dataclass(frozen=True)
class ReloadPlan:
    """A loaded config made ready to apply: the settings only a restart applies, each batch
    folder's read limits, the jobs (from the data dir in use)."""

    loaded: LoadedConfig
    restart: list[str]
    batch_limits: sources.KeyedLimits
    jobs: PlannedJobs  # keyed, a record made for each: the loop only switches them in


def _configured_store(cfg: Config, state_file: Path) -> Store:
    """The store `scheduler.store` names (a shared one is made ready by Runtime.open)."""
    return open_store(
        cfg.scheduler.store, data_dir=cfg.scheduler.data_dir, state_file=state_file, env=os.environ,
        lease=cfg.scheduler.lease,
    )

# A hot reload that has not read and validated the files after this long is given up (the
# old config stays live). The reader's own limits (core.config: size, aliases, nesting)
# bound it well below this; 10,000 namespaces load in about 4 s on a busy 2-core machine.
RELOAD_SECONDS = 30.0


class CannotStart(Exception):
    """The scheduler cannot start on this data dir; the message says why, for stderr."""


class Runtime:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        loader: Loader | None = None,
        clock: Clock | None = None,
        bus: EventBus | None = None,
        rng: random.Random | None = None,
        lock: DataDirLock | None = None,
        store: Store | None = None,
    ) -> None:
        self.loaded = loaded
        self.started_with = loaded.config  # what the start-only settings really are
        self._loader = loader
        self.clock = clock or SystemClock()
        self.bus = bus or EventBus()
        cfg = loaded.config
        self.data_dir = Path(cfg.scheduler.data_dir)
        self.log = Log(self.bus, self.clock, cfg.log.level)
        self.lock = lock or DataDirLock(self.data_dir)
        state_file = _state_file(cfg)
        self.state_file = state_file
        self.store = store or _configured_store(cfg, state_file)
        if self.lock.fd is not None:
            self.store.keep_lock(self.lock.fd)
        self.receipts = self.store.receipts
        self.cluster: ClusterView | None = None  # cluster mode: set when the run starts (core/services.py)
        self.wallets: WalletWatch | None = None  # the signers' balances: set when the run starts
        sources.configure(cfg.batch_limits())
        self.state_import: StateImport | None = None  # what open() imported, logged by announce()
        self._reading: asyncio.Future[ReloadPlan] | None = None  # a reload's worker thread
        self._reload_tasks: set[asyncio.Task[ReloadResult]] = set()
        self.backends = Backends(cfg.resolve_target, self.data_dir, self.clock, self.store.shared)
        self.engine = Scheduler(
            jobs=cfg.jobs(),
            clock=self.clock,
            bus=self.bus,
            backend_for=self.backends,
            state_store=self.store.state,
            journal=self.store.journal,
            receipts=self.receipts,
            claims=self.store.claims,
            lease=cfg.scheduler.lease,
            policy=BackoffPolicy(
                base=cfg.scheduler.base_backoff,
                max_level=cfg.scheduler.max_backoff_level,
                rng=rng or random.Random(),
            ),
            concurrency=cfg.scheduler.concurrency,
            tick=cfg.scheduler.tick,
            stale_factor=cfg.scheduler.stale_factor,
            config_hash=loaded.hash,
            target_guard=functools.cache(cfg.target_mismatch),
            log=self.log,
        )

    @classmethod
    def open(
        cls, loaded: LoadedConfig, *, loader: Loader | None = None, clock: Clock | None = None
    ) -> Runtime:
        """Lock the data dir, then load state and journal: how both run modes start.

        Raises CannotStart with a message for the operator (another scheduler holds the
        data dir, it cannot be created, a folder it writes to is not writable, the state
        file is corrupt, the original service's state to import is malformed), never a
        traceback. On the first start it imports that state first (core/migrate.py).
        """
        data_dir = Path(loaded.config.scheduler.data_dir)
        if is_shared(loaded.config.scheduler.store):
            return cls._open_clustered(loaded, loader=loader, clock=clock)
        lock = DataDirLock(data_dir)
        try:
            lock.acquire()
        except LockHeld as exc:
            raise CannotStart(str(exc)) from exc
        except OSError as exc:
            raise CannotStart(f"cannot use the data dir {data_dir}: {exc.strerror or exc}") from exc
        try:
            imported = _import_state(loaded)  # before the engine reads our state
            runtime = cls(loaded, loader=loader, lock=lock, clock=clock)
            runtime.state_import = imported
            for folder in _written_folders(loaded.config):  # once the state is known good
                _check_writable(folder)
            return runtime
        except StateImportError as exc:
            lock.release()
            raise CannotStart(
                f"{exc}\n  fix it, or start without importing (unset VMSH_STATE, or drop "
                "--import-state): every job then anchors at once"
            ) from exc
        except CannotStart:
            lock.release()
            raise
        except StateError as exc:
            lock.release()
            raise CannotStart(
                f"{exc}\n  fix it, or move it aside to start afresh: every job then anchors once "
                "more, and receipts are not touched"
            ) from exc
        except OSError as exc:
            lock.release()
            raise CannotStart(f"cannot start on {data_dir}: {exc}") from exc

    @classmethod
    def _open_clustered(cls, loaded: LoadedConfig, *, loader: Loader | None, clock: Clock | None) -> Runtime:
        """Cluster mode: no data-dir lock (replicas share the store, each job is claimed
        under a lease); the store made ready (a new database's schema created, an older one
        refused: `Store.make_ready`)."""
        cfg = loaded.config
        try:
            store = _configured_store(cfg, _state_file(cfg))
        except AnchorError as exc:
            raise CannotStart(str(exc)) from exc
        try:
            store.make_ready()
            Path(cfg.scheduler.data_dir).mkdir(parents=True, exist_ok=True, mode=0o750)
            return cls(loaded, loader=loader, lock=NoLock(Path(cfg.scheduler.data_dir)), clock=clock, store=store)
        except StoreNotReady as exc:
            store.close()
            raise CannotStart(str(exc)) from exc
        except CannotStart:
            store.close()
            raise
        except (AnchorError, StateError, OSError) as exc:
            store.close()
            raise CannotStart(f"cannot start on the store {store.display}: {exc}") from exc

    def release(self) -> None:
        self.lock.release()

    def announce(self) -> None:
        jobs = self.engine.jobs  # a copy: read once (100,000 jobs: 65 ms each)
        self.log.info(
            "scheduler started",
            version=__version__,
            config_hash=self.loaded.hash[:12],
            jobs=len(jobs),
            data_dir=str(self.data_dir),
        )
        if self.lock.taken_over is not None:
            self.log.warning(
                "took over the data dir lock from a scheduler that ended without releasing it "
                "(killed or crashed); what it left in flight is resolved from the journal",
                previous_pid=self.lock.taken_over,
            )
        for warning in self.loaded.warnings:
            self.log.warning(warning)
        if self.state_import is not None:
            self.log.info(self.state_import.message, **self.state_import.log_fields())
        for target in targets_named(jobs.values()):
            development = SCHEMES[target.partition(":")[0]].development
            if development:
                self.log.warning(f"target is {development}: it proves nothing to third parties", target=target)
                # Cluster mode only (the file store's claims always grant: one scheduler).
                if self.store.shared is not None:  # its key lives in each replica's data dir
                    self.log.warning(
                        "cluster mode with a development target: each replica signs with a key of "
                        "its own data dir; use a real target for receipts others verify", target=target,
                    )

    def reload(self, load: Loader | None = None) -> ReloadResult:
        """Load the configuration again; apply it if valid and different, else keep the old.

        `load` (default: the runtime's loader) reads the files, here; `reload_off_loop`
        reads them and makes the plan on a worker thread, then applies it as this does.
        """
        load = load or self._loader
        if load is None:
            return ReloadResult(False, False, ["this scheduler was started without a config source"], "")
        return self._apply_plan(lambda: self._plan(load()))

    def _plan(self, loaded: LoadedConfig) -> ReloadPlan:
        """What applying `loaded` takes that does not touch the engine (on a worker thread
        for `reload_off_loop`: for 10,000 namespaces, 50-100 ms the loop no longer spends)."""
        if loaded.hash == self.loaded.hash:  # checked again where it is applied
            return ReloadPlan(loaded, [], sources.KeyedLimits(), plan_jobs(()))
        running = self._on_running_data_dir(loaded.config)
        return ReloadPlan(
            loaded, restart_needed(self.started_with, loaded.config), running.batch_limits(),
            plan_jobs(running.jobs()),
        )

    def _apply_plan(self, make: Callable[[], ReloadPlan]) -> ReloadResult:
        try:
            plan = make()
        except ConfigError as exc:
            errors = [str(issue) for issue in exc.issues] or [str(exc)]
            self.bus.publish(ConfigRejected(at=self.clock.now(), errors=tuple(errors)))
            for line in errors:
                self.log.error("config reload rejected; the previous config stays live", error=line)
            return ReloadResult(False, False, errors, f"rejected: {len(errors)} error(s)")
        loaded, restart = plan.loaded, plan.restart
        if loaded.hash == self.loaded.hash:
            self.log.info("config reload: no change", config_hash=loaded.hash[:12])
            return ReloadResult(True, False, [], "no change")
        if restart:
            self.log.warning(
                "config reload: restart needed for these settings; they keep their running "
                "values until then",
                settings=", ".join(restart),
            )
        self.loaded = loaded
        sources.configure(plan.batch_limits)
        self.backends.update(loaded.config.resolve_target)
        event = self.engine.apply(plan.jobs, loaded.hash, target_guard=functools.cache(loaded.config.target_mismatch))
        for warning in loaded.warnings:
            self.log.warning(warning)
        summary = f"+{len(event.added)} -{len(event.removed)} ~{len(event.changed)} jobs"
        if restart:
            summary += f"; restart needed: {', '.join(restart)}"
        return ReloadResult(True, True, [], summary)

    def _on_running_data_dir(self, config: Config) -> Config:
        """`config` with the data dir in use, for its jobs' default batch folders: a new
        data_dir waits for a restart, so the batches under it do too."""
        if config.scheduler.data_dir != self.started_with.scheduler.data_dir:
            scheduler = config.scheduler.model_copy(update={"data_dir": self.data_dir})
            config = config.model_copy(update={"scheduler": scheduler})
        return config

    async def reload_off_loop(self, timeout: float = RELOAD_SECONDS) -> ReloadResult:
        """`reload()` with the files read and validated on a worker thread, for at most
        `timeout` seconds: anchoring goes on meanwhile, and a file that takes longer is
        rejected (the old config stays live). Applying the result stays on the loop.
        """
        loader = self._loader
        if loader is None:
            return self.reload()
        if self._reading is not None and not self._reading.done():
            return self.reload(_failing("a previous reload is still reading the config files"))
        # A daemon thread nothing joins (core.observe.watch.off_loop): a read that never
        # returns (a hung mount) cannot hold up the stop or the process's exit.
        self._reading = reading = off_loop(lambda: self._plan(loader()))
        try:
            plan = await asyncio.wait_for(asyncio.shield(reading), timeout)
        except ConfigError as exc:
            return self.reload(_failing(exc))
        except TimeoutError:
            # The thread cannot be stopped; its result is dropped, and no reload starts
            # another until it ends (see above).
            return self.reload(_failing(f"reading the config files took more than {timeout:g} s"))
        except Exception as exc:  # a bug in loading must not end the caller's task
            return self.reload(_failing(f"config reload failed: {type(exc).__name__}: {exc}"))
        return self._apply_plan(lambda: plan)

    def reload_in_background(self) -> None:
        """`reload_off_loop()` as a task on the running loop: what a SIGHUP handler calls."""
        task = asyncio.get_running_loop().create_task(self.reload_off_loop(), name="config-reload")
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    async def close(self) -> None:
        await self.backends.close()
        self.store.close()


def _state_file(config: Config) -> Path:
    return state_files(config)[0]


def _import_state(loaded: LoadedConfig) -> StateImport | None:
    """Import the original service's state on the first start (core/migrate.py): when
    `--import-state` or VMSH_STATE names its file and our state file does not exist yet."""
    ours, original = state_files(loaded.config, loaded.import_state)
    if original is None:
        return None
    if ours.exists():
        # VMSH_STATE keeps naming the original's file after the move: nothing to say.
        return StateImport(original, skipped=True) if loaded.import_state else None
    _check_writable(ours.parent)
    return import_original_state(original, StateStore(ours), loaded.config.jobs())


def _written_folders(config: Config) -> list[Path]:
    """The folders every anchor writes to: found unwritable at start, they stop the start
    (exit 2) instead of failing each anchoring pass."""
    data_dir = Path(config.scheduler.data_dir)
    return [_state_file(config).parent, data_dir / "journal", data_dir / "receipts"]


def _check_writable(folder: Path) -> None:
    """Create `folder` if missing, write a probe file in it and list it; CannotStart naming
    the folder otherwise (a file in its place, a read-only mount, no permission)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check.{os.getpid()}.tmp"  # a temp name: cleaned up if left
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        os.unlink(probe)
    except OSError as exc:
        if folder.exists() and not folder.is_dir():
            reason = "it is a file, not a folder"
        else:
            reason = exc.strerror or str(exc)
        raise CannotStart(f"cannot write to {folder}: {reason}\n  {_FOLDER_HINT}") from exc
    try:  # the start lists them to remove temp files and find the anchors left in flight
        with os.scandir(folder) as entries:
            next(entries, None)
    except OSError as exc:
        raise CannotStart(f"cannot list {folder}: {exc.strerror or exc}\n  {_FOLDER_HINT}") from exc


_FOLDER_HINT = (
    "the scheduler writes its state, journal and receipts under the data dir: fix the "
    "folder's permissions or mount, or choose another scheduler.data_dir"
)


# What a reload applies: the jobs (namespaces and the files they come from), the targets,
# and the batch-file limits. Every other setting is read once at start (the data dir, the
# lock and stores on it, the HTTP address, the engine's tick, concurrency and backoff, the
# log, CloudEvents, and the dashboard's `tui` keys, theme and theme file), so a reload that
# changes one says so instead of seeming to apply it.
APPLIED_ON_RELOAD = frozenset({
    "namespaces", "namespaces_file", "anchors_file", "targets",
    "scheduler.max_batch_bytes", "scheduler.follow_symlinks",
})
_RELOADED_SECTIONS = {name for name in APPLIED_ON_RELOAD if "." not in name}  # whole sections (a set: model_dump takes no frozenset)


def restart_needed(running: Config, loaded: Config) -> list[str]:
    """The settings (`section.key`) that differ between the running config and a newly
    loaded one and that only a restart applies, in the config's own order."""
    # Dumped without the sections a reload applies (10,000 namespaces dumped twice took
    # 80-150 ms): what is left are sections a restart may apply.
    old, new = running.model_dump(exclude=_RELOADED_SECTIONS), loaded.model_dump(exclude=_RELOADED_SECTIONS)
    out: list[str] = []
    for section, a in old.items():  # both are Config dumps: the same sections
        b = new[section]
        if isinstance(a, dict) and isinstance(b, dict):
            keys = [*a, *(k for k in b if k not in a)]
            out += [
                f"{section}.{key}"
                for key in keys
                if f"{section}.{key}" not in APPLIED_ON_RELOAD and a.get(key) != b.get(key)
            ]
        elif a != b:
            out.append(section)
    return out


def _failing(error: ConfigError | str) -> Loader:
    """A loader that fails with `error` (a ConfigError, or a message without a file)."""

    def load() -> LoadedConfig:
        if isinstance(error, ConfigError):
            raise ConfigError(error.issues)
        raise ConfigError([ConfigIssue(None, None, None, "", error)])

    return load
