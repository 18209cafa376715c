"""F1: every binding of the app, generated from the bindings themselves."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

EXTRA = [
    ("Enter", "Send the message"),
    ("Ctrl+P", "Command palette: every action, themes (light and dark)"),
    ("Up / Down", "Move in the agent list"),
]


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,f1,q", "app.pop_screen", "Close")]

    def __init__(self, bindings: list[Binding]):
        super().__init__()
        self.bindings = bindings

    def compose(self) -> ComposeResult:
        rows = [(" / ".join(map(_key_name, b.key.split(","))), b.description) for b in self.bindings if b.description]
        table = "\n".join(f"| `{key}` | {text} |" for key, text in [*rows, *EXTRA])
        with VerticalScroll(id="dialog"):
            yield Markdown(f"# agent-memory workbench\n\n| key | action |\n|---|---|\n{table}\n\nEscape closes this.")


def _key_name(key: str) -> str:
    if key.startswith("ctrl+"):
        return "Ctrl+" + key.removeprefix("ctrl+").upper()
    return key.upper() if len(key) <= 3 else key.capitalize()
