"""Every bundled theme read on a 16-colour terminal (the ANSI palette, as over SSH).

A truecolor theme is shown on such a terminal as the nearest of the 16 colours (Rich's
downgrade); an orange accent that lands on bright red made the focused border look like
an error. Each role must land on its own hue there.
"""

from __future__ import annotations

import pytest
from rich.color import Color, ColorSystem

from tui.themes import bundled_themes

from .conftest import World, screen_text

# ANSI colour numbers modulo 8: 1 red, 2 green, 3 yellow, 4 blue, 5 magenta, 6 cyan.
RED, GREEN, YELLOW, BLUE, MAGENTA, CYAN = 1, 2, 3, 4, 5, 6
HUES = {
    "primary": {BLUE, CYAN},
    "accent": {YELLOW, CYAN, MAGENTA},  # the focused border: never red, never the error colour
    "success": {GREEN},
    "warning": {YELLOW},
    "error": {RED},
}
THEMES = {t.name: t for t in bundled_themes()}


def on_16_colours(value: str) -> int:
    """The ANSI colour (0-15) a theme colour is shown as on a 16-colour terminal."""
    if value.startswith("ansi_"):
        return Color.parse(value.removeprefix("ansi_")).number  # type: ignore[return-value]
    return Color.parse(value).downgrade(ColorSystem.STANDARD).number  # type: ignore[return-value]


def test_every_theme_is_checked():
    assert {"vaultmesh-dark", "vaultmesh-light", "vaultmesh-ansi"} <= set(THEMES)


@pytest.mark.parametrize("name", sorted(THEMES))
def test_each_role_keeps_its_hue_on_the_ansi_palette(name: str) -> None:
    theme = THEMES[name]
    for role, hues in HUES.items():
        shown = on_16_colours(getattr(theme, role))
        assert shown % 8 in hues, f"{name}: {role} {getattr(theme, role)} shows as ANSI colour {shown}"
    assert theme.accent is not None and theme.error is not None
    assert on_16_colours(theme.accent) != on_16_colours(theme.error)


async def test_t_to_a_truecolor_theme_on_a_16_colour_terminal_keeps_the_focused_border_readable(tmp_path):
    world = World(tmp_path)
    app = world.app(env={"TERM": "xterm"})  # no COLORTERM: a 16-colour terminal
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.theme == "vaultmesh-ansi"
        await pilot.press("t")
        assert app.theme == "vaultmesh-dark"
        await pilot.pause()
        lines = screen_text(app).splitlines()
        row = next(i for i, line in enumerate(lines) if "1 Namespaces" in line)
        border = app.screen._compositor.render_strips()[row]
        colour = next(s.style.color for s in border if s.text.startswith("─") and s.style and s.style.color)
        shown = colour.downgrade(ColorSystem.STANDARD).number
        assert shown % 8 in HUES["accent"], f"focused border shows as ANSI colour {shown}"
