"""A namespace's folder name (receipts/<safe name>/, batches): the escapes are part of the
data dir's format, so they are pinned here, for plain ASCII names and for the others."""

from __future__ import annotations

import pytest

from core.jobs import safe_name, unsafe_name


@pytest.mark.parametrize(
    ("namespace", "folder"),
    [
        ("dao:vaultmesh", "dao%3Avaultmesh"),
        ("plain-Name_1.2", "plain-Name_1.2"),
        (".hidden", "%2Ehidden"),
        ("a b/c\\d%e", "a%20b%2Fc%5Cd%25e"),
        ("\x00\x7f~!", "%00%7F%7E%21"),
        ("ünï:ns", "%C3%BCn%C3%AF%3Ans"),
        (".ß", "%2E%C3%9F"),
        ("ns:😀", "ns%3A%F0%9F%98%80"),
    ],
)
def test_a_namespace_folder_name_escapes_each_byte_outside_the_safe_set(namespace: str, folder: str) -> None:
    assert safe_name(namespace) == folder
    assert unsafe_name(folder) == namespace
