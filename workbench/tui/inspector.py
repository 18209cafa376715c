"""The memory inspector: the KV pool as a whole, the selected agent's blocks, and its time to first token."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, ProgressBar, Sparkline, Static


def megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"


def block_strip(row: dict | None, block_tokens: int) -> str:
    """One cell per block of the agent's chain: shared, warm (on disk) or hot (in memory only)."""
    if not row:
        return "(no agent selected)"
    blocks = row.get("blocks", {})
    total = max(-(-row.get("tokens", 0) // block_tokens), blocks.get("warm", 0), blocks.get("hot", 0))
    if total == 0:
        return "(no KV blocks yet)"
    shared, warm = blocks.get("shared", 0), blocks.get("warm", 0)
    cells = []
    for index in range(total):
        if index < shared:
            cells.append("[magenta]■[/]")
        elif index < warm:
            cells.append("[blue]■[/]")
        else:
            cells.append("[green]■[/]" if row.get("tier") == "hot" else "[dim]□[/]")
    legend = "[magenta]■[/] shared  [blue]■[/] warm (disk)  [green]■[/] hot only  [dim]□[/] not stored"
    return " ".join(cells) + f"\n{legend}"


class InspectorScreen(Screen):
    BINDINGS = [Binding("escape,m", "app.pop_screen", "Back")]

    def __init__(self, overview: dict, row: dict | None, ttfts: list[tuple[str, float]], block_tokens: int):
        super().__init__()
        self.overview, self.row, self.ttfts, self.block_tokens = overview, row, ttfts, block_tokens

    def compose(self) -> ComposeResult:
        yield Header()
        hot, warm = self.overview.get("hot") or {}, self.overview.get("warm") or {}
        with Vertical(id="pool"):
            yield Label("[b]KV pool[/b]")
            yield Label(f"hot: {megabytes(hot.get('used_bytes', 0))} of {megabytes(hot.get('budget_bytes', 0))}")
            bar = ProgressBar(total=max(hot.get("budget_bytes", 1), 1), show_eta=False, id="hot-bar")
            bar.progress = hot.get("used_bytes", 0)
            yield bar
            yield Static(
                f"resident agents: {hot.get('agents', 0)} / {hot.get('max_agents', 0)}    "
                f"evictions: {hot.get('evictions', 0)}    "
                f"shared blocks save: {megabytes(hot.get('shared_bytes_saved', 0))} (hot)\n"
                f"warm on disk: {megabytes(warm.get('bytes', 0))} in {warm.get('blocks', 0)} blocks "
                f"({warm.get('dtype', '-')})",
                id="pool-stats",
            )
        with Vertical(id="agent-blocks"):
            name = self.row["id"] if self.row else "-"
            yield Label(f"[b]Agent {name}[/b]  ({self.block_tokens} tokens per block)")
            yield Static(block_strip(self.row, self.block_tokens), id="strip")
            yield Label("time to first token per turn (s)")
            yield Sparkline([ttft for _, ttft in self.ttfts] or [0.0], id="ttft")
            yield Static(
                "  ".join(f"{source}:{ttft:.2f}" for source, ttft in self.ttfts[-8:]) or "(no turns yet)",
                id="ttft-values",
            )
        yield Footer()
