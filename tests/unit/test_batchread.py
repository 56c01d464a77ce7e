"""core/batchread.py: a batch folder listed and its newest file read by one C call, with
the results core/sources.py gets its own way; anything out of the ordinary left to it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from core import batchread, sources
from core.sources import BatchLimits, SourceError, latest_batch, write_batch

pytestmark = [
    pytest.mark.skipif(batchread.NATIVE is None, reason="core._batchread is not built"),
    pytest.mark.usefixtures("fresh_batch_cache"),
]

CAP = BatchLimits().max_bytes
R1 = "sha256:" + "11" * 32
BATCH = '{"id": "1", "root": "' + R1 + '"}'


def python_newest(folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of the file core/sources.py reads its own way."""
    with monkeypatch.context() as patched:
        patched.setattr(batchread, "NATIVE", None)
        sources.clear_cache()
        return latest_batch(folder).path.name


def test_the_newest_is_the_one_the_python_way_picks(tmp_path: Path, monkeypatch) -> None:
    """Digit runs compared as numbers (leading zeros, long runs), text runs as text, a name
    whose key ends first the lesser, and of equal keys the first listed."""
    rng = random.Random(24)
    parts = ["0", "00", "1", "01", "007", "9", "10", "99999999999999999999", "a", "b", "ab", "_", "-", "batch"]
    for n in range(150):
        folder = tmp_path / f"f{n}"
        folder.mkdir()
        names = {"".join(rng.choice(parts) for _ in range(rng.randint(1, 4))) + ".json" for _ in range(rng.randint(1, 12))}
        for name in names:
            (folder / name).write_text(BATCH)
        listed = batchread.newest(str(folder), CAP, False)
        assert listed is not None
        assert listed.name == python_newest(folder, monkeypatch), sorted(names)


def test_of_equal_keys_the_first_listed_is_the_newest(tmp_path: Path, monkeypatch) -> None:
    for n, (names, equal_newest) in enumerate(
        [(["7", "007", "07"], 3), (["b2", "b02", "a9"], 2), (["1", "01", "001", "0001"], 4)]
    ):
        folder = tmp_path / f"f{n}"
        folder.mkdir()
        for name in names:
            (folder / f"{name}.json").write_text(BATCH)
        first_listed = next(name for name in os.listdir(folder) if name[:-5] in names[:equal_newest])
        listed = batchread.newest(str(folder), CAP, False)
        assert listed is not None and listed.name == first_listed == python_newest(folder, monkeypatch)


def test_what_it_reads_is_what_the_python_way_reads(tmp_path: Path) -> None:
    path = write_batch(tmp_path / "ns", "000002", R1)
    (tmp_path / "ns" / "000001.json").write_text('{"id": "1", "root": "' + R1 + '"}')
    (tmp_path / "ns" / ".000003.json").write_text("hidden")  # never a candidate
    (tmp_path / "ns" / "000004.json.tmp").write_text("a temp file")
    listed = batchread.newest(str(tmp_path / "ns"), CAP, False)
    assert listed is not None
    st, folder_st = path.stat(), (tmp_path / "ns").stat()
    assert listed == batchread.Listed(
        folder_st.st_dev, folder_st.st_ino, folder_st.st_mtime_ns, "000002.json", path.read_bytes(),
        st.st_mtime_ns, st.st_size,
    )


def test_a_link_is_read_only_when_links_are_followed(tmp_path: Path) -> None:
    folder = tmp_path / "ns"
    write_batch(folder, "1", R1, name="000001.json")
    target = write_batch(tmp_path / "elsewhere", "2", R1, name="x.json")
    (folder / "000002.json").symlink_to(target)
    not_followed = batchread.newest(str(folder), CAP, False)
    followed = batchread.newest(str(folder), CAP, True)
    assert not_followed is not None and not_followed.name == "000001.json"
    assert followed is not None and followed.name == "000002.json" and followed.data == target.read_bytes()


def out_of_the_ordinary(tmp_path: Path) -> dict[str, Path]:
    cases = {name: tmp_path / name for name in
             ("missing", "empty", "only_a_link", "not_ascii", "a_folder", "a_fifo", "too_large", "a_dangling_link")}
    for name, folder in cases.items():
        if name != "missing":
            folder.mkdir()
    (cases["only_a_link"] / "000001.json").symlink_to(write_batch(tmp_path / "target", "1", R1))
    (cases["not_ascii"] / "000001.json").write_text("{}")
    write_batch(cases["not_ascii"], "1", R1, name="résumé.json")  # the newest: text after none
    (cases["a_folder"] / "000001.json").mkdir()
    os.mkfifo(cases["a_fifo"] / "000001.json")
    (cases["too_large"] / "000001.json").write_bytes(b" " * (CAP + 1))
    (cases["a_dangling_link"] / "000001.json").symlink_to(tmp_path / "nowhere.json")
    return cases


def test_anything_out_of_the_ordinary_is_left_to_the_python_way(tmp_path: Path, monkeypatch) -> None:
    """None from the one call, and the same batch or the same message as the Python way."""
    cases = out_of_the_ordinary(tmp_path)
    for folder in cases.values():
        assert batchread.newest(str(folder), CAP, False) is None, folder
    outcomes = {}
    for way in ("one-call", "python"):
        if way == "python":
            monkeypatch.setattr(batchread, "NATIVE", None)
        sources.clear_cache()
        for name, folder in cases.items():
            try:
                outcomes[way, name] = latest_batch(folder).root
            except SourceError as exc:
                outcomes[way, name] = str(exc)
    for name in cases:
        assert outcomes["one-call", name] == outcomes["python", name], name
    assert outcomes["one-call", "not_ascii"] == R1 and "has no batch files" in outcomes["one-call", "empty"]
