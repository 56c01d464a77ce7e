"""What the dashboard reads from the config, as data and pure checks (no textual, no rich).

The dashboard (tui/) and check-config both use this module, so they agree on what is
valid:

- ``KEYMAP_ACTIONS``: the binding ids ``tui.keys`` may remap (``keys: {force: x}``); the
  dashboard's bindings carry exactly these ids (a test compares them).
- ``key_problem``: whether a key string is one Textual can bind (``x``, ``F``, ``ctrl+r``,
  ``f5``, ``question_mark``, ``j,down``).
- ``read_theme_file``: a theme file (TOML) checked field by field into a ``ThemeSpec``;
  tui/themes.py turns a spec into a ``textual.theme.Theme`` (and parses each colour
  exactly; here a colour is checked by its form: ``#hex``, ``rgb(...)``, ``hsl(...)`` or
  a colour name).
- ``theme_names``: the names ``tui.theme`` may give: the bundled themes (themes/*.toml),
  Textual's own themes, and the name of ``tui.theme_file``.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.text import close_matches

# --------------------------------------------------------------------------- key remaps

# The binding ids of the dashboard that tui.keys may remap: the action table (tui/actions.py
# ACTIONS) and the panes' own (tui/widgets.py). tests/unit/test_config.py checks they match.
KEYMAP_ACTIONS: tuple[str, ...] = (
    "force", "force_namespace", "reload", "pause", "detail", "verify", "filter", "theme",
    "palette", "help", "back", "next_pane", "prev_pane", "quit", "copy", "save_logs",
    "sort", "reverse_sort", "log_level", "log_follow",
)

MODIFIERS = ("ctrl", "shift", "alt", "meta", "super", "hyper")
# Textual's names for keys that are not one printable character (textual.keys.Keys).
NAMED_KEYS: tuple[str, ...] = (
    "escape", "enter", "return", "tab", "space", "backspace", "insert", "delete",
    "home", "end", "pageup", "pagedown", "up", "down", "left", "right",
    *(f"f{n}" for n in range(1, 25)),
)
# Textual names a punctuation key by its Unicode name, with these shorter forms.
_KEY_NAME_REPLACEMENTS = {
    "solidus": "slash",
    "reverse_solidus": "backslash",
    "commercial_at": "at",
    "hyphen_minus": "minus",
    "plus_sign": "plus",
    "low_line": "underscore",
}


def character_key(char: str) -> str:
    """The key name Textual gives one typed character (``?`` -> ``question_mark``)."""
    if char.isalnum():
        return char
    try:
        name = unicodedata.name(char).lower().replace("-", "_").replace(" ", "_")
    except ValueError:
        return char
    return _KEY_NAME_REPLACEMENTS.get(name, name)


_PUNCTUATION_KEYS = frozenset(character_key(chr(c)) for c in range(0x21, 0x7F) if not chr(c).isalnum())


def _is_key_name(name: str) -> bool:
    if len(name) == 1:
        return name.isprintable()
    if name in NAMED_KEYS or name in _PUNCTUATION_KEYS:
        return True
    try:  # any other character by its Unicode name, as Textual names it
        char = unicodedata.lookup(name.replace("_", " "))
    except KeyError:
        return False
    return character_key(char) == name


def key_problem(keys: Any) -> str | None:
    """None if ``keys`` (one key, or several separated by commas) can be bound, else why not."""
    if not isinstance(keys, str) or not keys.strip():
        return f"expected a key such as 'x', 'ctrl+r' or 'f5' (got {keys!r})"
    for key in (k.strip() for k in keys.split(",")):
        if not key:
            return f"{keys!r} has an empty key between commas"
        if len(key) == 1:
            if not key.isprintable():
                return f"{key!r} is not a key that can be typed"
            continue
        *mods, base = key.split("+")
        bad = [m for m in mods if m not in MODIFIERS]
        if bad:
            return f"{bad[0]!r} in {key!r} is not a modifier (use {', '.join(MODIFIERS)})"
        if not _is_key_name(base):
            known = [*NAMED_KEYS, *sorted(_PUNCTUATION_KEYS)]
            close = close_matches(base, known)
            hint = f" (did you mean {'+'.join([*mods, close[0]])!r}?)" if close else ""
            return (
                f"{key!r} is not a key name{hint}; use one character, a name such as "
                "escape, enter, space, tab, up, pagedown, f5, question_mark, or ctrl+<key>"
            )
    return None


def action_problem(action: Any) -> str | None:
    """None if ``action`` is a binding id ``tui.keys`` may remap, else why not."""
    if action in KEYMAP_ACTIONS:
        return None
    close = close_matches(str(action), KEYMAP_ACTIONS)
    if close:
        return f"unknown action {str(action)!r} (did you mean {close[0]!r}?)"
    return f"unknown action {str(action)!r}; known: {', '.join(sorted(KEYMAP_ACTIONS))}"


# --------------------------------------------------------------------------- themes

# themes/ sits beside core/ in the source tree (editable installs, `make run`).
THEMES_DIR = Path(__file__).resolve().parent.parent / "themes"
DEFAULT_THEME = "vaultmesh-dark"
ANSI_THEME = "vaultmesh-ansi"
# Used when themes/ is not shipped (a wheel without data files): Textual's own themes.
FALLBACKS = {"vaultmesh-dark": "textual-dark", "vaultmesh-light": "textual-light", "vaultmesh-ansi": "ansi-dark"}
# The themes Textual itself registers (textual.theme.BUILTIN_THEMES; a test compares them).
TEXTUAL_THEMES: tuple[str, ...] = (
    "ansi-dark", "ansi-light", "atom-one-dark", "atom-one-light", "catppuccin-frappe",
    "catppuccin-latte", "catppuccin-macchiato", "catppuccin-mocha", "dracula", "flexoki",
    "gruvbox", "monokai", "nord", "rose-pine", "rose-pine-dawn", "rose-pine-moon",
    "solarized-dark", "solarized-light", "textual-dark", "textual-light", "tokyo-night",
)

COLOUR_FIELDS = (
    "primary", "secondary", "warning", "error", "success", "accent",
    "foreground", "background", "surface", "panel", "boost",
)
# The fields of textual.theme.Theme (a test compares them): what a theme file may hold.
THEME_FIELDS = ("name", *COLOUR_FIELDS, "dark", "luminosity_spread", "text_alpha", "variables", "ansi")

_COLOUR_FORM = re.compile(
    r"^(#([0-9a-fA-F]{3}|[0-9a-fA-F]{4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})"
    r"|(rgb|rgba|hsl|hsla)\(.*\)"
    r"|[a-z][a-z0-9_]*)$"
)


class ThemeFileError(Exception):
    """A theme file that cannot be used; the message names the file and says why."""


@dataclass(frozen=True)
class ThemeSpec:
    """A checked theme file: its name and the other ``textual.theme.Theme`` fields."""

    name: str
    values: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _colour(path: Path, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ThemeFileError(f"{path}: {name} must be a colour string, got {value!r}")
    if not _COLOUR_FORM.match(value):
        raise ThemeFileError(f"{path}: {name} = {value!r} is not a colour (try #RRGGBB or ansi_blue)")
    return value


def read_theme_file(path: str | os.PathLike[str]) -> ThemeSpec:
    """Read and check a theme file: TOML, known fields, their types, ``primary`` given."""
    path = Path(path)
    data = _theme_toml(path)
    unknown = sorted(set(data) - set(THEME_FIELDS))
    if unknown:
        raise ThemeFileError(
            f"{path}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(THEME_FIELDS))}"
        )
    name = data.get("name") or path.stem
    if not isinstance(name, str):
        raise ThemeFileError(f"{path}: name must be a string, got {name!r}")
    if "primary" not in data:
        raise ThemeFileError(f"{path}: primary is required")
    values = {key: _theme_value(path, key, value) for key, value in data.items() if key != "name"}
    return ThemeSpec(name, values, path)


def _theme_toml(path: Path) -> dict[str, Any]:
    import tomllib  # read for a theme file only: not held by a daemon that has none

    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ThemeFileError(f"{path}: theme file not found") from None
    except OSError as exc:
        raise ThemeFileError(f"{path}: cannot read theme file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ThemeFileError(f"{path}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ThemeFileError(f"{path}: not valid TOML: {exc}") from None


def _theme_value(path: Path, key: str, value: Any) -> Any:
    """One known field's value, checked (`name` is read by the caller)."""
    if key in COLOUR_FIELDS:
        return _colour(path, key, value)
    if key in ("dark", "ansi"):
        if not isinstance(value, bool):
            raise ThemeFileError(f"{path}: {key} must be true or false, got {value!r}")
        return value
    if key in ("luminosity_spread", "text_alpha"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ThemeFileError(f"{path}: {key} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, dict):  # "variables", the one other field
        raise ThemeFileError(f"{path}: [variables] must be a table")
    return {str(k): str(v) for k, v in value.items()}


def bundled_theme_specs(folder: Path = THEMES_DIR) -> list[ThemeSpec]:
    """The themes shipped in themes/ (sorted by file name); a broken one is a ThemeFileError."""
    if not folder.is_dir():
        return []
    return [read_theme_file(p) for p in sorted(folder.glob("*.toml"))]


def theme_names(own: str | None = None, folder: Path = THEMES_DIR) -> list[str]:
    """Every name ``tui.theme`` may give (``own``: the name of ``tui.theme_file``)."""
    try:
        bundled = [spec.name for spec in bundled_theme_specs(folder)]
    except ThemeFileError:
        bundled = []
    names = [*(bundled or FALLBACKS), *TEXTUAL_THEMES, *([own] if own else [])]
    return sorted(set(names))


def theme_problem(name: str, available: list[str] | set[str]) -> str | None:
    """None if ``name`` is available (directly or through FALLBACKS), else why not."""
    resolved = name if name in available else FALLBACKS.get(name, name)
    if resolved in available:
        return None
    return f"no theme named {name!r}; available: {', '.join(sorted(available))}"
