"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# The real PostgreSQL of the cluster tests and the store contract: one server per session.
from tests.cluster.pg_fixtures import migrated, pair, pg_env, pg_url, postgres_server  # noqa: F401

# Copies of the real VaultMesh files (../shared/fixtures/vaultmesh), kept in the repository
# so that a lone clone passes `make test`; test_fixtures_match_shared checks they agree.
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures" / "vaultmesh"
SHARED_FIXTURES_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vaultmesh"


@pytest.fixture
def fixtures_dir() -> Path:
    """The real VaultMesh files (namespaces.yaml, anchors.yaml); read them, never modify."""
    return FIXTURES_DIR
