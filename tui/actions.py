"""Every dashboard action, once: its key, footer label, help line and palette entry.

`ACTIONS` feeds the bindings (the App's and the DashboardScreen's), the footer, the help
screen and the command palette; `id` is what `tui.keys` remaps
(core.dashboard_settings.KEYMAP_ACTIONS lists the same ids; a test compares them).
A new action is one entry here and one `action_<name>` method where its `scope` says:

- ``app``: on VaultMeshApp, active on every screen (themes, help, palette, quit);
- ``dashboard``: on DashboardScreen, active only while it is the screen shown (what acts
  on the panes and their selection, and the commands to the engine).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from textual.binding import Binding, BindingType

Scope = Literal["app", "dashboard"]


@dataclass(frozen=True, slots=True)
class Action:
    id: str  # binding id: the name tui.keys remaps
    key: str  # default key(s), Textual's names, comma-separated
    action: str  # the Textual action (method action_<name>, with arguments if any)
    label: str  # footer label
    help: str  # the help screen's line
    scope: Scope = "dashboard"
    footer: bool = False  # shown in the footer
    mutating: bool = False  # changes what the engine does: off in --readonly
    palette: str | None = None  # command palette title; None: not in the palette
    palette_help: str = ""
    priority: bool = False  # above the focused widget's own binding for the key


ACTIONS: tuple[Action, ...] = (
    Action("force", "f", "force", "Force", "force-anchor the selected job or line's job (asks first)",
           footer=True, mutating=True, palette="Force-anchor selected job", palette_help="f: anchor the selected job now"),
    Action("force_namespace", "F", "force_namespace", "Force ns", "force-anchor every cadence of the namespace (asks first)",
           mutating=True, palette="Force-anchor selected namespace", palette_help="F: anchor every cadence of the namespace"),
    Action("reload", "R", "reload", "Reload", "reload the config; on errors (file:line) the old one stays",
           footer=True, mutating=True, palette="Reload config", palette_help="R: load the config again; errors keep the old one"),
    Action("pause", "space", "pause", "Pause", "pause / resume scheduling (forced anchors still run)",
           footer=True, mutating=True, palette="Pause / resume scheduling", palette_help="space"),
    Action("detail", "enter", "detail", "Detail", "the selected namespace's detail; in Logs, the whole line",
           palette="Namespace detail", palette_help="enter: config, receipts, errors"),
    Action("verify", "v", "verify", "Verify", "verify the selected receipt, or the selected job's latest",
           footer=True, palette="Verify selected receipt", palette_help="v: audit path and attestation"),
    Action("filter", "slash", "filter", "Filter", "filter the focused pane (esc clears)",
           footer=True, palette="Filter focused pane", palette_help="/"),
    Action("copy", "c", "copy", "Copy", "copy the selected root, receipt path or tx (OSC 52)",
           palette="Copy selected root / receipt path", palette_help="c: to the clipboard (OSC 52)"),
    Action("save_logs", "w", "save_logs", "Save logs", "save the Logs pane's lines to a file (path shown)",
           palette="Save logs to a file", palette_help="w: the path is shown"),
    Action("theme", "t", "next_theme", "Theme", "next theme", scope="app", palette="Next theme", palette_help="t"),
    Action("palette", "colon", "command_palette", "Palette", "command palette with the same actions", scope="app"),
    Action("help", "question_mark", "help", "Help", "this help", scope="app", footer=True,
           palette="Help", palette_help="?: every key"),
    Action("back", "escape", "clear_filter", "Back", "back / dismiss notifications / clear the filter"),
    # Above the screen's own tab / shift+tab (focus the next widget), which at 80x24 has
    # only the one visible pane to go to.
    Action("next_pane", "tab", "next_pane", "Next pane", "next pane (tabs at 80x24)", priority=True),
    Action("prev_pane", "shift+tab", "prev_pane", "Prev pane", "previous pane", priority=True),
    Action("quit", "q", "quit", "Quit", "quit (asks first if anchors are in flight)", scope="app", footer=True,
           palette="Quit", palette_help="q: asks first if anchors are in flight"),
)

MUTATING = frozenset(a.action for a in ACTIONS if a.mutating)


def bindings(scope: Scope) -> list[BindingType]:
    """The Textual bindings of the actions in `scope`, in table order."""
    return [
        Binding(a.key, a.action, a.label, show=a.footer, id=a.id, priority=a.priority)
        for a in ACTIONS
        if a.scope == scope
    ]


def mapped_keys(action: Action, keymap: Mapping[str, str]) -> list[str]:
    """The keys of `action` as `tui.keys` maps it (the App's keymap), else its defaults."""
    return [k.strip() for k in (keymap.get(action.id) or action.key).split(",")]
