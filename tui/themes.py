"""Theme files (TOML) turned into textual.theme.Theme, and the choice of the starting theme.

A theme file holds the fields of `textual.theme.Theme` at top level (name, primary, ...,
dark, ansi) and an optional `[variables]` table of Textual design variables. Every
problem is a `ThemeError` whose message names the file: a bad operator theme must be a
clear message, never a traceback.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import fields
from pathlib import Path

from textual.color import Color, ColorParseError
from textual.theme import Theme

# themes/ sits beside tui/ in the source tree (editable installs, `make run`).
THEMES_DIR = Path(__file__).resolve().parent.parent / "themes"
DEFAULT_THEME = "vaultmesh-dark"
ANSI_THEME = "vaultmesh-ansi"
# Used when themes/ is not shipped (a wheel without data files): Textual's own themes.
FALLBACKS = {"vaultmesh-dark": "textual-dark", "vaultmesh-light": "textual-light", "vaultmesh-ansi": "ansi-dark"}

_COLOR_FIELDS = (
    "primary", "secondary", "warning", "error", "success", "accent",
    "foreground", "background", "surface", "panel", "boost",
)  # fmt: skip
_FIELDS = {f.name for f in fields(Theme)}


class ThemeError(Exception):
    """A theme file or name that cannot be used; the message says which and why."""


def _color(path: Path, name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ThemeError(f"{path}: {name} must be a colour string, got {value!r}")
    if value == "ansi_default":
        return value
    try:
        Color.parse(value)
    except ColorParseError:
        raise ThemeError(f"{path}: {name} = {value!r} is not a colour (try #RRGGBB or ansi_blue)") from None
    return value


def load_theme_file(path: str | os.PathLike[str]) -> Theme:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ThemeError(f"{path}: theme file not found") from None
    except OSError as exc:
        raise ThemeError(f"{path}: cannot read theme file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ThemeError(f"{path}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ThemeError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ThemeError(f"{path}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(_FIELDS))}")
    name = data.get("name") or path.stem
    if not isinstance(name, str):
        raise ThemeError(f"{path}: name must be a string, got {name!r}")
    if "primary" not in data:
        raise ThemeError(f"{path}: primary is required")
    kwargs: dict[str, object] = {"name": name}
    for key, value in data.items():
        if key in _COLOR_FIELDS:
            kwargs[key] = _color(path, key, value)
        elif key in ("dark", "ansi"):
            if not isinstance(value, bool):
                raise ThemeError(f"{path}: {key} must be true or false, got {value!r}")
            kwargs[key] = value
        elif key in ("luminosity_spread", "text_alpha"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ThemeError(f"{path}: {key} must be a number, got {value!r}")
            kwargs[key] = float(value)
        elif key == "variables":
            if not isinstance(value, dict):
                raise ThemeError(f"{path}: [variables] must be a table")
            kwargs[key] = {str(k): str(v) for k, v in value.items()}
    try:
        theme = Theme(**kwargs)  # type: ignore[arg-type]
        theme.to_color_system()  # fail here, not at the first render
    except Exception as exc:
        raise ThemeError(f"{path}: not a usable theme: {exc}") from None
    return theme


def bundled_themes(folder: Path = THEMES_DIR) -> list[Theme]:
    """The themes shipped in themes/ (sorted by file name); a broken one is a ThemeError."""
    if not folder.is_dir():
        return []
    return [load_theme_file(p) for p in sorted(folder.glob("*.toml"))]


def prefers_ansi(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """A terminal that says it has no truecolor / 256 colours gets the ANSI theme."""
    if env.get("COLORTERM", "").lower() in ("truecolor", "24bit"):
        return False
    term = env.get("TERM", "")
    return term in ("linux", "vt100", "vt220", "xterm", "screen", "tmux", "ansi") or "16color" in term


def choose_theme(
    available: set[str],
    *,
    flag: str | None = None,
    config: str | None = None,
    env: dict[str, str] | os._Environ[str] = os.environ,
) -> str:
    """--theme > VMSH_THEME > tui.theme in the config > ANSI on 16-colour terminals > dark."""
    for source, name in (("--theme", flag), ("VMSH_THEME", env.get("VMSH_THEME")), ("tui.theme", config)):
        if name:
            resolved = name if name in available else FALLBACKS.get(name, name)
            if resolved not in available:
                raise ThemeError(
                    f"{source}: no theme named {name!r}; available: {', '.join(sorted(available))}"
                )
            return resolved
    wanted = ANSI_THEME if prefers_ansi(env) else DEFAULT_THEME
    return wanted if wanted in available else FALLBACKS[wanted]
