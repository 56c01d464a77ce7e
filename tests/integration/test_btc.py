"""`btc:regtest` against a real bcoin regtest node (tests/integration/bcoin.py)."""

from __future__ import annotations

import pytest

from tests.integration.bcoin import SEGWIT_HEIGHT, Bcoin

# A P2WPKH output script of a public test key (its hash160 is all 0x11: nobody can spend it).
BURN = bytes([0, 20]) + bytes([0x11] * 20)


@pytest.fixture(scope="module")
def bcoin(tmp_path_factory):
    node = Bcoin(tmp_path_factory.mktemp("bcoin")).start()
    yield node
    node.stop()


def test_the_regtest_node_mines_to_a_raw_script_past_segwit_activation(bcoin):
    start = bcoin.height()
    hashes = bcoin.mine(SEGWIT_HEIGHT + 1, BURN)
    assert bcoin.height() == start + SEGWIT_HEIGHT + 1
    block = bcoin.rpc("getblock", hashes[0], True)
    coin = bcoin.rpc("gettxout", block["tx"][0], 0)
    assert coin["scriptPubKey"]["hex"] == BURN.hex()
    assert bcoin.started_in is not None and bcoin.started_in < 30
