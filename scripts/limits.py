"""The structure limits `make lint` holds the code to (issue 22).

- no function or method longer than MAX_FUNCTION_LINES lines,
- no class longer than MAX_CLASS_LINES lines,
- no import cycle among the project's modules, counting imports inside functions and
  under `if TYPE_CHECKING:` (a cycle of types is still a cycle for a reader).

(ruff's C901 holds the complexity, at max-complexity 15: [tool.ruff.lint] in pyproject.toml.)
Prints every breach as `path:line: what` and exits 1 if there is one.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "cli", "tui")
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 500


def modules() -> dict[str, Path]:
    """Every module of the project's packages by dotted name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def length_breaches(path: Path, tree: ast.AST) -> Iterator[str]:
    where = path.relative_to(ROOT)
    for node in ast.walk(tree):
        lines = (node.end_lineno or node.lineno) - node.lineno + 1 if hasattr(node, "lineno") else 0
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and lines > MAX_FUNCTION_LINES:
            yield f"{where}:{node.lineno}: function {node.name} is {lines} lines (at most {MAX_FUNCTION_LINES})"
        elif isinstance(node, ast.ClassDef) and lines > MAX_CLASS_LINES:
            yield f"{where}:{node.lineno}: class {node.name} is {lines} lines (at most {MAX_CLASS_LINES})"


def imports(name: str, path: Path, tree: ast.AST, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports, wherever the import stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` names a module; `from module import name` does not
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        found.update(t for t in targets if t in known and t != name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def breaches() -> list[str]:
    known = modules()
    out: list[str] = []
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        out.extend(length_breaches(path, tree))
        graph[name] = imports(name, path, tree, known)
    for component in cycles(graph):
        ties = [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component]
        out.append(f"import cycle among {', '.join(component)}: {'; '.join(ties)}")
    return out


if __name__ == "__main__":
    found = breaches()
    for line in found:
        print(line)
    sys.exit(1 if found else 0)
