"""`targets.local.<name>`: the settings of an embedded development TSA."""

from __future__ import annotations

from pydantic import Field

from core.model_types import Model, PolicyOID


class LocalTarget(Model):
    # Policies the embedded TSA issues tokens under besides its own (core/anchors/local/backend.py).
    policies: list[PolicyOID] = Field(default_factory=list)
