"""Restore or recompute: what a resume from the warm tier costs each way, from speeds this process
measured, so a warm resume is never slower than reading the prompt again.

    recompute      prefill every prompt token
    restore        read the cached tokens' blocks, prefill the rest
    partial        read the first blocks, prefill from there

Prefill speed depends on the context a token is read in (attention grows with it): it is kept per
context-length bucket (powers of two), learned from every turn's prefill. Restore speed is kept per
tier in seconds per token (the blocks' bytes per token are fixed for a model and encoding), learned
from every restore. Until both are measured, the engine restores (what it did before it measured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SMOOTHING = 0.3  # weight of the newest measurement in a running average
MIN_PREFILL_TOKENS = 32  # shorter prefills are mostly fixed costs: not a speed to learn from


@dataclass(frozen=True)
class Plan:
    decision: str  # "restore", "recompute" or "partial"
    restore_tokens: int  # cached tokens to read (0 for recompute)
    estimate_s: float  # the plan's estimated time to first token, restore and prefill


class CostModel:
    def __init__(self):
        self._prefill_s_per_token: dict[int, float] = {}  # by context bucket
        self._restore_s_per_token: dict[str, float] = {}  # by tier

    # -- measurements ----------------------------------------------------------------------------
    def observe_prefill(self, new_tokens: int, context_tokens: int, seconds: float) -> None:
        """`new_tokens` were prefilled in `seconds`, ending at `context_tokens` of context."""
        if new_tokens >= MIN_PREFILL_TOKENS and seconds > 0:
            _average(self._prefill_s_per_token, _bucket(context_tokens), seconds / new_tokens)

    def observe_restore(self, tier: str, tokens: int, seconds: float) -> None:
        if tokens > 0 and seconds > 0:
            _average(self._restore_s_per_token, tier, seconds / tokens)

    # -- estimates -------------------------------------------------------------------------------
    def prefill_s(self, start: int, end: int) -> float | None:
        """Seconds to prefill tokens start..end after `start` cached ones; None before any measurement."""
        if not self._prefill_s_per_token or end <= start:
            return 0.0 if end <= start else None
        total, low = 0.0, start
        while low < end:  # piece by piece, each at the speed of the bucket it ends in
            high = min(end, 1 << max(_bucket(low + 1), 0))
            total += (high - low) * self._rate(_bucket(high))
            low = high
        return total

    def plan(self, tier: str, cached_tokens: int, prompt_tokens: int, block_tokens: int) -> Plan | None:
        """The cheapest way to a prompt of `prompt_tokens` of which `cached_tokens` sit in `tier`; None
        while a speed it needs is unmeasured (then restore)."""
        per_token = self._restore_s_per_token.get(tier)
        recompute = self.prefill_s(0, prompt_tokens)
        if per_token is None or recompute is None:
            return None
        options = [Plan("recompute", 0, recompute)]
        # Block edges in between, then the whole cached prefix.
        edges = list(range(block_tokens, cached_tokens, block_tokens)) + [cached_tokens]
        for tokens in edges:
            estimate = tokens * per_token + self.prefill_s(tokens, prompt_tokens)
            options.append(Plan("restore" if tokens == cached_tokens else "partial", tokens, estimate))
        return min(options, key=lambda option: option.estimate_s)

    def _rate(self, bucket: int) -> float:
        """Seconds per token in `bucket`, else in the nearest measured one."""
        nearest = min(self._prefill_s_per_token, key=lambda known: (abs(known - bucket), -known))
        return self._prefill_s_per_token[nearest]


def _bucket(context_tokens: int) -> int:
    """log2 of the power of two at or above `context_tokens` (a context of 3,000 tokens: 12)."""
    return max(math.ceil(math.log2(max(context_tokens, 1))), 0)


def _average(table: dict, key, value: float) -> None:
    old = table.get(key)
    table[key] = value if old is None else (1 - SMOOTHING) * old + SMOOTHING * value
