"""The hot tier: live mlx-lm caches of recent agents in device memory, under a byte budget.

An agent's cache is kept as the contiguous mlx-lm cache its last turn left (no copy per turn). While a
request runs, its entry is checked out of the pool (pinned): eviction only ever sees idle entries.
Evicting drops memory only; the warm tier already has, or is writing, every finished turn.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class HotEntry:
    session_id: str
    tokens: list[int]  # exactly the tokens whose KV the cache holds
    cache: list
    nbytes: int
    last_used: float = field(default_factory=time.time)


class HotPool:
    def __init__(self, budget_bytes: int, max_agents: int):
        self.budget_bytes = budget_bytes
        self.max_agents = max_agents
        self._entries: OrderedDict[str, HotEntry] = OrderedDict()  # least recently used first
        self._pinned: set[str] = set()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._entries

    @property
    def used_bytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def checkout(self, session_id: str) -> HotEntry | None:
        """Take a session's entry out of the pool and pin the session until `put` or `release_pin`."""
        self._pinned.add(session_id)
        return self._entries.pop(session_id, None)

    def release_pin(self, session_id: str) -> None:
        self._pinned.discard(session_id)

    def put(self, entry: HotEntry) -> list[str]:
        """Insert as most recent, unpin, then evict idle entries over the limits; returns evicted ids."""
        self._pinned.discard(entry.session_id)
        entry.last_used = time.time()
        self._entries.pop(entry.session_id, None)
        self._entries[entry.session_id] = entry
        return self._evict()

    def drop(self, session_id: str) -> bool:
        return self._entries.pop(session_id, None) is not None

    def entries(self) -> list[HotEntry]:
        return list(self._entries.values())

    def _evict(self) -> list[str]:
        evicted = []
        while self._entries and (len(self._entries) > self.max_agents or self.used_bytes > self.budget_bytes):
            session_id, _ = self._entries.popitem(last=False)
            evicted.append(session_id)
            self.evictions += 1
        return evicted

    def check_integrity(self) -> None:
        """Raise AssertionError if an invariant is broken (tests call this after every operation)."""
        if self.used_bytes > self.budget_bytes:
            raise AssertionError(f"hot bytes {self.used_bytes} over budget {self.budget_bytes}")
        if len(self._entries) > self.max_agents:
            raise AssertionError(f"{len(self._entries)} resident agents over the limit {self.max_agents}")
        for session_id in self._pinned:
            if session_id in self._entries:
                raise AssertionError(f"pinned session {session_id!r} is also idle in the pool")
        for entry in self._entries.values():
            offset = int(entry.cache[0].offset) if entry.cache else 0
            if offset != len(entry.tokens):
                raise AssertionError(
                    f"{entry.session_id!r}: cache holds {offset} tokens, record says {len(entry.tokens)}"
                )
