"""Theme files turned into textual.theme.Theme, and the choice of the starting theme.

A theme file holds the fields of `textual.theme.Theme` at top level (name, primary, ...,
dark, ansi) and an optional `[variables]` table of Textual design variables. Reading and
checking the file is core.dashboard_settings' (check-config uses it too); here each colour
is parsed exactly and the Theme built. Every problem is a `ThemeError` whose message names
the file: a bad operator theme must be a clear message, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from textual.color import Color, ColorParseError
from textual.theme import Theme

from core.dashboard_settings import (
    ANSI_THEME,
    COLOUR_FIELDS,
    DEFAULT_THEME,
    FALLBACKS,
    THEMES_DIR,
    ThemeSpec,
    bundled_theme_specs,
    read_theme_file,
    theme_problem,
)
from core.dashboard_settings import ThemeFileError as ThemeError

__all__ = [
    "ANSI_THEME", "DEFAULT_THEME", "FALLBACKS", "THEMES_DIR", "ThemeError",
    "bundled_themes", "choose_theme", "load_theme_file", "prefers_ansi",
]


def _theme(spec: ThemeSpec) -> Theme:
    for key in COLOUR_FIELDS:
        value = spec.values.get(key)
        if value is None or value == "ansi_default":
            continue
        try:
            Color.parse(value)
        except ColorParseError:
            raise ThemeError(
                f"{spec.path}: {key} = {value!r} is not a colour (try #RRGGBB or ansi_blue)"
            ) from None
    try:
        theme = Theme(name=spec.name, **spec.values)
        theme.to_color_system()  # fail here, not at the first render
    except Exception as exc:
        raise ThemeError(f"{spec.path}: not a usable theme: {exc}") from None
    return theme


def load_theme_file(path: str | os.PathLike[str]) -> Theme:
    return _theme(read_theme_file(path))


def bundled_themes(folder: Path = THEMES_DIR) -> list[Theme]:
    """The themes shipped in themes/ (sorted by file name); a broken one is a ThemeError."""
    return [_theme(spec) for spec in bundled_theme_specs(folder)]


def prefers_ansi(env: Mapping[str, str] = os.environ) -> bool:
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
    env: Mapping[str, str] = os.environ,
) -> str:
    """--theme > VMSH_THEME > tui.theme in the config > ANSI on 16-colour terminals > dark."""
    for source, name in (("--theme", flag), ("VMSH_THEME", env.get("VMSH_THEME")), ("tui.theme", config)):
        if name:
            problem = theme_problem(name, available)
            if problem:
                raise ThemeError(f"{source}: {problem}")
            return name if name in available else FALLBACKS[name]
    wanted = ANSI_THEME if prefers_ansi(env) else DEFAULT_THEME
    return wanted if wanted in available else FALLBACKS[wanted]
