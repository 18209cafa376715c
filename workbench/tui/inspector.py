"""The memory inspector: the KV pool as a whole, the selected agent's block chain (and the blocks it shares
with the agent it was forked from and with its forks), and its time to first token per turn (cold vs
resumed), so the memory can be seen paying off."""

from __future__ import annotations

import time

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, ProgressBar, Static

from workbench.tui.agent_tree import lineage_lines
from workbench.tui.block_map import block_strip
from workbench.tui.charts import columns
from workbench.tui.turn_log import TurnRecord

SOURCE_WORD = {"cold": "[red]cold[/]", "hot": "[green]hot[/]", "warm": "[cyan]warm[/]"}


def mebibytes(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp)) if timestamp else "-"


def keeping_line(row: dict) -> str:
    """How long the agent's caches are kept (engine/kv/policy.py): pinned, a retention, a client's hint."""
    parts = ["pinned: evicted last, never by the disk budget" if row.get("pinned") else "not pinned (F6 pins)"]
    if row.get("retention_s") is not None:
        parts.append(f"caches expire after {row['retention_s']} s idle")
    if row.get("kept_until"):
        parts.append(f"kept until {time.strftime('%H:%M:%S', time.localtime(row['kept_until']))} (a client's hint)")
    return "; ".join(parts)


def ttft_columns(turns: list[TurnRecord], shown: int = 12) -> str:
    """The last turns' time to first token as columns, each labelled by where its cache came from."""
    if not turns:
        return "[dim](no turns in this run yet)[/dim]"
    turns = turns[-shown:]
    chart = columns([turn.ttft_s for turn in turns], 2)
    cell = 6  # a column and its value, "0.42 "
    lines = ["".join(f"{c * 4:<{cell}}" for c in line) for line in chart]
    lines.append("".join(f"{turn.ttft_s:<{cell}.2f}" for turn in turns))
    lines.append("".join(SOURCE_WORD.get(turn.source, turn.source) + " " * (cell - len(turn.source)) for turn in turns))
    return "\n".join(lines)


class InspectorScreen(Screen):
    BINDINGS = [Binding("escape,f7", "app.pop_screen", "Back")]

    def __init__(self, inspection: dict, turns: list[TurnRecord], rows: list[dict]):
        """`turns`: the agent's turns of this run; `rows`: every agent's row (the sidebar's), where the
        selected agent's forks are found."""
        super().__init__()
        self.pool, self.row, self.block_tokens = inspection["pool"], inspection["row"], inspection["block_tokens"]
        self.chain = (self.row or {}).get("chain") or []
        self.turns = turns
        self.rows = rows

    def compose(self) -> ComposeResult:
        yield Header()
        hot, warm = self.pool.hot, self.pool.warm
        with Vertical(id="pool"):
            yield Label("[b]KV pool[/b]")
            with Horizontal(id="hot-line"):
                yield Label(f"hot {mebibytes(hot.used_bytes)} of {mebibytes(hot.budget_bytes)} ")
                bar = ProgressBar(total=max(hot.budget_bytes, 1), show_eta=False, id="hot-bar")
                bar.progress = hot.used_bytes
                yield bar
            yield Static(
                f"resident agents {hot.agents} / {hot.max_agents}   "
                f"evictions {hot.evictions}   "
                f"saved by shared blocks {mebibytes(hot.shared_bytes_saved)}\n"
                f"warm on disk {mebibytes(warm.bytes)} in {warm.blocks} blocks"
                + (f" ({warm.dtype})" if warm.dtype else ""),
                id="pool-stats",
            )
        with Vertical(id="agent-blocks"):
            name = self.row["id"] if self.row else "-"
            tokens = self.row.get("tokens", 0) if self.row else 0
            yield Label(
                Content.from_markup(
                    "[b]Agent $name[/b]  $tokens tokens, $block_tokens per block",
                    name=name,
                    tokens=tokens,
                    block_tokens=self.block_tokens,
                )
            )
            if self.row:
                yield Static(lineage_lines(self.row, self.rows), id="lineage", markup=False)
                yield Static(keeping_line(self.row), id="keeping", markup=False)
            yield Static(block_strip(self.row, self.block_tokens), id="strip")
            with Horizontal(id="block-panes"):
                table = DataTable(id="blocks", cursor_type="row", zebra_stripes=True)
                table.add_columns("#", "block", "KiB", "agents")
                for index, block in enumerate(self.chain):
                    table.add_row(str(index), block.name[:12], f"{block.bytes / 1024:.0f}", str(len(block.agents)))
                yield table
                yield Static(self._details(0), id="block-details", markup=False)
            yield Label("time to first token per turn (s), cold vs resumed")
            yield Static(ttft_columns(self.turns), id="ttft")
        yield Footer()

    def _details(self, index: int) -> str:
        if not self.chain:
            return "No stored blocks yet: a block is stored once a turn fills it."
        block = self.chain[index]
        return "\n".join(
            [
                f"block {index}: {block.name}",
                f"tokens {index * self.block_tokens}–{(index + 1) * self.block_tokens - 1}",
                f"{block.bytes:,} bytes" + ("" if block.stored else " (being written)"),
                f"ref count {len(block.agents)}: {', '.join(block.agents)}",
                f"last used {clock(block.last_used)}",
            ]
        )

    @on(DataTable.RowHighlighted, "#blocks")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.query_one("#block-details", Static).update(self._details(event.cursor_row))
