"""The target schemes, one line each: `SCHEMES[name]` is the `SchemeSpec` (core/anchors/spec.py)
its package provides. A target id is ``<scheme>:<name>``.

Adding a scheme: its package core/anchors/<scheme>/ (settings.py, scheme.py, backend.py,
checking.py: see core/anchors/evm/), its line in `SCHEMES` below (and its name in the
import), and its rig in tests/contract/test_backend_contract.py (docs/architecture.md,
"Where things go"). Everything else reads the spec: the config's `targets.<scheme>`
section (`Targets`, built from the table), the backends, check-config, verify and
verify --explain.

Light on purpose (pydantic only): core.config imports it; the backends are imported by
each spec's `build` on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, create_model

from core.anchors import btc, evm, local, rfc3161
from core.anchors.spec import SchemeSpec
from core.model_types import Model


def _table(*specs: SchemeSpec) -> dict[str, SchemeSpec]:
    return {spec.name: spec for spec in specs}


SCHEMES: dict[str, SchemeSpec] = _table(
    local.LOCAL,
    rfc3161.RFC3161,
    evm.EIP155,
    btc.BTC,
)

# The settings of one target: an instance of its scheme's `settings` model (the
# Rfc3161Target, Eip155Target, ... of the scheme packages).
TargetSettings = Model


class _TargetsBase(Model):
    def of(self, scheme: str) -> dict[str, Any]:
        """The entries of one scheme of SCHEMES (KeyError for another)."""
        entries: dict[str, Any] = getattr(self, SCHEMES[scheme].name)
        return entries

    if TYPE_CHECKING:  # one field per scheme, built below: `targets.<scheme>` is its entries

        def __getattr__(self, scheme: str) -> dict[str, Any]: ...


if TYPE_CHECKING:
    Targets = _TargetsBase
else:
    # ``targets:`` of the config file, the shape of VaultMesh ``anchors.yaml``: one field per
    # entry of SCHEMES, a dict of entry name -> the scheme's settings model.
    Targets = create_model(
        "Targets",
        __base__=_TargetsBase,
        **{
            name: (dict[str, spec.settings], Field(default_factory=dict))
            for name, spec in SCHEMES.items()
        },
    )
