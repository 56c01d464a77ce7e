"""Builds and caches one backend per target id, from the configuration's target settings
(each scheme's `build`, core/anchors/<scheme>/scheme.py, found in core/anchors/schemes.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core.anchors.base import Backend, SharedRecords
from core.anchors.schemes import SCHEMES, TargetSettings
from core.clock import Clock
from core.errors import ValidationError

# target id -> its resolved settings (None: none, and the scheme may use its defaults)
SettingsFor = Callable[[str], TargetSettings | None]


class Backends:
    """`backends(target_id)` returns the backend for a target, building it on first use.

    `settings_for(target_id)` gives the resolved target settings (None for local targets);
    a reload swaps it, and backends whose settings changed are rebuilt on next use.
    """

    def __init__(
        self, settings_for: SettingsFor, data_dir: Path, clock: Clock, shared: SharedRecords | None = None
    ) -> None:
        self._settings_for = settings_for
        self._shared = shared  # the store's records for several replicas (None: file store)
        self._data_dir = data_dir
        self._clock = clock
        self._cache: dict[str, tuple[TargetSettings | None, Backend]] = {}

    def update(self, settings_for: SettingsFor) -> None:
        self._settings_for = settings_for

    def __call__(self, target: str) -> Backend:
        settings = self._settings_for(target)
        cached = self._cache.get(target)
        if cached is not None and cached[0] == settings:
            return cached[1]
        backend = self._build(target, settings)
        self._cache[target] = (settings, backend)
        return backend

    def _build(self, target: str, settings: TargetSettings | None) -> Backend:
        scheme, _, name = target.partition(":")
        spec = SCHEMES.get(scheme)
        if spec is None:
            raise ValidationError(f"unknown target scheme {scheme!r} in {target!r}")
        if spec.build is None:
            raise ValidationError(f"{scheme} targets are not supported by this build yet ({target})")
        if settings is None and spec.default_entry is None:
            raise ValidationError(
                f"no settings for {target} (add targets.{scheme}.{name} or targets.{scheme}.default)"
            )
        return spec.build(target, settings, self._data_dir, self._clock, self._shared)

    async def close(self) -> None:
        for _, backend in self._cache.values():
            await backend.close()
        self._cache.clear()
