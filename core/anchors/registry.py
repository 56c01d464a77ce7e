"""Builds and caches one backend per target id, from the configuration's target settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.anchors.base import Backend
from core.clock import Clock
from core.errors import ValidationError

SCHEMES = ("local", "rfc3161", "eip155", "btc")


class Backends:
    """`backends(target_id)` returns the backend for a target, building it on first use.

    `settings_for(target_id)` gives the resolved target settings (None for local targets);
    a reload swaps it, and backends whose settings changed are rebuilt on next use.
    """

    def __init__(self, settings_for: Any, data_dir: Path, clock: Clock) -> None:
        self._settings_for = settings_for
        self._data_dir = data_dir
        self._clock = clock
        self._cache: dict[str, tuple[Any, Backend]] = {}

    def update(self, settings_for: Any) -> None:
        self._settings_for = settings_for

    def __call__(self, target: str) -> Backend:
        settings = self._settings_for(target)
        cached = self._cache.get(target)
        if cached is not None and cached[0] == settings:
            return cached[1]
        backend = self._build(target, settings)
        self._cache[target] = (settings, backend)
        return backend

    def _build(self, target: str, settings: Any) -> Backend:
        scheme, _, name = target.partition(":")
        if scheme == "local":
            from core.anchors.local import LocalTSA

            return LocalTSA(
                self._data_dir, name, self._clock, policies=getattr(settings, "policies", ())
            )
        if scheme == "rfc3161":
            from core.anchors.rfc3161 import RFC3161Backend

            if settings is None:
                raise ValidationError(
                    f"no settings for {target} (add targets.rfc3161.{name} or targets.rfc3161.default)"
                )
            return RFC3161Backend(target, settings, self._clock)
        if scheme == "eip155":
            from core.anchors.evm import EVMBackend

            if settings is None:
                raise ValidationError(
                    f"no settings for {target} (add targets.eip155.{name} or targets.eip155.default)"
                )
            return EVMBackend(target, settings, self._clock, self._data_dir)
        if scheme in SCHEMES:
            raise ValidationError(f"{scheme} targets are not supported by this build yet ({target})")
        raise ValidationError(f"unknown target scheme {scheme!r} in {target!r}")

    async def close(self) -> None:
        for _, backend in self._cache.values():
            await backend.close()
        self._cache.clear()
