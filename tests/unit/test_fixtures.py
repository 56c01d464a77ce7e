"""The repository's copies of the VaultMesh files are the real ones, unchanged."""

from __future__ import annotations

import pytest

from tests.conftest import FIXTURES_DIR, SHARED_FIXTURES_DIR


def test_repository_holds_the_vaultmesh_fixtures():
    # A lone clone has no ../shared: the tests must find the files inside the repository.
    assert sorted(p.name for p in FIXTURES_DIR.glob("*.yaml")) == ["anchors.yaml", "namespaces.yaml"]


@pytest.mark.skipif(not SHARED_FIXTURES_DIR.is_dir(), reason="no ../shared beside this clone")
def test_fixtures_match_shared():
    for shared in SHARED_FIXTURES_DIR.glob("*.yaml"):
        assert (FIXTURES_DIR / shared.name).read_bytes() == shared.read_bytes(), shared.name
