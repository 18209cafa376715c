"""Restore or recompute: what a resume from the warm tier costs each way, from speeds measured on this
machine, so a warm resume is never slower than reading the prompt again.

    recompute      prefill every prompt token
    restore        read the cached tokens' blocks, prefill the rest
    partial        read the first blocks, prefill from there

Prefill speed depends on the context a token is read in (attention grows with it): it is kept per
context-length bucket (powers of two), learned from every turn's prefill. Restore speed is kept per
tier in seconds per token (the blocks' bytes per token are fixed for a model and encoding), learned
from every restore. Until both are measured, the engine restores (what it did before it measured).
The speeds are kept beside the warm tier (`speeds.json`, by model fingerprint and backend), so a
restarted server decides its first resumes on what the last one measured.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from engine.atomic import atomic_write_text

log = logging.getLogger(__name__)

SMOOTHING = 0.3  # weight of the newest measurement in a running average
MIN_PREFILL_TOKENS = 256  # shorter prefills are mostly a forward pass's fixed cost: not a speed per token


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

    # -- kept on disk ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path, key: str) -> CostModel:
        """The speeds stored under `key` in `path` (none if it is missing or unreadable)."""
        model = cls()
        try:
            stored = json.loads(path.read_text()).get(key) or {}
            model._prefill_s_per_token = {int(k): float(v) for k, v in stored.get("prefill_s_per_token", {}).items()}
            model._restore_s_per_token = {str(k): float(v) for k, v in stored.get("restore_s_per_token", {}).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            model = cls()
        return model

    def save(self, path: Path, key: str) -> None:
        """Store the speeds under `key` in `path`, beside other keys' (other models, backends)."""
        try:
            try:
                stored = json.loads(path.read_text())
                stored = stored if isinstance(stored, dict) else {}
            except (OSError, ValueError):
                stored = {}
            stored[key] = {
                "prefill_s_per_token": {str(k): v for k, v in sorted(self._prefill_s_per_token.items())},
                "restore_s_per_token": dict(self._restore_s_per_token),
            }
            atomic_write_text(path, json.dumps(stored, indent=1))
        except OSError as exc:  # a read-only or full disk: the speeds are measured again next time
            log.warning("could not keep the measured speeds in %s: %s", path, exc)

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

    def estimates(self, tier: str, cached_tokens: int, prompt_tokens: int) -> tuple[float, float] | None:
        """(restore all, recompute all) estimated seconds; None while a speed is unmeasured."""
        per_token = self._restore_s_per_token.get(tier)
        recompute = self.prefill_s(0, prompt_tokens)
        if per_token is None or recompute is None:
            return None
        return cached_tokens * per_token + self.prefill_s(cached_tokens, prompt_tokens), recompute

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
