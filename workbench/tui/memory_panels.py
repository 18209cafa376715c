"""The memory overview's panels as markup, pure functions of the pool, the agent rows (each with its
stored chain) and this run's turns, each fitted to a width in cells. The panels that name agents are
Content, the names inserted as text: an API client may name an agent "[/]"."""

from __future__ import annotations

from textual.content import Content

from engine.kv.stats import StoredBlock
from workbench.tui.agent_tree import shared_blocks
from workbench.tui.charts import columns, gauge, hbar, seconds
from workbench.tui.origins import origin
from workbench.tui.pool import Pool
from workbench.tui.turn_log import TurnRecord, cold_and_resumed, evictions_per_turn

SOURCE_CELL = {"cold": "[red]c [/]", "hot": "[green]h [/]", "warm": "[cyan]w [/]"}
DECISION_CELL = {"restore": "[green]R [/]", "partial": "[yellow]P [/]", "recompute": "[dim]- [/]"}
LABEL_CHARS = 9  # the left margin where each chart row says what it is
TURN_CELLS = 3  # a turn's column and the gap after it
BAR_CHARS = 48  # the longest time-to-first-token bar: longer reads no better


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f}"


def short(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(chars - 1, 1)] + "…"


def budgets(pool: Pool, width: int) -> str:
    """Memory and disk against their budgets, then agents resident and evictions."""
    hot, warm = pool.hot, pool.warm
    bar = max(10, min(30, width - 40))
    used, budget = hot.used_bytes, hot.budget_bytes
    disk, disk_budget = warm.bytes, warm.budget_bytes
    disk_of = f"of {mib(disk_budget)} MiB" if disk_budget else "MiB, no budget"
    dtype = f", {warm.dtype}" if warm.dtype else ""
    return "\n".join(
        [
            f"{'memory':<{LABEL_CHARS}}{gauge(used, budget, bar)} {mib(used)} of {mib(budget)} MiB",
            f"{'disk':<{LABEL_CHARS}}{gauge(disk, disk_budget, bar)} {mib(disk)} {disk_of}",
            f"{'':<{LABEL_CHARS}}{hot.agents} of {hot.max_agents} agents in memory · "
            f"{hot.evictions} evictions · {warm.blocks} blocks on disk{dtype}",
        ]
    )


def sharing(pool: Pool, rows: list[dict]) -> str:
    """What shared prefixes save: each stored block is kept once, however many agents' chains name it."""
    blocks: dict[str, StoredBlock] = {}
    for row in rows:
        for block in row.get("chain") or []:
            blocks[block.name] = block
    shared = [block for block in blocks.values() if len(block.agents) > 1]
    saved_disk = sum(block.bytes * (len(block.agents) - 1) for block in shared)
    saved_memory = pool.hot.shared_bytes_saved
    if not shared and not saved_memory:
        return f"{'shared':<{LABEL_CHARS}}[dim]nothing yet: forks, and agents that start alike, share blocks[/dim]"
    names = sum(len(block.agents) for block in shared)
    return (
        f"{'shared':<{LABEL_CHARS}}{len(shared)} block{'' if len(shared) == 1 else 's'} in {names} chains save "
        f"{mib(saved_disk)} MiB on disk, {mib(saved_memory)} MiB in memory"
    )


def ttft_chart(turns: list[TurnRecord], rows: list[dict], width: int) -> Content:
    """Each agent's mean time to first token this run, cold and resumed, as bars on one scale."""
    per_agent = cold_and_resumed(turns)
    if not per_agent:
        return Content.from_markup("[dim](no turns in this run yet: the chart fills as agents answer)[/dim]")
    names = {row["id"]: origin(row).name for row in rows}
    scale = max(value for pair in per_agent.values() for value in pair if value is not None)
    name_chars = max(8, min(16, width // 5))
    bar = max(8, min(BAR_CHARS, width - name_chars - 27))
    lines, agent_names = [], {}
    for number, (agent_id, (cold, resumed)) in enumerate(per_agent.items()):
        agent_names[f"name{number}"] = f"{short(names.get(agent_id, agent_id), name_chars):<{name_chars}}"
        for index, (label, value, colour) in enumerate((("cold", cold, "red"), ("resumed", resumed, "green"))):
            head = f"$name{number} " if index == 0 else " " * (name_chars + 1)
            if value is None:
                lines.append(f"{head}{label:<8}[dim]none yet[/dim]")
                continue
            faster = f" · {cold / resumed:.1f}× faster" if label == "resumed" and cold and resumed else ""
            lines.append(f"{head}{label:<8}[{colour}]{hbar(value, scale, bar)}[/] {seconds(value)}{faster}")
    return Content.from_markup("\n".join(lines), **agent_names)


def timeline(turns: list[TurnRecord], evictions_before: int, width: int) -> str:
    """The last turns that fit, oldest first, a column each: time to first token, where the turn's cache
    came from, what the engine chose, and how many agents the hot tier evicted meanwhile."""
    if not turns:
        return "[dim](no turns in this run yet)[/dim]"
    fit = max(1, (width - LABEL_CHARS) // TURN_CELLS)
    evicted = evictions_per_turn(turns, evictions_before)[-fit:]
    shown = turns[-fit:]

    def row(label: str, cells: list[str]) -> str:
        return f"{label:<{LABEL_CHARS}}" + "".join(cell + " " for cell in cells)

    chart = columns([turn.ttft_s for turn in shown], 3)
    lines = [row("ttft" if index == 0 else "", [c * 2 for c in line]) for index, line in enumerate(chart)]
    lines.append(row("cache", [SOURCE_CELL.get(turn.source, "? ") for turn in shown]))
    lines.append(row("chose", [DECISION_CELL.get(turn.decision, "? ") for turn in shown]))
    lines.append(row("evicted", [f"{min(n, 99):<2}" if n else "[dim]· [/dim]" for n in evicted]))
    sources = " ".join(f"{cell}{source}" for source, cell in SOURCE_CELL.items())
    decisions = " ".join(f"{cell}{decision}" for decision, cell in DECISION_CELL.items())
    lines.append(f"[dim]{'':<{LABEL_CHARS}}{sources} · {decisions}[/dim]")
    return "\n".join(lines)


def fork_shares(rows: list[dict]) -> Content:
    """One line per fork whose parent is listed: how many of its stored blocks it shares with the parent."""
    by_id = {row["id"]: row for row in rows}
    lines = []
    for row in rows:
        parent = row.get("forked_from")
        if parent in by_id:
            chain = row.get("chain") or []
            lines.append(
                f"{origin(row).name} shares {shared_blocks(chain, parent)} of its {len(chain)} stored blocks "
                f"with {origin(by_id[parent]).name}"
            )
    if not lines:
        return Content.from_markup("[dim]No forks yet: F5 forks the selected agent, sharing its KV cache.[/dim]")
    return Content("\n".join(lines))
