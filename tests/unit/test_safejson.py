"""Untrusted JSON that nests too deep is a clear error naming the file, never a crash.

eth-account imports py_ecc, which raises the recursion limit to 100,000: json's C scanner
then overflows the C stack on a deep document before any RecursionError (a segfault of
`verify`, of the daemon reading a receipt, or of an import). The readers run in a child
process where that limit is in force.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core import safejson

DEEP = b"[" * 200_000 + b"]" * 200_000

READERS = {
    "receipt": "from core.receipts import load_receipt as read",
    "imported state": "from core.migrate import read_original_state as read",
    "state file": "from core.store.files.state import StateStore\nread = lambda p: StateStore(p).load()",
}


@pytest.mark.parametrize("reader", READERS.values(), ids=list(READERS))
def test_a_deep_document_is_an_error_naming_the_file_not_a_crash(tmp_path, reader):
    path = tmp_path / "deep.json"
    path.write_bytes(DEEP)
    code = (
        "import sys; sys.setrecursionlimit(100_000)\n"
        "from pathlib import Path\n"
        f"{reader}\n"
        "try:\n"
        f"    read(Path({str(path)!r}))\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-500:]
    assert f"{path}:1:257:" in done.stdout and "nested deeper than 256 levels" in done.stdout


def test_loads_refuses_depth_past_the_limit_with_its_position():
    assert safejson.loads(b"[" * 256 + b"]" * 256) is not None
    with pytest.raises(safejson.JsonTooDeep) as info:
        safejson.loads('{"a":\n' + "[" * 300 + "]" * 300 + "}")
    assert isinstance(info.value, json.JSONDecodeError)  # bad-JSON handlers catch it
    assert (info.value.lineno, info.value.colno) == (2, 256)


def test_brackets_inside_strings_do_not_count():
    text = json.dumps({"note": "[" * 1000 + '\\"{' * 500, "list": [[1]]})
    assert safejson.loads(text)["list"] == [[1]]


def test_the_depth_scan_reads_no_further_than_needed_for_a_flat_document():
    flat = ("[" + ",".join("{}" for _ in range(10_000)) + "]").encode()
    assert safejson.depth_exceeded_at(flat) is None
    assert safejson.loads(flat) == [{}] * 10_000


def test_str_and_bytes_agree():
    doc = '{"x": ["é", {"y": 1}]}'
    assert safejson.loads(doc) == safejson.loads(doc.encode()) == json.loads(doc)
