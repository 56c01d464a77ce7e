"""The plainest config files are read line by line (core/config/reader.py, issue 24: a
10,000-namespace namespaces.yaml spent most of its load in libyaml's events). What a load
makes of a file must not depend on which way it was read: the same data (types included),
positions, problems and unset-variable warnings as libyaml's path, for files that take
the line path and for the near misses that must not."""

from __future__ import annotations

import gc
import random
from pathlib import Path
from typing import Any

import pytest

from core.config.positions import Pos, Problems, find_pos
from core.config.reader import YamlReader

ENV = {"X": "1", "HEX": "0x1f"}


def _tree(pos: Pos) -> tuple[Any, ...]:
    return (pos.file, pos.key, pos.key_mark, pos.mark, pos.base, {k: _tree(c) for k, c in pos.children.items()})


def _typed(value: Any) -> Any:
    if isinstance(value, dict):
        return {(type(k).__name__, k): _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


def read(path: Path, *, plain_lines: bool) -> Any:
    problems = Problems(Pos(None, base=path.parent))
    reader = YamlReader(ENV, problems, plain_lines=plain_lines)
    try:
        got = reader.read(path, "f.yaml", path.parent)
    except Exception as exc:  # a few odd scalars break both paths alike (`a: =`)
        return type(exc).__name__
    built = None if got is None else (_typed(got[0]), _tree(got[1]))
    return built, [str(i) for i in problems.issues], reader.unset, len(reader.failed)


def same_both_ways(tmp_path: Path, text: str) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(text)
    assert read(path, plain_lines=True) == read(path, plain_lines=False), text


NAMESPACES = """\
namespaces:
  team0:ledger:
    description: "ledger of team 0"
    cadence:
      fast:   { target: "eip155:8453", every: "89s", confirmations: 3 }
      strong: { target: "btc:mainnet", every: "34*fast", confirmations: 6 }
      cold:   { target: "rfc3161:tsa", every: "1d" }
  "bench:1":
    source: /srv/batches/bench%3A1
    cadence:
      fast:
        target: local:bench
        every: 1h
targets:
  local:
    bench: {}
  eip155:
    default: { rpcUrl: "${RPC}", chainId: "${X}", key: '${KEY:-k}' }
"""

CASES = [
    NAMESPACES,
    "a: 1\n", "a: 1", "\n\na: 1\n\n", "a:\n  b: 2\n  c: x\nd: y\n", "a:   \n    b: 2\n", "a: {}\n", "a: { }\n",
    "a: { b: 1, c: \"x y\", d: 'q' }   \n", "on: 1\n1: a\n\"q k\": v\n", "a: \"\"\nb: ''\n", "a: é\nb: \"ünï\"\n",
    "a: yes\nb: No\nc: ~\nd: null\ne: 1.5\nf: 0x1F\ng: 1:30\nh: .inf\ni: +5\nj: 010\nk: 1_000\nl: 0b101\nm: 1e3\n",
    "a: ${X}\nb: \"${Y:-d}\"\nc: '$Z'\nd: ${HEX}\ne: \"${HEX}\"\n", "a: { b: ${X}, c: \"${NOPE}\" }\n",
    "a: x:y\nb: /p/q\nc: a=b\nd: x@y\ne: x*y\n", "a:\n  b:\n    c:\n      d: 1\n  e: 2\n",
    # near misses: libyaml's to read (or to refuse), whatever the line reader thinks of them
    "a: 1\na: 2\n", "a: {b: 1, b: 2}\n", "a:\n  - x\n", "a: [1, 2]\n", "a: |\n  x\n", "a: b # c\n", "# c\na: 1\n",
    "a: 'it''s'\n", "a: \"x\\ty\"\n", "a:\n  b: 1\n c: 2\n", "a:\n    b: 1\n  c: 2\n", "a: 1\n  b: 2\n", " a: 1\n",
    "---\na: 1\n", "a: {b: 1,}\n", "a: {b: c:d}\n", "a: {b: 1} x\n", "a: x y\n", "a:b\n", "a : 1\n", "a: -1\n",
    "a: \"x\" y\n", "a:\n", "a:\nb: 1\n", "", "a: 1\r\nb: 2\r\n", "a:\tb\n", "a: &x 1\nb: *x\n", "a: !!str 1\n",
    "a: @x\n", "a: 2001-12-14\n", "a: x:\n", "a: x: y\n", "a: {b:1}\n", "-a: 1\n", "x:\n  \"" + "k" * 1100 + "\": 1\n",
    "a: \u2028b\n", "\ufeffa: 1\n", "a: 1\n...\n",
]


@pytest.mark.parametrize("text", CASES)
def test_a_file_reads_the_same_line_by_line_as_through_libyaml(tmp_path, text):
    same_both_ways(tmp_path, text)


def test_random_plain_files_read_the_same_both_ways(tmp_path):
    """Files built from the line reader's grammar and its edges (quotes, colons,
    indicators, indents, flow mappings), seeded."""
    rng = random.Random(24)
    atoms = ["a", "x1", "on", "1", "0x1f", "1:30", "1.5", "~", "a:b", "a/b", "a%b", "+1", "-1", "é", "${X}",
             "${U}", "1_0", "a@b", "x*y", "'", '"', "#", ":", " ", "{", "}", ",", "&", "!", "-", "?", "|"]

    def scalar() -> str:
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 3)))
        return rng.choice(['"' + text + '"', "'" + text + "'", text, text])

    def block(indent: int, depth: int) -> list[str]:
        lines = []
        for _ in range(rng.randint(1, 4)):
            key = rng.choice(["a", "b", "fast", "on", "1", "a:b", '"q"', '"a b"', "a.b", "a b", "-a", "x:"])
            pick = rng.random()
            if pick < 0.25 and depth < 4:
                lines.append(" " * indent + key + ":" + rng.choice(["", "  "]))
                lines += block(indent + rng.choice([2, 2, 4, 1]), depth + 1)
            elif pick < 0.45:
                pairs = ", ".join(rng.choice(["a", "b", "k1", '"q"']) + ": " + scalar() for _ in range(rng.randint(0, 3)))
                lines.append(" " * indent + key + ": {" + rng.choice(["", " "]) + pairs + rng.choice(["", " "]) + "}")
            else:
                lines.append(" " * indent + key + ":" + rng.choice([" ", "  "]) + scalar() + rng.choice(["", "  "]))
        return lines

    for _ in range(400):
        same_both_ways(tmp_path, "\n".join(block(0, 0)) + rng.choice(["\n", ""]))


