"""The dashboard's structure (issue 15 item 3): the action table, the pane registry, the
one engine interface, and no method that replaces one of Textual's by accident."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from textual.app import App
from textual.screen import Screen

from tui.actions import ACTIONS
from tui.app import VaultMeshApp
from tui.dashboard import DashboardScreen
from tui.panes import PANES

from .conftest import World, screen_text

TUI = Path(__file__).resolve().parents[2] / "tui"

# Textual methods these classes replace on purpose, and why.
OVERRIDES = {
    VaultMeshApp: {
        "__init__": "constructor",
        "get_default_screen": "the DashboardScreen is the first screen",
        "check_action": "nothing behind the help screen answers keys",
        "get_system_commands": "the palette lists the action table",
        "action_quit": "asks first when anchors are in flight, then stops in order",
    },
    DashboardScreen: {"__init__": "constructor", "compose": "its layout", "check_action": "--readonly",
                      "active_bindings": "the footer says Resume while paused"},
}


def test_no_method_replaces_one_of_textuals_by_accident() -> None:
    """`_flush`, `_shutdown` and `action_back` each once silently replaced Textual's own."""
    for cls, base in ((VaultMeshApp, App), (DashboardScreen, Screen)):
        textual_names = {name for klass in base.__mro__ for name in vars(klass)}
        replaced = {
            name for name, value in vars(cls).items()
            if name in textual_names and (inspect.isfunction(value) or isinstance(value, property))
        }
        assert replaced == set(OVERRIDES[cls]), f"{cls.__name__} replaces Textual's {replaced - set(OVERRIDES[cls])}"


def test_every_action_has_its_method_where_its_scope_says() -> None:
    for action in ACTIONS:
        owner = VaultMeshApp if action.scope == "app" else DashboardScreen
        name = "action_" + action.action.partition("(")[0]
        assert callable(getattr(owner, name, None)), f"{action.id}: {owner.__name__}.{name} is missing"
    assert len({a.id for a in ACTIONS}) == len(ACTIONS)


def _engine_uses(path: Path) -> list[tuple[str, int]]:
    """(function, line) of every `.engine` attribute read in the file."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, int]] = []
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(func):
                if isinstance(node, ast.Attribute) and node.attr == "engine":
                    found.append((func.name, node.lineno))
    return found


def test_only_the_in_process_host_touches_the_engine() -> None:
    """The App, panes and dashboard actions go through core/control.py SchedulerControl,
    which the attach issue implements a second time over the control socket; only the
    in-process host (tui/host.py) saves the engine's state when the stop cannot."""
    lifecycle = {"run_scheduler", "_save_state", "finish"}
    for path in sorted(TUI.rglob("*.py")):
        uses = _engine_uses(path)
        if path.name == "host.py":
            uses = [(f, line) for f, line in uses if f not in lifecycle]
        assert uses == [], f"{path.relative_to(TUI.parent)} reads .engine in {uses}"


async def test_help_and_palette_list_every_action_and_pane(world: World) -> None:
    app = world.app()
    async with app.run_test(size=(160, 48)) as pilot:
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert {a.palette for a in ACTIONS if a.palette} <= titles
        assert {f"Show {p.title}" for p in PANES} <= titles
        await pilot.press("question_mark")
        text = screen_text(app)
        for action in ACTIONS:
            assert action.help in text, action.id
        for pane in PANES:
            for _keys, line in pane.help:
                assert line in text
