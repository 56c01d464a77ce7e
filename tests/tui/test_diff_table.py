"""DiffTable: rows diffed by key, many-row changes rebuilt, the selection kept."""

from __future__ import annotations

from contextlib import asynccontextmanager

from textual.app import App, ComposeResult

from tui.rows import Cell
from tui.widgets import REBUILD_AFTER, DiffTable

COLUMNS = (("name", "Name", None), ("n", "N", 6))
NAMES = [f"job{i:03d}" for i in range(100)]


def rows(names, n=0):
    return {name: (Cell(name, name), Cell(str(n), n)) for name in names}


def rows_with(names, changed: str, n: int):
    """`rows(names)` with the row `changed` showing `n`."""
    return {**rows(names), changed: (Cell(changed, changed), Cell(str(n), n))}


class One(App):
    def compose(self) -> ComposeResult:
        yield DiffTable(COLUMNS, id="t")


@asynccontextmanager
async def shown(names, size=(60, 20)):
    """A table showing `rows(names)` in a running app: (table, pilot)."""
    app = One()
    async with app.run_test(size=size) as pilot:
        table = app.query_one(DiffTable)
        table.show(rows(names))
        yield table, pilot


def cells(table: DiffTable) -> list[tuple[str, str]]:
    return [tuple(c.text for c in table.get_row(k)) for k in table.shown_keys]


def viewed(table: DiffTable) -> tuple[float, int, str | None]:
    """Where the operator is: the scroll offset, the cursor's row and the job under it."""
    return table.scroll_y, table.cursor_row, table.selected_key


async def scrolled_to_the_middle(table: DiffTable, pilot) -> tuple[float, int, str | None]:
    await pilot.pause()  # laid out first: moving the cursor in a table not yet sized scrolls it
    table.move_cursor(row=60, animate=False)
    table.scroll_to(y=50, animate=False)
    await pilot.pause()
    assert viewed(table) == (50, 60, "job060")
    return viewed(table)


async def test_filter_that_hides_many_rows_keeps_the_selected_row_and_order():
    names = NAMES
    async with shown([*names, "other1", "other2"]) as (table, pilot):
        before = await scrolled_to_the_middle(table, pilot)
        table.set_filter("job")  # two rows go, below the view: diffed, the view stays still
        await pilot.pause()
        assert table.shown_keys == names and viewed(table) == before  # a rebuild scrolls it (to 42)
        table.move_cursor(row=table.get_row_index("job015"), animate=False)
        table.set_filter("job01")  # 90 rows go at once: rebuilt, not removed one by one
        await pilot.pause()
        assert table.shown_keys == [f"job01{i}" for i in range(10)]
        assert table.selected_key == "job015"
        table.set_filter("")
        await pilot.pause()
        assert table.shown_keys == [*names, "other1", "other2"] and table.selected_key == "job015"


async def test_changed_cells_are_updated_in_place_and_few_removals_diff():
    names = NAMES
    async with shown(names) as (table, pilot):
        before = await scrolled_to_the_middle(table, pilot)
        table.show(rows_with(names, "job055", 7))
        await pilot.pause()
        assert ("job055", "7") in cells(table) and ("job056", "0") in cells(table)
        assert viewed(table) == before  # in place: the row the operator reads does not move
        table.show(rows(names[: -REBUILD_AFTER + 1]))  # a few rows go, below the view: diffed
        await pilot.pause()
        assert table.row_count == 100 - REBUILD_AFTER + 1 and "job099" not in table.shown_keys
        assert viewed(table) == before


async def test_a_row_that_changed_while_filtered_out_comes_back_as_it_is_now():
    names = NAMES
    async with shown(names) as (table, pilot):
        table.set_filter("job00")  # 90 rows filtered out, their rows kept aside
        await pilot.pause()
        table.show(rows_with(names, "job050", 9))
        table.set_filter("")
        await pilot.pause()
        assert table.row_count == 100
        assert ("job050", "9") in cells(table) and ("job051", "0") in cells(table)
        table.set_filter("job05")
        table.show(rows_with(names, "job050", 9))  # the same cells again
        table.set_filter("")
        await pilot.pause()
        assert ("job050", "9") in cells(table) and table.shown_keys == names


async def test_rows_filtered_out_when_the_table_turns_compact_are_measured_when_they_come_back():
    long_name = "a-namespace-whose-name-is-much-longer-than-the-others"
    async with shown([*(f"job{i:03d}" for i in range(20)), long_name], size=(120, 20)) as (table, pilot):
        table.set_filter("job")  # the long name hidden
        await pilot.pause()
        assert table.row_count == 20
        table.set_compact(True)  # the Name column sized for what is shown: the short names
        table.set_filter("")
        await pilot.pause()
        assert table.columns[table.ordered_columns[0].key].content_width >= len(long_name)
