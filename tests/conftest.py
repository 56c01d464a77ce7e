"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# The shared folder sits beside the repository (CI clones the repo next to it too).
FIXTURES_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vaultmesh"


@pytest.fixture
def fixtures_dir() -> Path:
    """The real VaultMesh files (namespaces.yaml, anchors.yaml); read them, never modify."""
    return FIXTURES_DIR
