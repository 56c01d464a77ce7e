"""Modal and full screens: confirm, error list, help, namespace detail."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Resize
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Static


class ConfirmScreen(ModalScreen[bool]):
    """Yes / no before anything costly. `y`/enter confirms, `n`/esc cancels."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "Cancel"),
    ]

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__()
        self.question = question
        self.detail = detail

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(self.question, style="bold"), id="question")
            if self.detail:
                yield Static(Text(self.detail), id="detail")
            with Horizontal(id="buttons"):
                yield Button("Yes (y)", variant="primary", id="yes")
                yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#yes", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class MessageScreen(ModalScreen[None]):
    """A title and lines (e.g. config errors with file:line), closed with esc or enter."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, title: str, lines: Iterable[str], *, error: bool = True) -> None:
        super().__init__()
        self.title_text = title
        self.lines = list(lines)
        self.error = error

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="error" if self.error else ""):
            yield Static(Text(self.title_text, style="bold"), id="question")
            with VerticalScroll(id="lines"):
                yield Static(Text("\n".join(self.lines)))
            yield Static(Text("esc / enter: close", style="dim"))

    def action_close(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """Every key the dashboard answers to, as currently mapped (config `tui.keys`). Sized to
    the terminal: what does not fit scrolls, the hint line says so, and the footer shows
    this screen's own keys (the dashboard's are hidden while it is open)."""

    BINDINGS = [
        Binding("escape,q,question_mark", "close", "Close"),
        Binding("j,down", "scroll(1)", "Scroll down"),
        Binding("k,up", "scroll(-1)", "Scroll up"),
    ]

    def __init__(self, rows: list[tuple[str, str]], notes: list[str]) -> None:
        super().__init__()
        self.rows = rows
        self.notes = notes

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for key, description in self.rows:
            table.add_row(key, description)
        with Vertical(id="dialog", classes="help"):
            yield Static(Text("Keys", style="bold"))
            with VerticalScroll(id="lines"):
                yield Static(table)
                if self.notes:
                    yield Static(Text("\n".join(self.notes), style="dim"))
            yield Static(Text("", style="dim"), id="hint")
        yield Footer(compact=True)

    # Rows around the list: the dialog's border (2), its title and hint lines, the footer.
    CHROME_ROWS = 5

    def on_mount(self) -> None:
        self._fit(self.size.height)

    def on_resize(self, event: Resize) -> None:
        self._fit(event.size.height)

    def _fit(self, height: int) -> None:
        self.query_one("#lines", VerticalScroll).styles.max_height = max(3, height - self.CHROME_ROWS)
        self.call_after_refresh(self._update_hint)

    def _update_hint(self) -> None:
        scroll = self.query_one("#lines", VerticalScroll)
        below = int(scroll.max_scroll_y - scroll.scroll_y)
        more = f"{below} more line(s) below: j/down  " if below > 0 else ""
        self.query_one("#hint", Static).update(Text(f"{more}esc: close", style="dim"))

    def action_scroll(self, step: int) -> None:
        scroll = self.query_one("#lines", VerticalScroll)
        scroll.scroll_to(y=scroll.scroll_y + step, animate=False, immediate=True)
        self._update_hint()

    def action_close(self) -> None:
        self.dismiss(None)


class DetailScreen(Screen[None]):
    """One namespace: its config, witnesses, schema policy, recent receipts and errors."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("j", "scroll('down')", "Down", show=False),
        Binding("k", "scroll('up')", "Up", show=False),
    ]

    def __init__(self, namespace: str, body: Text) -> None:
        super().__init__()
        self.namespace = namespace
        self.body = body

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="detail-body", classes="pane") as scroll:
            scroll.border_title = f"Namespace {self.namespace}"
            yield Static(self.body)
        yield Footer(compact=True)

    def action_scroll(self, direction: str) -> None:
        scroll = self.query_one("#detail-body", VerticalScroll)
        if direction == "down":
            scroll.scroll_down(animate=False)
        else:
            scroll.scroll_up(animate=False)
