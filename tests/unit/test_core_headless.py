"""core/ must run headless: importing any of it never loads textual or rich."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROGRAM = """
import importlib, pkgutil, sys
import core
names = ["core"]
for info in pkgutil.walk_packages(core.__path__, "core."):
    names.append(info.name)
culprit = ""
for name in names:
    importlib.import_module(name)
    if not culprit and any(m.split(".")[0] in ("textual", "rich") for m in sys.modules):
        culprit = name
loaded = sorted(m for m in sys.modules if m in ("textual", "rich"))
print(len(names))
print(",".join(loaded))
print(culprit)
"""


def test_core_never_imports_textual_or_rich():
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    count, loaded, culprit = result.stdout.split("\n")[:3]
    assert int(count) > 5  # it really walked the package
    assert loaded == "", f"importing {culprit} loaded {loaded}"


def test_core_never_imports_tui_or_cli():
    """core/ is the library; the entry points (cli/) and the dashboard (tui/) build on it,
    never the reverse, not even inside a function (cli/dashboard.py may import both)."""
    import ast

    found = []
    for path in sorted((REPO / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in ("tui", "cli")]
    assert found == []
