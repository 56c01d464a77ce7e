"""core.merkle: the one-walk tree and paths agree with RFC 6962's definitions, and leave
nothing for the cyclic collector (a pass's paths are freed as soon as it drops them)."""

from __future__ import annotations

import gc
import hashlib

import pytest

from core import merkle


def _leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(str(i).encode()).digest() for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 64, 100])
def test_tree_and_paths_match_tree_hash_and_audit_path(n: int) -> None:
    leaves = _leaves(n)
    digest, paths = merkle.tree_and_paths(leaves)
    assert digest == merkle.tree_hash(leaves)
    assert paths == [merkle.audit_path(i, leaves) for i in range(n)]
    for i, path in enumerate(paths):
        assert merkle.root_from_path(i, n, leaves[i], path) == digest


def test_tree_and_paths_leave_no_reference_cycle() -> None:
    """Its paths (10,000 jobs: ~2.5 MB) are freed when the caller drops them, not at the
    next full collection, which an idle scheduler may not run for a long time."""
    leaves = _leaves(1000)
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        result = merkle.tree_and_paths(leaves)
        del result
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()
