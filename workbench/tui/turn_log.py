"""The turns of this run, in order: where each one's cache came from, what the engine chose to do with it,
its time to first token, and the hot tier's eviction count after it. The memory screens chart them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TurnRecord:
    agent_id: str
    source: str  # "cold" | "hot" | "warm": where the turn's KV cache came from
    decision: str  # "restore" | "partial" | "recompute" (engine/kv/cost.py)
    ttft_s: float
    evictions_total: int  # the hot tier's evictions so far, read after the turn


def for_agent(turns: list[TurnRecord], agent_id: str | None) -> list[TurnRecord]:
    return [turn for turn in turns if turn.agent_id == agent_id]


def evictions_per_turn(turns: list[TurnRecord], evictions_before: int) -> list[int]:
    """How many agents the hot tier evicted during each turn. A count that went down (a model swap starts
    a new pool) counts from zero again."""
    counts, previous = [], evictions_before
    for turn in turns:
        counts.append(turn.evictions_total - previous if turn.evictions_total >= previous else turn.evictions_total)
        previous = turn.evictions_total
    return counts


def cold_and_resumed(turns: list[TurnRecord]) -> dict[str, tuple[float | None, float | None]]:
    """Per agent, in order of first turn: its mean time to first token cold, and resumed (hot or warm)."""
    found: dict[str, tuple[list[float], list[float]]] = {}
    for turn in turns:
        cold, resumed = found.setdefault(turn.agent_id, ([], []))
        (cold if turn.source == "cold" else resumed).append(turn.ttft_s)
    return {agent: (mean(cold), mean(resumed)) for agent, (cold, resumed) in found.items()}


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
