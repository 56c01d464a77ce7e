"""DiffTable: rows diffed by key, many-row changes rebuilt, the selection kept."""

from __future__ import annotations

from textual.app import App, ComposeResult

from tui.rows import Cell
from tui.widgets import REBUILD_AFTER, DiffTable

COLUMNS = (("name", "Name", None), ("n", "N", 6))


def rows(names, n=0):
    return {name: (Cell(name, name), Cell(str(n), n)) for name in names}


class One(App):
    def compose(self) -> ComposeResult:
        yield DiffTable(COLUMNS, id="t")


def cells(table: DiffTable) -> list[tuple[str, str]]:
    return [tuple(c.text for c in table.get_row(k)) for k in table.shown_keys]


async def test_filter_that_hides_many_rows_keeps_the_selected_row_and_order():
    names = [f"job{i:03d}" for i in range(100)]
    app = One()
    async with app.run_test(size=(60, 20)) as pilot:
        table = app.query_one(DiffTable)
        table.show(rows(names))
        table.move_cursor(row=table.get_row_index("job015"), animate=False)
        table.set_filter("job01")  # 90 rows go at once: rebuilt, not removed one by one
        await pilot.pause()
        assert table.shown_keys == [f"job01{i}" for i in range(10)]
        assert table.selected_key == "job015"
        table.set_filter("")
        await pilot.pause()
        assert table.shown_keys == names and table.selected_key == "job015"


async def test_changed_cells_are_updated_in_place_and_few_removals_diff():
    names = [f"job{i}" for i in range(REBUILD_AFTER + 4)]
    app = One()
    async with app.run_test(size=(60, 20)) as pilot:
        table = app.query_one(DiffTable)
        table.show(rows(names))
        table.show({**rows(names[2:]), "job3": (Cell("job3", "job3"), Cell("7", 7))})
        await pilot.pause()
        assert ("job3", "7") in cells(table) and ("job4", "0") in cells(table)
        assert table.row_count == len(names) - 2
        assert "job0" not in table.shown_keys
