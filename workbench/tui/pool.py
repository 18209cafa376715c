"""What the TUI shows of the KV memory's tiers as a whole: from the engine in this process, or from a
server's /metrics."""

from __future__ import annotations

from dataclasses import dataclass

from engine.kv.stats import HotTotals, KVOverview, WarmStats


@dataclass(frozen=True, slots=True)
class Pool:
    hot: HotTotals
    warm: WarmStats

    @classmethod
    def of(cls, overview: KVOverview) -> Pool:
        """The pool of an engine's KV overview (in this process)."""
        return cls(overview.hot.totals, overview.warm)
