"""The memory overview (F3): the whole KV memory at a glance. Budgets, every agent's block chain on one
scale (forks under the agent they were forked from, and what each shares with it), what shared prefixes
save, time to first token cold vs resumed per agent, and the turns of this run with the engine's resume
decisions and evictions. Enter (or i) opens the highlighted agent's inspector. It is read again every few
seconds (and on r): other clients of a server change it too."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, Static

from workbench.tui.agent_tree import tree_lines
from workbench.tui.block_map import LEGEND, block_kinds, blocks_per_cell, scaled_cells
from workbench.tui.memory_panels import budgets, fork_shares, sharing, short, timeline, ttft_chart
from workbench.tui.origins import origin
from workbench.tui.turn_log import TurnRecord

NAME_CHARS = 16
TABLE_CHROME = NAME_CHARS + 18  # the name, tier and tokens columns, and the gaps between columns
REFRESH_S = 5.0


class OverviewScreen(Screen):
    BINDINGS = [
        Binding("escape,f3", "app.pop_screen", "Back"),
        Binding("i", "inspect", "Inspect agent"),
        Binding("r", "reload", "Refresh"),
    ]

    def __init__(self, overview: dict, turns: list[TurnRecord], evictions_before: int):
        """`overview`: the pool, every agent's row with its stored `chain`, and the block size in tokens."""
        super().__init__()
        self.pool, self.rows, self.block_tokens = overview["pool"], overview["rows"], overview["block_tokens"]
        self.turns, self.evictions_before = turns, evictions_before
        self.problem: str | None = None  # why the last refresh failed, said once rather than every few seconds

    def compose(self) -> ComposeResult:
        yield Header()
        width = self.app.size.width - 4  # the scroll's padding and scrollbar
        with VerticalScroll(id="overview"):
            yield Static(budgets(self.pool, width), id="budgets")
            yield Static(sharing(self.pool, self.rows), id="sharing")
            kinds = {row["id"]: block_kinds(row, self.block_tokens) for row in self.rows}
            per_cell = blocks_per_cell(max(map(len, kinds.values()), default=0), width - TABLE_CHROME)
            yield Label(
                f"[b]Blocks[/b] · one cell is {per_cell} block{'s' if per_cell > 1 else ''} of "
                f"{self.block_tokens} tokens · ▣ pinned · Enter inspects"
            )
            table = DataTable(id="chains", cursor_type="row", zebra_stripes=False, show_header=False)
            table.add_columns("agent", "tier", "tokens", "blocks")
            for line in tree_lines(self.rows):  # forks under the agent they were forked from
                row = line.row
                cells = scaled_cells(kinds[row["id"]], per_cell, bool(row.get("pinned")))
                table.add_row(
                    Text(line.head + short(origin(row).name, NAME_CHARS - len(line.head))),  # a title is not markup
                    Text(row["tier"]),  # a string cell would be read as markup
                    f"{row['tokens']:>6}",
                    Text.from_markup(cells or "[dim]-[/dim]"),
                    key=row["id"],
                )
            yield table
            yield Static(LEGEND, id="legend")
            yield Label("[b]Time to first token[/b] · this run, cold vs resumed")
            yield Static(ttft_chart(self.turns, self.rows, width), id="ttft-chart")
            yield Label("[b]Turns[/b] · oldest first")
            yield Static(timeline(self.turns, self.evictions_before, width), id="timeline")
            yield Static(fork_shares(self.rows), id="fork-shares")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#chains", DataTable).focus()  # Up/Down pick an agent, Enter inspects it
        self.set_interval(REFRESH_S, self.action_reload)

    def action_reload(self) -> None:
        self.app.reload_overview(self)

    async def show(self, overview: dict, turns: list[TurnRecord]) -> None:
        """Draw `overview` instead, keeping the highlighted agent and the scroll position."""
        table = self.query_one("#chains", DataTable)
        chosen = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value if table.row_count else None
        scrolled = self.query_one("#overview", VerticalScroll).scroll_y
        self.pool, self.rows, self.block_tokens = overview["pool"], overview["rows"], overview["block_tokens"]
        self.turns = turns
        await self.recompose()
        table = self.query_one("#chains", DataTable)
        if chosen is not None and chosen in table.rows:
            table.move_cursor(row=table.get_row_index(chosen))
        table.focus()
        self.query_one("#overview", VerticalScroll).scroll_to(y=scrolled, animate=False)

    def action_inspect(self) -> None:
        table = self.query_one("#chains", DataTable)
        if table.row_count:
            self.app.open_inspector(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    @on(DataTable.RowSelected, "#chains")
    def chosen(self, event: DataTable.RowSelected) -> None:
        self.app.open_inspector(event.row_key.value)
