"""KV blocks as cells: one agent's chain (the inspector) and every agent's chain on a common scale (the
memory overview), each block drawn by where it lives."""

from __future__ import annotations

CELL = {
    "shared": "[magenta]■[/]",
    "warm": "[cyan]■[/]",
    "hot": "[green]■[/]",
    "pending": "[yellow]■[/]",
    "none": "[dim]□[/]",
}
PINNED_CELL = {kind: cell.replace("■", "▣") for kind, cell in CELL.items()}
LEGEND = (
    f"{CELL['shared']} shared  {CELL['warm']} on disk  {CELL['hot']} in memory only  "
    f"{CELL['pending']} being written  {CELL['none']} not stored"
)
# Of the blocks one cell stands for, the kind it shows: the rarest, most telling one
PRIORITY = ("pending", "shared", "hot", "warm", "none")


def block_kinds(row: dict | None, block_tokens: int) -> list[str]:
    """One kind per block of the agent's tokens: from its stored chain, then what only memory holds."""
    if not row:
        return []
    chain = row.get("chain") or []
    kinds = [("shared" if len(block.agents) > 1 else "warm") if block.stored else "pending" for block in chain]
    total = -(-row.get("tokens", 0) // block_tokens)
    rest = "hot" if row.get("tier") == "hot" else "none"
    return kinds + [rest] * max(0, total - len(kinds))


def block_strip(row: dict | None, block_tokens: int) -> str:
    if not row:
        return "(no agent selected)"
    kinds = block_kinds(row, block_tokens)
    return (" ".join(CELL[kind] for kind in kinds) if kinds else "(no KV blocks yet)") + f"\n{LEGEND}"


def blocks_per_cell(longest: int, cells: int) -> int:
    """The common scale: how many blocks one cell stands for so that the longest chain fits `cells`."""
    return max(1, -(-longest // max(cells, 1)))


def scaled_cells(kinds: list[str], per_cell: int, pinned: bool = False) -> str:
    """An agent's blocks at `per_cell` blocks a cell; a pinned agent's cells drawn ▣."""
    glyphs = PINNED_CELL if pinned else CELL
    cells = []
    for start in range(0, len(kinds), per_cell):
        group = kinds[start : start + per_cell]
        cells.append(glyphs[min(group, key=PRIORITY.index)])
    return "".join(cells)
