"""The target schemes: `SCHEMES[name]` is the `SchemeSpec` (core/anchors/spec.py) a scheme
package provides. A target id is ``<scheme>:<name>``.

Adding a scheme: its package core/anchors/<scheme>/ (settings.py, scheme.py, backend.py,
checking.py: see core/anchors/evm/), its entry here (the import, SCHEMES, and the typed
field of `Targets` with the `TargetSettings` union that mypy reads; a check below says so
when one is missing), and its rig in tests/contract/test_backend_contract.py
(docs/architecture.md, "Where things go").

Light on purpose (pydantic only): core.config imports it; the backends are imported by
each spec's `build` on first use.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import Field

from core.anchors.btc import BTC, BtcTarget
from core.anchors.evm import EIP155, Eip155Target
from core.anchors.local import LOCAL, LocalTarget
from core.anchors.rfc3161 import RFC3161, Rfc3161Target
from core.anchors.spec import SchemeSpec
from core.model_types import Model

SCHEMES: dict[str, SchemeSpec] = {spec.name: spec for spec in (LOCAL, RFC3161, EIP155, BTC)}

TargetSettings = LocalTarget | Rfc3161Target | Eip155Target | BtcTarget


class Targets(Model):
    """``targets:`` of the config file, the shape of VaultMesh ``anchors.yaml``: one field
    per entry of SCHEMES, typed with its settings model (checked below)."""

    local: dict[str, LocalTarget] = Field(default_factory=dict)
    rfc3161: dict[str, Rfc3161Target] = Field(default_factory=dict)
    eip155: dict[str, Eip155Target] = Field(default_factory=dict)
    btc: dict[str, BtcTarget] = Field(default_factory=dict)

    def of(self, scheme: str) -> dict[str, Any]:
        """The entries of one scheme of SCHEMES (KeyError for another)."""
        entries: dict[str, Any] = getattr(self, SCHEMES[scheme].name)
        return entries


_fields = {name: get_args(f.annotation)[1] for name, f in Targets.model_fields.items()}
if _fields != {name: spec.settings for name, spec in SCHEMES.items()}:  # pragma: no cover
    raise TypeError(f"Targets fields {_fields} do not match SCHEMES {list(SCHEMES)}")
if set(get_args(TargetSettings)) != set(_fields.values()):  # pragma: no cover
    raise TypeError(f"TargetSettings {TargetSettings} does not match SCHEMES {list(SCHEMES)}")
