"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
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


@pytest.fixture
def fresh_batch_cache() -> Iterator[None]:
    """core/sources.py's cache of the folders read, empty before the test and after it."""
    from core import sources

    sources.clear_cache()
    yield
    sources.clear_cache()


@pytest.fixture(params=["one-call", "python"])
def batch_reads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test run both ways core/sources.py reads a batch folder: listed and read by one
    C call (core/batchread.py, "one-call") and its own way ("python", as where the
    extension was not built, and for every folder out of the ordinary)."""
    import core.batchread

    if request.param == "one-call" and core.batchread.NATIVE is None:
        pytest.skip("core._batchread is not built")
    if request.param == "python":
        monkeypatch.setattr(core.batchread, "NATIVE", None)
    return str(request.param)


@pytest.fixture
def python_reads(batch_reads: str) -> None:
    """For a test that watches the Python way's own system calls (os.open, os.read): run
    with "python" only."""
    if batch_reads != "python":
        pytest.skip("watches the system calls core/sources.py makes its own way")


@pytest.fixture(params=["one-call", "call-by-call"])
def batch_syscalls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test run both ways core/batchfs.py makes its system calls: by the C extension,
    the GIL released once ("one-call"), and one by one from Python ("call-by-call", as where
    the extension was not built)."""
    import core.batchfs

    if request.param == "one-call" and core.batchfs.NATIVE is None:
        pytest.skip("core._fsbatch is not built")
    if request.param == "call-by-call":
        monkeypatch.setattr(core.batchfs, "NATIVE", None)
    return str(request.param)
