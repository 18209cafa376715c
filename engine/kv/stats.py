"""The KV memory's figures as frozen records, read by attribute: a mistyped name fails at once instead of
reading as 0 in /metrics, the TUI or the CLI.

    KVOverview                      Engine.kv_overview(): never waits for the engine thread
    ├── hot: HotView                as the engine thread last published it (KVMemory.hot_view)
    │   ├── totals: HotTotals
    │   ├── hits: TierHits
    │   └── sessions: {session id: HotSession}
    ├── warm: WarmStats             WarmTier.stats()
    ├── warm_sessions: {session id: SessionSummary}
    ├── policies: {session id: AgentPolicy}
    └── shared: SharedTierStats | None
    MemoryStats                     Engine.memory_stats(): hot totals, warm (after the queued writes), hits
    StoredBlock                     one block of an agent's stored chain (Engine.agent_blocks)
    BlockCounts                     an agent's blocks per tier (engine/agents_view.py)

The flat records cross process boundaries: `to_json()` gives the keys, order and values the HTTP API and
`--json` print, and `from_json()` turns them back into records where a client reads them (the TUI's
--connect source). Nothing here imports MLX: api/ and workbench/ import this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

from engine.kv.policy import AgentPolicy


class _Json:
    """to_json/from_json for a record whose fields are plain values."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """The record from its JSON; keys it does not know are ignored, keys it lacks take the default."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True, slots=True)
class HotTotals(_Json):
    """The hot tier (engine/kv/hot.py) as a whole."""

    budget_bytes: int = 0
    used_bytes: int = 0
    agents: int = 0  # resident now
    max_agents: int = 0
    evictions: int = 0  # since the process started
    shared_bytes_saved: int = 0  # what agents sharing prefix blocks would take more as copies


@dataclass(frozen=True, slots=True)
class TierHits(_Json):
    """Turns by where their cached prefix came from (cold: none) since the memory opened."""

    hot: int = 0
    warm: int = 0
    shared: int = 0
    cold: int = 0


@dataclass(frozen=True, slots=True)
class HotSession(_Json):
    """One agent's cache in the hot tier."""

    tokens: int
    bytes: int
    live: bool  # its live cache is resident (not only compacted blocks)
    blocks: int
    last_used: float  # Unix time


@dataclass(frozen=True, slots=True)
class HotView:
    """The hot tier as the engine thread saw it; other threads read the copy the engine publishes."""

    totals: HotTotals = HotTotals()
    hits: TierHits = TierHits()
    sessions: Mapping[str, HotSession] = field(default_factory=dict)  # agents only, no anonymous slots


@dataclass(frozen=True, slots=True)
class WarmStats(_Json):
    """The warm tier on disk (engine/kv/warm.py). A tier that is off says why and has no other figures."""

    enabled: bool = False
    reason: str | None = None  # why it is off
    read_only: bool = False  # another process owns the cache dir
    path: str = ""
    blocks: int = 0
    sessions: int = 0
    files: int = 0
    bytes: int = 0
    budget_bytes: int = 0  # 0: none
    dtype: str | None = None  # the disk encoding, where the caller knows it (the tier does not)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.enabled:
            del data["reason"]
        else:
            data = {"enabled": False, "reason": self.reason, "dtype": self.dtype}
        if self.dtype is None:
            del data["dtype"]
        return data


@dataclass(frozen=True, slots=True)
class SessionSummary(_Json):
    """One session's stored cache under its most recently used model (WarmTier.session_summaries)."""

    fingerprint: str
    tokens: int
    blocks: int
    shared_blocks: int  # of its blocks, those other sessions' chains name too
    bytes: int  # its snapshot and its chain's blocks
    last_used: float  # Unix time


@dataclass(frozen=True, slots=True)
class StoredBlock(_Json):
    """One block of a session's stored chain, in chain order (WarmTier.session_blocks)."""

    name: str
    bytes: int
    last_used: float  # Unix time; 0.0 while it is being written
    stored: bool  # False: named by the chain, its file not written yet
    agents: tuple[str, ...]  # every session of the model whose chain names it, sorted

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "agents": list(self.agents)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoredBlock:
        return cls(data["name"], data["bytes"], data["last_used"], data["stored"], tuple(data["agents"]))


@dataclass(frozen=True, slots=True)
class BlockCounts(_Json):
    """An agent's KV blocks under the current model."""

    hot: int  # compacted blocks in memory
    hot_live: bool  # its live cache is resident
    warm: int  # on disk
    shared: int  # of those on disk, blocks other agents' chains name too


@dataclass(frozen=True, slots=True)
class SharedTierStats(_Json):
    """The shared tier on Redis (engine/kv/shared.py), for /health and /metrics."""

    url: str  # without its password
    up: bool
    down_since: float | None  # Unix time
    last_error: str | None
    failures: int
    blocks_pushed: int
    sessions_pushed: int
    behind: int  # sessions written while it was down, pushed again once it is back


@dataclass(frozen=True, slots=True)
class MemoryStats:
    """The KV memory's figures once the writes queued before are on disk. A process without KV memory
    has enabled=False and zeros."""

    enabled: bool = False
    hot: HotTotals = HotTotals()
    warm: WarmStats = WarmStats()
    hits: TierHits = TierHits()
    block_tokens: int = 0
    resume: str = ""  # how this model's caches resume (KVMemory.resume_mode)


@dataclass(frozen=True, slots=True)
class KVOverview:
    """The KV memory as other threads may read it at any time. Without KV memory (or with a cache kind
    that cannot be stored) enabled=False and every tier empty."""

    enabled: bool = False
    fingerprint: str = ""  # the serving model's
    policies: Mapping[str, AgentPolicy] = field(default_factory=dict)  # agents whose policy is not the default
    hot: HotView = HotView()
    warm: WarmStats = WarmStats()
    # Each stored session under its most recently used model (compare `fingerprint`); empty when the
    # caller asked for totals only
    warm_sessions: Mapping[str, SessionSummary] = field(default_factory=dict)
    shared: SharedTierStats | None = None  # None: no shared tier configured
