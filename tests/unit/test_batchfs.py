"""A slice's files staged and published in one call (core/batchfs.py): the C extension and
the calls one by one from Python give the same files and the same outcome for each."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from core.batchfs import publish_all, stage_all
from core.fsutil import FILE_MODE, is_stale_temp, staged_name


def test_each_file_is_staged_with_its_data_and_mode_and_a_failure_is_its_own(tmp_path: Path, batch_syscalls: str) -> None:
    folder = tmp_path / "staging"
    folder.mkdir()
    leftover = staged_name(str(folder), "b.json", 7)
    Path(leftover).write_bytes(b"a kill -9's temp file")
    files = [
        (str(folder), "a.json", b"first", 1),
        (str(folder), "b.json", b"second", 7),  # its temp name taken: a random one
        (str(tmp_path / "gone"), "c.json", b"third", 3),  # no such folder
        (str(folder), "d.json", b"x" * 300_000, 4),  # more than one write(2)
    ]

    out = stage_all(files)

    a, b, c, d = out
    assert a == staged_name(str(folder), "a.json", 1) and Path(a).read_bytes() == b"first"
    assert isinstance(b, str) and b != leftover and Path(b).read_bytes() == b"second"
    assert is_stale_temp(Path(b).name)
    assert Path(leftover).read_bytes() == b"a kill -9's temp file"
    assert isinstance(c, OSError) and c.errno == errno.ENOENT
    assert isinstance(d, str) and Path(d).read_bytes() == b"x" * 300_000
    for path in (a, b, d):
        assert stat.S_IMODE(os.stat(path).st_mode) == FILE_MODE


def test_each_file_is_linked_unless_its_name_is_taken_and_its_temp_name_goes(tmp_path: Path, batch_syscalls: str) -> None:
    (tmp_path / "ns").mkdir()
    temps = stage_all([(str(tmp_path), name, name.encode(), n) for n, name in enumerate(["a", "b", "c"])])
    assert all(isinstance(t, str) for t in temps)
    taken = tmp_path / "ns" / "b.json"
    taken.write_bytes(b"written before")
    pairs = [
        (str(temps[0]), str(tmp_path / "ns" / "a.json")),
        (str(temps[1]), str(taken)),
        (str(temps[2]), str(tmp_path / "missing" / "c.json")),
    ]

    out = publish_all(pairs)

    assert out[:2] == [True, False]
    assert isinstance(out[2], OSError) and out[2].errno == errno.ENOENT
    assert (tmp_path / "ns" / "a.json").read_bytes() == b"a"
    assert taken.read_bytes() == b"written before", "a receipt written over"
    assert not Path(str(temps[0])).exists() and not Path(str(temps[1])).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [], "temp files left behind"
