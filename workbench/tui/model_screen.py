"""The Model screen: what is serving (id, fingerprint, backend, size, context, KV cost) and a swap list."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, ListItem, ListView, Static


def summary_text(summary: dict) -> str:
    parameters = summary.get("parameters") or 0
    return "\n".join(
        [
            f"model        {summary.get('model_id', '-')}",
            f"fingerprint  {summary.get('fingerprint', '-')}",
            f"backend      {str(summary.get('backend', '-')).upper()} ({summary.get('dtype', '-')})",
            f"parameters   {parameters / 1e6:.0f} M",
            f"context      {summary.get('context_length', '-')} tokens",
            f"KV per token {summary.get('kv_bytes_per_token', 0) / 1024:.1f} KiB",
        ]
    )


class ModelScreen(Screen):
    BINDINGS = [Binding("escape,f4", "app.pop_screen", "Back")]

    def __init__(self, summary: dict, choices: list[str]):
        super().__init__()
        self.summary, self.choices = summary, choices

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="model-info"):
            yield Label("[b]Serving[/b]")
            yield Static(summary_text(self.summary), id="model-summary", markup=False)
            yield Label("[b]Swap to[/b] (Enter; caches are kept per model, so swapping back finds them)")
            yield ListView(
                *[ListItem(Label(choice, markup=False), name=choice) for choice in self.choices], id="choices"
            )
            yield Static("", id="swap-status")
        yield Footer()

    @on(ListView.Selected, "#choices")
    def chosen(self, event: ListView.Selected) -> None:
        if event.item.name:
            self.query_one("#swap-status", Static).update(Content(f"Swapping to {event.item.name}…"))
            self.app.swap_model(event.item.name)

    def show_progress(self, text: str) -> None:
        """Show `text`, plain: it may quote a model id or an error."""
        self.query_one("#swap-status", Static).update(Content(text))

    def show_summary(self, summary: dict) -> None:
        self.summary = summary
        self.query_one("#model-summary", Static).update(summary_text(summary))
        self.query_one("#swap-status", Static).update(Content(f"Now serving {summary['model_id']}."))