def test_a_files_positions_are_freed_without_the_garbage_collector(tmp_path):
    """A 10,000-namespace file makes about 100,000 positions (issue 24): when each node
    referred to its parent, the tree was cycles that a load had to unlink node by node, or
    a full collection walk, before its memory came back. Now nothing of it is left for the
    collector once it is dropped."""
    path = tmp_path / "f.yaml"
    path.write_text(NAMESPACES)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable is kept to look at
    try:
        reader = YamlReader(ENV, Problems(Pos(None, base=tmp_path)))
        got = reader.read(path, "f.yaml", tmp_path)
        assert got is not None and _tree(got[1])[5]["namespaces"]  # every place made
        del got, reader
        gc.collect()
        assert [o for o in gc.garbage if isinstance(o, Pos)] == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _places_alive() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, Pos))


def test_a_plain_files_places_are_made_only_where_they_are_looked_at(tmp_path):
    """A file without ${VAR} is read line by line without its places (issue 24: a
    100,000-namespace file made 600,000 of them, and a load looks at a few): a place is
    made when a problem or a warning looks it up, one key at a time, and is the same
    place, at the same line and column, as when the whole tree is looked at."""
    lines = ["namespaces:"]
    for i in range(1000):
        lines += [f'  "bench:{i}":', f"    source: /srv/batches/bench%3A{i}", "    cadence:",
                  f'      fast: {{ target: "local:bench", every: "{i + 1}s" }}', "      strong:",
                  '        target: "btc:main"', "        every: 2*fast"]
    path = tmp_path / "f.yaml"
    path.write_text("\n".join(lines) + "\n")
    before = _places_alive()
    got = YamlReader(ENV, Problems(Pos(None, base=tmp_path))).read(path, "f.yaml", tmp_path)
    assert got is not None
    data, root = got
    assert data["namespaces"]["bench:999"]["cadence"]["fast"] == {"target": "local:bench", "every": "1000s"}
    assert _places_alive() - before < 10  # not 7,000

    found = {loc: find_pos(root, loc) for loc in [
        ("namespaces", "bench:500", "cadence", "fast", "every"),
        ("namespaces", "bench:7", "cadence", "strong", "target"),
        ("namespaces", "bench:7", "cadence", "strong"),
        ("namespaces", "bench:7", "nope"),
    ]}
    assert [(node.mark, matched) for node, matched in found.values()] == [
        ((3505, 45), 5), ((56, 17), 5), ((56, 9), 4), ((52, 5), 2)]
    assert _places_alive() - before < 1200  # the namespaces' own, and a few below them
    # the whole tree now: the places already made are the tree's, and it is libyaml's
    for loc, (node, matched) in found.items():
        at = root
        for seg in loc[:matched]:
            at = at.children[seg]
        assert at is node
    assert read(path, plain_lines=True) == read(path, plain_lines=False)


def test_equal_cadence_blocks_are_read_as_one_mapping_and_sections_never(tmp_path):
    """10,000 namespaces repeat a few cadence blocks: read line by line, equal blocks
    from a namespace's cadences down are one mapping (validated once, known by its
    identity), while what a load changes afterwards (a section the environment or a
    flag sets, a target entry verify drops, a namespace a VaultMesh file adds) stays
    each its own; the data is libyaml's either way."""
    text = "\n".join([
        "a:", "  x: 1", "b:", "  x: 1",  # equal sections
        "namespaces:",
        "  n1:", "    cadence:", "      fast: {target: 'local:d', every: 1h}", "      strong:", "        target: local:d",
        "        every: 2*fast",
        "  n2:", "    cadence:", "      fast: {target: 'local:d', every: 1h}", "      strong:", "        target: local:d",
        "        every: 2*fast",
    ]) + "\n"
    path = tmp_path / "f.yaml"
    path.write_text(text)
    got = YamlReader(ENV, Problems(Pos(None, base=tmp_path))).read(path, "f.yaml", tmp_path)
    assert got is not None
    data = got[0]
    n1, n2 = data["namespaces"]["n1"], data["namespaces"]["n2"]
    assert n1["cadence"] is n2["cadence"] and n1 == n2
    assert n1 is not n2 and data["a"] is not data["b"]
    assert read(path, plain_lines=True) == read(path, plain_lines=False)
