"""Forks as a tree: the sidebar lists each fork under the agent it was forked from, and the inspector
counts the blocks an agent shares with its parent and its forks. Pure functions over agent rows."""

from __future__ import annotations

from dataclasses import dataclass

from engine.kv.stats import StoredBlock


@dataclass
class TreeLine:
    """One agent of the sidebar: its row, and what goes before its id and before its stats line."""

    row: dict
    head: str
    tail: str


def tree_lines(rows: list[dict]) -> list[TreeLine]:
    """The rows with every fork under its parent, siblings in the order given (most recently used first).

    An agent whose parent is not among `rows` (deleted, or filtered out) is a root. Of agents whose parents
    name each other (a parent deleted, then its id reused by a fork of its fork), the first is a root.
    """
    ids = {row["id"] for row in rows}
    forks: dict[str, list[dict]] = {}
    for row in rows:
        parent = row.get("forked_from")
        if parent in ids and parent != row["id"]:
            forks.setdefault(parent, []).append(row)
    lines: list[TreeLine] = []
    placed: set[str] = set()

    def place(row: dict, lead: str, connector: str, below: str) -> None:
        # `below`: what the parent's column shows beside this agent's lines (a line while siblings follow)
        placed.add(row["id"])
        own = [fork for fork in forks.get(row["id"], []) if fork["id"] not in placed]
        # The stats line carries the line down to the first fork, if any
        lines.append(TreeLine(row, lead + connector, lead + below + ("│ " if own else "  ")))
        for index, fork in enumerate(own):
            last = index == len(own) - 1
            place(fork, lead + below, "└ " if last else "├ ", "  " if last else "│ ")

    for row in rows:
        parent = row.get("forked_from")
        if row["id"] not in placed and (parent not in ids or parent == row["id"]):
            place(row, "", "", "")
    for row in rows:  # what only a loop reaches
        if row["id"] not in placed:
            place(row, "", "", "")
    return lines


def forks_of(rows: list[dict], agent_id: str) -> list[str]:
    """The ids of the agents forked from `agent_id`, in the order of `rows`."""
    return [row["id"] for row in rows if row.get("forked_from") == agent_id]


def shared_blocks(chain: list[StoredBlock], agent_id: str) -> int:
    """How many blocks of a chain `agent_id` also holds."""
    return sum(1 for block in chain if agent_id in block.agents)


def lineage_lines(row: dict | None, rows: list[dict]) -> str:
    """The inspector's fork lines for an agent: whose fork it is, its forks (from `rows`), and how many
    blocks of its stored chain (`row["chain"]`) each of them shares."""
    if not row:
        return ""
    chain = row.get("chain") or []
    stored = f"{len(chain)} stored block{'' if len(chain) == 1 else 's'}"
    parent = row.get("forked_from")
    if parent is None:
        first = "not a fork"
    else:
        gone = "" if any(r["id"] == parent for r in rows) else " (deleted)"
        shares = f": shares {shared_blocks(chain, parent)} of its {stored} with it" if chain else ""
        first = f"fork of {parent}{gone}{shares}"
    forks = forks_of(rows, row["id"])
    if not forks:
        return f"{first}\nno forks"
    if not chain:
        return f"{first}\nforks: {', '.join(forks)}"
    each = ", ".join(f"{fork} shares {shared_blocks(chain, fork)}" for fork in forks)
    with_any = sum(1 for block in chain if any(fork in block.agents for fork in forks))
    return f"{first}\nforks: {each} ({with_any} of its {stored} shared with a fork)"
