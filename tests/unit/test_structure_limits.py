"""The structure limits of scripts/limits.py hold (issue 22); and the checker sees breaches."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("limits", ROOT / "scripts" / "limits.py")
assert _spec is not None and _spec.loader is not None
limits = importlib.util.module_from_spec(_spec)
sys.modules["limits"] = limits
_spec.loader.exec_module(limits)


def test_no_long_function_no_long_class_and_no_import_cycle() -> None:
    assert limits.breaches() == []


def test_an_import_inside_a_function_or_for_types_only_closes_a_cycle(tmp_path: Path) -> None:
    known = {"core.a": tmp_path / "a.py", "core.b": tmp_path / "b.py"}
    a = ast.parse("from core import b\n")
    b = ast.parse("def f():\n    from core.a import thing\n")
    graph = {
        "core.a": limits.imports("core.a", known["core.a"], a, known),
        "core.b": limits.imports("core.b", known["core.b"], b, known),
    }
    assert limits.cycles(graph) == [["core.a", "core.b"]]
    b_typing = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from core.a import thing\n")
    graph["core.b"] = limits.imports("core.b", known["core.b"], b_typing, known)
    assert limits.cycles(graph) == [["core.a", "core.b"]]


def test_a_long_function_is_named(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(limits.MAX_FUNCTION_LINES))
    path = limits.ROOT / "core" / "long.py"  # only its name is used
    found = list(limits.length_breaches(path, ast.parse(f"def long():\n{body}\n")))
    assert found and "function long is 81 lines" in found[0]
