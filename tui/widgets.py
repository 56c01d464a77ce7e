"""The dashboard's panes: tables diffed by row key, a bounded log, the one-line header."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.geometry import Region
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import DataTable, Log, Static
from textual.widgets.data_table import ColumnKey, DuplicateKey, Row, RowKey

from core.events import LogRecord
from core.heap import no_collection
from tui.rows import LEVEL_RANK, LOG_LEVELS, TableCell, log_line

Columns = tuple[tuple[str, str, int | None], ...]
REBUILD_AFTER = 8  # rows removed in one sync beyond which the table is rebuilt instead


def _text_width(text: str) -> int:
    """Terminal cells of a cell's text; printable ASCII (names, numbers) is one a character."""
    return len(text) if text.isascii() and text.isprintable() else cell_len(text)


class _BuiltRow:
    """A row's parts in DataTable's tables, made from `cells`."""

    __slots__ = ("cells", "data", "key", "row")

    def __init__(self, cells: tuple[TableCell, ...], key: RowKey, data: dict[ColumnKey, TableCell]) -> None:
        self.cells, self.key, self.data = cells, key, data
        self.row = Row(key, 1)


class DiffTable(DataTable):
    """A DataTable fed whole snapshots (`show`).

    Rows are diffed by key: new keys are added, gone keys removed, and only the cells
    whose value changed are updated. Only when more than REBUILD_AFTER rows go at once
    is the table cleared and refilled (removing rows one by one costs O(n) each). A
    filter hides rows by removing them from the table (they stay in `all_rows`).
    """

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("s", "cycle_sort", "Sort", id="sort"),
        Binding("S", "reverse_sort", "Reverse sort", show=False, id="reverse_sort"),
    ]

    class FilterChanged(Message):
        def __init__(self, table: DiffTable) -> None:
            super().__init__()
            self.table = table

    def __init__(
        self,
        columns: Columns,
        *,
        id: str | None = None,
        sort_index: int = 0,
        sort_reverse: bool = False,
        hidden_when_compact: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.column_spec = columns
        self.compact = False
        self.hidden_when_compact = hidden_when_compact
        self.all_rows: dict[str, tuple[TableCell, ...]] = {}
        self._shown: dict[str, tuple[TableCell, ...]] = {}
        # Each row's DataTable parts, kept while its cells stay the same, shown or filtered
        # out: clearing a filter on 100,000 rows put them back, not built again.
        self._built: dict[str, _BuiltRow] = {}
        self.filter_text = ""
        self.sort_index = sort_index
        self.sort_reverse = sort_reverse
        for key, label, width in columns:
            self.add_column(label, key=key, width=width)
        self._update_sort_labels()

    # ---- data in

    def show(self, rows: Mapping[str, tuple[TableCell, ...]]) -> None:
        """Make the table show exactly `rows` (minus the filtered-out ones)."""
        self.all_rows = dict(rows)
        if len(self._built) > len(self.all_rows):
            self._built = {k: b for k, b in self._built.items() if k in self.all_rows}
        self._sync()

    def redraw(self) -> None:
        """The time the live cells are shown at moved: draw the rows on screen again. Only
        the rendering caches are dropped: a new update count would also rebuild the rows'
        order and line offsets, O(rows) (0.5 s a second at 100,000 rows)."""
        for cache in (self._row_render_cache, self._cell_render_cache, self._row_renderable_cache, self._line_cache):
            cache.clear()
        self.refresh()

    def _match(self, row: tuple[TableCell, ...]) -> bool:
        needle = self.filter_text.lower()
        return not needle or any(needle in cell.text.lower() for cell in row)

    def _sync(self) -> None:
        # What a diff or sort of many rows makes and drops (a sort's keys: 200,000 tuples at
        # 100,000 rows) would otherwise outlive young collections and set off a full one,
        # which walks every row: about a second at 100,000 rows.
        with no_collection():
            self._sync_rows()

    def _sync_rows(self) -> None:
        wanted = {k: r for k, r in self.all_rows.items() if self._match(r)}
        gone = [k for k in self._shown if k not in wanted]
        kept = len(self._shown) - len(gone)
        if len(gone) > REBUILD_AFTER or len(wanted) - kept > max(kept, REBUILD_AFTER):
            self._rebuild(wanted)  # many rows gone, or more rows coming than there are
            return
        resort = False
        for key in gone:
            self.remove_row(key)
            del self._shown[key]
        columns = [ColumnKey(c[0]) for c in self.column_spec]
        changed = False
        added: list[tuple[str, tuple[TableCell, ...]]] = []
        for key, row in wanted.items():
            old = self._shown.get(key)
            if old is None:
                added.append((key, row))
                resort = True
            elif old is not row and old != row:
                # Write changed cells in place and refresh once below: DataTable.update_cell
                # refreshes (and re-measures) the whole table on every call.
                built = self._built[key]
                for index, (before, after) in enumerate(zip(old, row, strict=True)):
                    if before != after:
                        built.data[columns[index]] = after
                        changed = True
                        resort = resort or (index == self.sort_index and before.sort != after.sort)
                built.cells = row
            self._shown[key] = row
        self._add_rows(added)
        if changed:
            self._update_count += 1
            self.refresh()
        if resort:
            self._sort()

    def _rebuild(self, wanted: dict[str, tuple[TableCell, ...]]) -> None:
        """Many rows gone at once (a filter, the receipts after a big pass): clear and add.
        DataTable.remove_row re-indexes every row and moves the cursor on each call, so
        removing k of n rows one by one costs k x n."""
        selected = self._kept_selection()  # read before clear() moves the cursor to row 0
        self.clear()
        self._shown = dict(wanted)
        self._add_rows(list(wanted.items()))
        self._sort(selected)

    def _add_rows(self, rows: list[tuple[str, tuple[TableCell, ...]]]) -> None:
        """DataTable.add_row for many rows at once: the same tables filled, each row's
        columns sized by `_widen` (DataTable would measure every cell again on idle), and
        the cursor checked and the idle hook run once, not once a row (which made showing
        100,000 rows take 9 s). A row built before with the same cells (filtered out, now
        back) reuses its parts."""
        if not rows:
            return
        first = not self.rows
        columns = [column.key for column in self.ordered_columns]
        index = self.row_count
        built_rows, data, table_rows = self._built, self._data, self.rows
        locations: dict[RowKey, int] = {}
        measure: list[tuple[TableCell, ...]] = []
        for key, cells in rows:
            built = built_rows.get(key)
            if built is None or built.cells is not cells:
                built = built_rows[key] = _BuiltRow(cells, RowKey(key), dict(zip(columns, cells, strict=True)))
                measure.append(cells)
            locations[built.key] = index
            data[built.key] = built.data
            table_rows[built.key] = built.row
            index += 1
        if len(locations) != len(rows):
            raise DuplicateKey(f"a row key given twice among {len(rows)} rows")
        if first:  # built in one go (TwoWayDict's own __setitem__ is a call per row)
            self._row_locations = type(self._row_locations)(locations)
        else:
            for row_key, row_index in locations.items():
                if row_key in self._row_locations:
                    raise DuplicateKey(f"The row key {row_key!r} already exists.")
                self._row_locations[row_key] = row_index
        self._widen(measure)  # a row built before was measured then
        self._require_update_dimensions = True
        self.cursor_coordinate = self.cursor_coordinate
        if first and self.columns and self.show_cursor and self.cursor_type != "none":
            self._highlight_cursor()
        self._update_count += 1
        self.check_idle()

    def _widen(self, rows: list[tuple[TableCell, ...]]) -> None:
        """Size the auto-width columns for `rows`. DataTable measures new rows on idle but
        keeps rows it already rendered at the old width; sizing here makes the first
        render right."""
        gap = int(self.compact)
        for index, (key, _, width) in enumerate(self.column_spec):
            if width is None and rows and not (self.compact and key in self.hidden_when_compact):
                column = self.columns[ColumnKey(key)]
                widest = max(_text_width(row[index].text) for row in rows)
                column.content_width = max(column.content_width, widest + gap)

    def set_compact(self, compact: bool) -> None:
        """Narrow terminals: one space between columns instead of two (no cell padding; the
        gap is the last cell of each column's width), and the `hidden_when_compact` columns
        take no width, so real target names and `backing off` fit 80 columns."""
        if compact == self.compact:
            return
        self.compact = compact
        self._built = {key: self._built[key] for key in self._shown}  # the others measured at the old gap
        gap = int(compact)
        self.cell_padding = 0 if compact else 1
        for index, (key, label, width) in enumerate(self.column_spec):
            column = self.columns[ColumnKey(key)]
            if compact and key in self.hidden_when_compact:
                column.auto_width, column.width = False, 0
                continue
            if width is not None:  # room for the label and its sort arrow, then the gap
                column.auto_width, column.width = False, max(width, cell_len(label) + 2) + gap
            else:
                cells = [cell_len(row[index].text) for row in self._shown.values()]
                column.auto_width = True
                column.content_width = max([cell_len(label) + 2, *cells]) + gap  # + 2: the sort arrow
        self._require_update_dimensions = True
        self.refresh()

    # ---- sorting and filtering

    def _kept_selection(self) -> str | None:
        """The row the cursor should stay on; None when it is on the first row, which it
        then keeps, so a newest-first pane goes on showing the newest rows as they arrive."""
        return None if self.cursor_row == 0 else self.selected_key

    def _sort(self, selected: str | None = None) -> None:
        """Sort, then put the cursor back on `selected` (default: the kept selection)."""
        with no_collection():  # as in _sync
            self._sort_rows(selected)

    def _sort_rows(self, selected: str | None) -> None:
        if selected is None:
            selected = self._kept_selection()
        i = self.sort_index
        order = sorted(
            self._shown.items(), key=lambda item: (item[1][i].sort, item[1][0].sort, item[1][1].sort),
            reverse=self.sort_reverse,
        )
        # DataTable.sort, over the rows' own cells: it would make a tuple of each row's
        # cells from its column dict first (0.6 s a sort at 100,000 rows)
        built = self._built
        self._row_locations = type(self._row_locations)({built[key].key: n for n, (key, _) in enumerate(order)})
        self._update_count += 1
        self.refresh()
        if selected is not None and selected in self._shown:
            self.move_cursor(row=self.get_row_index(selected), animate=False)
        elif self.row_count:
            self.move_cursor(row=0, animate=False)

    def _update_sort_labels(self) -> None:
        arrow = " v" if self.sort_reverse else " ^"
        for index, (key, label, _) in enumerate(self.column_spec):
            column = self.columns.get(key)  # type: ignore[call-overload]
            if column is not None:
                column.label = Text(label + (arrow if index == self.sort_index else ""))
        if self.is_mounted:
            self.refresh()

    def action_cycle_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(self.column_spec)
        self._update_sort_labels()
        self._sort()
        self.notify(f"sorted by {self.column_spec[self.sort_index][1]}", timeout=2)

    def action_reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._update_sort_labels()
        self._sort()

    def set_filter(self, text: str) -> None:
        if text != self.filter_text:
            self.filter_text = text
            self._sync()
            self.post_message(self.FilterChanged(self))

    @property
    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            key: RowKey | None = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:
            return None
        return None if key is None else key.value

    @property
    def shown_keys(self) -> list[str]:
        """Row keys in display order (what the operator sees, top to bottom)."""
        return [row.key.value for row in self.ordered_rows if row.key.value is not None]


class LogView(Log):
    """The Logs pane's text area: a bounded buffer, a level filter, a text search, follow,
    and a selected line (j/k) whose whole record enter opens and whose job `f` forces.

    `shown` holds the record of each line on screen, in step with `lines` (the same bound,
    one line per record); the selection is a sequence number of a shown line, so it stays
    on its line when old lines are dropped from the top. While following, the selection
    is the newest line."""

    BINDINGS = [
        Binding("j,down", "move(1)", "Down", show=False),
        Binding("k,up", "move(-1)", "Up", show=False),
        Binding("l", "cycle_level", "Level", id="log_level"),
        Binding("p", "toggle_follow", "Follow", id="log_follow"),
        Binding("G,end", "follow", "End", show=False),
    ]
    DEFAULT_CSS = "LogView > .log--cursor { text-style: reverse; }"
    COMPONENT_CLASSES = {"log--cursor"}

    class FilterChanged(Message):
        def __init__(self, view: LogView) -> None:
            super().__init__()
            self.view = view

    def __init__(self, *, max_lines: int = 5000, data_dir: str = "", id: str | None = None) -> None:
        super().__init__(max_lines=max_lines, auto_scroll=True, id=id)
        self.records: deque[LogRecord] = deque(maxlen=max_lines)
        self.shown: deque[LogRecord] = deque(maxlen=max_lines)
        self._written = 0  # lines written since the last clear: the next line's sequence number
        self._cursor = -1  # sequence number of the selected line; -1: none yet
        self.data_dir = data_dir
        self.filter_text = ""
        self.min_level = "DEBUG"

    def _match(self, record: LogRecord, line: str) -> bool:
        if LEVEL_RANK.get(record.level, 1) < LEVEL_RANK[self.min_level]:
            return False
        return not self.filter_text or self.filter_text.lower() in line.lower()

    def _write(self, records: Iterable[LogRecord]) -> None:
        lines = []
        for r in records:
            line = log_line(r, self.data_dir)
            if self._match(r, line):
                lines.append(line)
                self.shown.append(r)
        if lines:
            self._written += len(lines)
            self.write_lines(lines)
        if self.auto_scroll:
            self._cursor = self._written - 1

    def add(self, records: Iterable[LogRecord]) -> None:
        kept = list(records)[-(self.records.maxlen or 0) :]  # the deque is always bounded
        self.records.extend(kept)
        self._write(kept)

    def _rerender(self) -> None:
        self.clear()
        self.shown.clear()
        self._written = 0
        self._cursor = -1
        self._write(self.records)
        self.post_message(self.FilterChanged(self))

    def set_filter(self, text: str) -> None:
        if text != self.filter_text:
            self.filter_text = text
            self._rerender()

    # ---- the selected line

    @property
    def cursor_line(self) -> int | None:
        """Index in `lines` of the selected line, or None."""
        index = self._cursor - (self._written - len(self.shown))
        return index if 0 <= index < len(self.shown) else None

    @property
    def selected_record(self) -> LogRecord | None:
        index = self.cursor_line
        return None if index is None else self.shown[index]

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        if self.cursor_line == self.scroll_offset.y + y and self.has_focus:
            strip = strip.apply_style(self.get_component_rich_style("log--cursor"))
        return strip

    def action_move(self, step: int) -> None:
        if not self.shown:
            return
        index = self.cursor_line
        index = len(self.shown) - 1 if index is None else max(0, min(len(self.shown) - 1, index + step))
        self._cursor = self._written - len(self.shown) + index
        following = index == len(self.shown) - 1 and step > 0
        if self.auto_scroll != following:
            self.auto_scroll = following
            self.post_message(self.FilterChanged(self))
        self.scroll_to_region(Region(0, index, 1, 1), animate=False, immediate=True)
        self.refresh()

    # ---- level, follow

    def action_cycle_level(self) -> None:
        self.min_level = LOG_LEVELS[(LOG_LEVELS.index(self.min_level) + 1) % len(LOG_LEVELS)]
        self._rerender()
        self.notify(f"logs: {self.min_level} and above", timeout=2)

    def action_toggle_follow(self) -> None:
        self.auto_scroll = not self.auto_scroll
        if self.auto_scroll:
            self.action_follow()
        else:
            self.post_message(self.FilterChanged(self))
        self.notify("logs: following" if self.auto_scroll else "logs: follow paused", timeout=2)

    def action_follow(self) -> None:
        self.auto_scroll = True
        self._cursor = self._written - 1
        self.scroll_end(animate=False)
        self.refresh()
        self.post_message(self.FilterChanged(self))


class Pane(Vertical):
    """A titled, bordered box around one table or the log; the unit the tabs switch between."""

    def __init__(
        self, title: str, body: DiffTable | LogView, *, id: str, note: Widget | None = None, note_above: bool = False
    ) -> None:
        """`note`: a few lines under the body (above it with `note_above`)."""
        children = [body] if note is None else [note, body] if note_above else [body, note]
        super().__init__(*children, id=id, classes="pane")
        self.title = title
        self.body = body
        self.border_title = title

    def describe_filter(self) -> None:
        """Show the active filter (and for logs, level and follow) under the pane."""
        body = self.body
        parts = []
        if body.filter_text:
            parts.append(f"/{body.filter_text}")
        if isinstance(body, LogView):
            if body.min_level != "DEBUG":
                parts.append(f"{body.min_level}+")
            if not body.auto_scroll:
                parts.append("follow paused")
        self.border_subtitle = "  ".join(parts) if parts else None


class HeaderBar(Static):
    """One line: health, uptime, config hash, job counts, PAUSED and READONLY badges."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self._last: Text | None = None

    def show(self, text: Text) -> None:
        if self._last is None or text != self._last:
            self._last = text
            self.update(text)
