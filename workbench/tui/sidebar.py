"""The sidebar's entries: agents grouped by origin (workbench, then each kind of API client) under a
heading, forks under the agent they were forked from, each with its tier, size and turns."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Label, ListItem

from workbench.tui.agent_tree import tree_lines
from workbench.tui.origins import grouped, matches, origin

TIER_BADGE = {"hot": "[green]hot [/]", "warm": "[cyan]warm[/]", "cold": "[dim]cold[/]"}
NAME_CHARS = 28  # what fits the sidebar's width beside the tree's connectors


def filtered(rows: list[dict], text: str) -> list[dict]:
    text = text.strip().lower()
    return [row for row in rows if matches(row, text)] if text else rows


def sidebar_items(rows: list[dict]) -> list[ListItem]:
    """A disabled heading per origin group (the cursor skips it), then the group's agents as a tree; each
    agent's item is named by its id."""
    items = []
    for group, members in grouped(rows):
        items.append(ListItem(Label(f"[b]{group}[/b] [dim]{len(members)}[/dim]"), classes="group", disabled=True))
        for line in tree_lines(members):
            row = line.row
            stats = f"{TIER_BADGE[row['tier']]} {row['tokens']} tok · {counted(row['turns'], 'turn')}"
            # On the name's line: the stats line has no room left
            pin = " [yellow]▣ pinned[/]" if row.get("pinned") else ""
            name = shortened(origin(row).name, NAME_CHARS - len(line.head) - (9 if pin else 0))
            # The name is text, not markup: an API client may name an agent "[b" or "[/]"
            label = Content.from_markup(f"$head$name{pin}\n$tail{stats}", head=line.head, name=name, tail=line.tail)
            items.append(ListItem(Label(label), name=row["id"]))
    return items


def shortened(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(chars - 1, 1)] + "…"


def counted(number: int, noun: str) -> str:
    """ "1 turn", "3 turns"."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
