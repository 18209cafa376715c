"""The hot tier: recent agents' KV caches in device memory, under a byte budget and an agent limit.

    most recent idle agent : its live, contiguous mlx-lm cache, as its last turn left it (no copy;
                             SEMANTIC_KV_HOT_LIVE_AGENTS, default 1, 0 compacts every idle agent)
    older idle agents      : compacted into shared blocks + a private tail
    running agents         : checked out (pinned): eviction never sees them

    blocks (by chained name, reference counted)        agent A: [b0][b1][b2] + tail A
    ┌────┬────┬────┬────┐                               agent B: [b0][b1][b3] + tail B
    │ b0 │ b1 │ b2 │ b3 │                               agent C: live cache (most recent)
    └────┴────┴────┴────┘

Agents with a common prefix (a shared system prompt) hold its blocks once. Full-attention layers are
compacted; sliding-window layers are small (one window) and stay as they are. Evicting drops memory
only: every finished turn is already on its way to the warm tier.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.kv.layout import CacheLayout, arrays_of, join_tokens, take_tokens, token_count, token_range


@dataclass
class HotEntry:
    session_id: str
    tokens: list[int]  # exactly the tokens whose KV the entry holds
    cache: list | None  # live mlx-lm caches, or None when compacted
    nbytes: int  # bytes this entry holds alone (shared blocks are counted by the pool)
    last_used: float = field(default_factory=time.time)
    chain: list[str] = field(default_factory=list)  # compacted: shared blocks of full layers
    tail: dict = field(default_factory=dict)  # compacted: layer -> (keys, values) after the blocks
    kept: dict = field(default_factory=dict)  # compacted: layer -> cache object kept as is
    tenant: str = ""  # whose it is: another tenant's requests never read it

    @property
    def compact(self) -> bool:
        return self.cache is None


@dataclass
class _Block:
    layers: dict  # layer -> (keys, values), shape (1, heads, block_tokens, dim)
    nbytes: int
    users: int = 0


class HotPool:
    def __init__(
        self,
        budget_bytes: int,
        max_agents: int,
        layout: CacheLayout | None = None,
        block_tokens: int = 256,
        namer: Callable[[HotEntry], list[str]] | None = None,
        live_agents: int = 1,
    ):
        self.budget_bytes = budget_bytes
        self.max_agents = max_agents
        self.layout = layout
        self.block_tokens = block_tokens
        self.namer = namer
        self.live_agents = live_agents  # most recent idle agents kept as live caches
        self._entries: OrderedDict[str, HotEntry] = OrderedDict()  # least recently used first
        self._blocks: dict[str, _Block] = {}
        self._pinned: set[str] = set()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._entries

    @property
    def used_bytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values()) + sum(b.nbytes for b in self._blocks.values())

    @property
    def shared_bytes_saved(self) -> int:
        """Bytes the pool would hold more if every agent kept its own copy of shared blocks."""
        return sum(block.nbytes * (block.users - 1) for block in self._blocks.values() if block.users > 1)

    # -- checkout / put ----------------------------------------------------------------------------
    def checkout(self, session_id: str) -> HotEntry | None:
        """Take a session's entry out (live form) and pin the session until `put` or `release_pin`."""
        self._pinned.add(session_id)
        entry = self._entries.pop(session_id, None)
        if entry is not None and entry.compact:
            entry.cache = self._materialize(entry, len(entry.tokens))
            self._release_blocks(entry.chain)
            entry.chain, entry.tail, entry.kept = [], {}, {}
            entry.nbytes = sum(c.nbytes for c in entry.cache)
        return entry

    def release_pin(self, session_id: str) -> None:
        self._pinned.discard(session_id)

    def put(self, entry: HotEntry) -> list[str]:
        """Insert as most recent and unpin; compact older idle agents; evict over the limits."""
        self._pinned.discard(entry.session_id)
        entry.last_used = time.time()
        self.drop(entry.session_id)
        self._entries[entry.session_id] = entry
        idle = list(self._entries.values())
        for older in idle[: max(0, len(idle) - self.live_agents)]:
            if not older.compact:
                self._compact(older)
        return self._evict()

    def drop(self, session_id: str) -> bool:
        entry = self._entries.pop(session_id, None)
        if entry is None:
            return False
        self._release_blocks(entry.chain)
        return True

    def entries(self) -> list[HotEntry]:
        return list(self._entries.values())

    def prefix_cache(self, entry: HotEntry, matched: int) -> list | None:
        """New caches holding the first `matched` tokens of an idle entry; the entry is unchanged."""
        from mlx_lm.models.cache import RotatingKVCache

        sources = entry.cache if not entry.compact else list(entry.kept.values())
        if any(isinstance(c, RotatingKVCache) and c.offset >= c.max_size for c in sources):
            return None  # a wrapped window cannot be cut
        return self._materialize(entry, matched)

    # -- compaction ----------------------------------------------------------------------------------
    def _compact(self, entry: HotEntry) -> None:
        import mlx.core as mx

        if self.layout is None or self.namer is None:
            return
        names = self.namer(entry)
        full_layers = self.layout.full_layers
        new_arrays = []
        for index, name in enumerate(names):
            block = self._blocks.get(name)
            if block is None:
                start, end = index * self.block_tokens, (index + 1) * self.block_tokens
                layers = {layer: _copy(token_range(entry.cache[layer], start, end)) for layer in full_layers}
                arrays = arrays_of(list(layers.values()))
                new_arrays.extend(arrays)
                block = self._blocks[name] = _Block(layers, sum(a.nbytes for a in arrays))
            block.users += 1
        covered = len(names) * self.block_tokens
        offset = len(entry.tokens)
        tail = {layer: _copy(token_range(entry.cache[layer], covered, offset)) for layer in full_layers}
        tail_arrays = arrays_of(list(tail.values()))
        mx.eval(new_arrays + tail_arrays)
        entry.kept = {layer: entry.cache[layer] for layer in self.layout.sliding_layers}
        entry.chain, entry.tail, entry.cache = names, tail, None
        entry.nbytes = sum(a.nbytes for a in tail_arrays) + sum(c.nbytes for c in entry.kept.values())

    def _materialize(self, entry: HotEntry, matched: int) -> list:
        """Contiguous mlx-lm caches for the first `matched` tokens of an entry (live or compact)."""
        from mlx_lm.models.cache import KVCache, QuantizedKVCache, RotatingKVCache

        caches = []
        for layer, kind in enumerate(self.layout.layers if self.layout else []):
            if entry.compact:
                if kind.sliding_window is not None:
                    source = entry.kept[layer]
                    keys, values = source.keys, source.values
                else:
                    parts = [self._blocks[name].layers[layer] for name in entry.chain]
                    parts.append(entry.tail[layer])
                    keys = join_tokens([p[0] for p in parts], axis=2)
                    values = join_tokens([p[1] for p in parts], axis=2)
            else:
                keys, values = entry.cache[layer].keys, entry.cache[layer].values
            if kind.sliding_window is None and self.layout.kv_bits:
                cache = QuantizedKVCache(group_size=self.layout.kv_group_size, bits=self.layout.kv_bits)
                cache.state = (
                    take_tokens(keys, 0, matched, axis=2),
                    take_tokens(values, 0, matched, axis=2),
                    matched,
                    self.layout.kv_group_size,
                    self.layout.kv_bits,
                )
            elif kind.sliding_window is None:
                cache = KVCache()
                cache.state = (keys[..., :matched, :], values[..., :matched, :], matched)
            elif entry.compact and matched == len(entry.tokens):
                cache = _clone_rotating(entry.kept[layer])
            else:  # not wrapped (checked by the caller): positions are token indexes
                cache = RotatingKVCache(max_size=kind.sliding_window, keep=kind.keep)
                cache.state = (
                    keys[..., :matched, :],
                    values[..., :matched, :],
                    matched,
                    kind.keep,
                    kind.sliding_window,
                    matched,
                )
            caches.append(cache)
        return caches

    def _release_blocks(self, names: list[str]) -> None:
        for name in names:
            block = self._blocks.get(name)
            if block is None:
                continue
            block.users -= 1
            if block.users <= 0:
                del self._blocks[name]

    def _evict(self) -> list[str]:
        evicted = []
        while self._entries and (len(self._entries) > self.max_agents or self.used_bytes > self.budget_bytes):
            session_id = next(iter(self._entries))
            self.drop(session_id)
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
        users: dict[str, int] = {}
        for entry in self._entries.values():
            for name in entry.chain:
                users[name] = users.get(name, 0) + 1
            held = len(entry.chain) * self.block_tokens + (
                token_count(next(iter(entry.tail.values()))[0], axis=2) if entry.tail else 0
            )
            offset = int(entry.cache[0].offset) if not entry.compact else held
            if entry.compact and not entry.tail:
                offset = len(entry.tokens)  # a model with sliding layers only keeps its caches as is
            if offset != len(entry.tokens):
                raise AssertionError(f"{entry.session_id!r}: holds {offset} tokens, record says {len(entry.tokens)}")
        for name, block in self._blocks.items():
            if users.get(name, 0) != block.users:
                raise AssertionError(f"block {name}: ref count {block.users}, used by {users.get(name, 0)} agents")


def _copy(x):
    """A copy that owns its memory (a slice would keep the whole source buffer alive)."""
    import mlx.core as mx

    return tuple(_copy(part) for part in x) if isinstance(x, tuple | list) else mx.contiguous(x)


def _clone_rotating(cache):
    """A rotating cache with its own array objects: writing to it must not change the original."""
    import mlx.core as mx
    from mlx_lm.models.cache import RotatingKVCache

    clone = RotatingKVCache(max_size=cache.max_size, keep=cache.keep)
    keys, values, offset, keep, max_size, index = cache.state
    clone.state = (mx.array(keys), mx.array(values), offset, keep, max_size, index)
    return clone
