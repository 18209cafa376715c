"""The memory inspector: the KV pool as a whole, the selected agent's block chain, and its time to first
token per turn (cold vs resumed), so the memory can be seen paying off."""

from __future__ import annotations

import time

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, ProgressBar, Sparkline, Static

CELL = {
    "shared": "[magenta]■[/]",
    "warm": "[cyan]■[/]",
    "hot": "[green]■[/]",
    "pending": "[yellow]■[/]",
    "none": "[dim]□[/]",
}
LEGEND = (
    f"{CELL['shared']} shared  {CELL['warm']} on disk  {CELL['hot']} in memory only  "
    f"{CELL['pending']} being written  {CELL['none']} not stored"
)


def mebibytes(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp)) if timestamp else "-"


def block_kinds(row: dict | None, block_tokens: int) -> list[str]:
    """One kind per block of the agent's tokens: from its stored chain, then what only memory holds."""
    if not row:
        return []
    chain = row.get("chain") or []
    kinds = [("shared" if len(block["agents"]) > 1 else "warm") if block["stored"] else "pending" for block in chain]
    total = -(-row.get("tokens", 0) // block_tokens)
    rest = "hot" if row.get("tier") == "hot" else "none"
    return kinds + [rest] * max(0, total - len(kinds))


def block_strip(row: dict | None, block_tokens: int) -> str:
    if not row:
        return "(no agent selected)"
    kinds = block_kinds(row, block_tokens)
    return (" ".join(CELL[kind] for kind in kinds) if kinds else "(no KV blocks yet)") + f"\n{LEGEND}"


class InspectorScreen(Screen):
    BINDINGS = [Binding("escape,f3", "app.pop_screen", "Back")]

    def __init__(self, inspection: dict, ttfts: list[tuple[str, float]]):
        super().__init__()
        self.pool, self.row, self.block_tokens = inspection["pool"], inspection["row"], inspection["block_tokens"]
        self.chain = (self.row or {}).get("chain") or []
        self.ttfts = ttfts

    def compose(self) -> ComposeResult:
        yield Header()
        hot, warm = self.pool.get("hot") or {}, self.pool.get("warm") or {}
        with Vertical(id="pool"):
            yield Label("[b]KV pool[/b]")
            with Horizontal(id="hot-line"):
                yield Label(f"hot {mebibytes(hot.get('used_bytes', 0))} of {mebibytes(hot.get('budget_bytes', 0))} ")
                bar = ProgressBar(total=max(hot.get("budget_bytes", 1), 1), show_eta=False, id="hot-bar")
                bar.progress = hot.get("used_bytes", 0)
                yield bar
            yield Static(
                f"resident agents {hot.get('agents', 0)} / {hot.get('max_agents', 0)}   "
                f"evictions {hot.get('evictions', 0)}   "
                f"saved by shared blocks {mebibytes(hot.get('shared_bytes_saved', 0))}\n"
                f"warm on disk {mebibytes(warm.get('bytes', 0))} in {warm.get('blocks', 0)} blocks"
                + (f" ({warm['dtype']})" if warm.get("dtype") else ""),
                id="pool-stats",
            )
        with Vertical(id="agent-blocks"):
            name = self.row["id"] if self.row else "-"
            tokens = self.row.get("tokens", 0) if self.row else 0
            yield Label(f"[b]Agent {name}[/b]  {tokens} tokens, {self.block_tokens} per block")
            yield Static(block_strip(self.row, self.block_tokens), id="strip")
            with Horizontal(id="block-panes"):
                table = DataTable(id="blocks", cursor_type="row", zebra_stripes=True)
                table.add_columns("#", "block", "KiB", "agents")
                for index, block in enumerate(self.chain):
                    table.add_row(
                        str(index), block["name"][:12], f"{block['bytes'] / 1024:.0f}", str(len(block["agents"]))
                    )
                yield table
                yield Static(self._details(0), id="block-details", markup=False)
            yield Label("time to first token per turn (s), cold vs resumed")
            yield Sparkline([ttft for _, ttft in self.ttfts] or [0.0], id="ttft")
            yield Static(
                "  ".join(f"{source} {ttft:.2f}" for source, ttft in self.ttfts[-8:]) or "(no turns in this run yet)",
                id="ttft-values",
            )
        yield Footer()

    def _details(self, index: int) -> str:
        if not self.chain:
            return "No stored blocks yet: a block is stored once a turn fills it."
        block = self.chain[index]
        return "\n".join(
            [
                f"block {index}: {block['name']}",
                f"tokens {index * self.block_tokens}–{(index + 1) * self.block_tokens - 1}",
                f"{block['bytes']:,} bytes" + ("" if block["stored"] else " (being written)"),
                f"ref count {len(block['agents'])}: {', '.join(block['agents'])}",
                f"last used {clock(block['last_used'])}",
            ]
        )

    @on(DataTable.RowHighlighted, "#blocks")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.query_one("#block-details", Static).update(self._details(event.cursor_row))
