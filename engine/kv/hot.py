"""The hot tier: recent agents' KV caches in device memory, under a byte budget and an agent limit.

    most recent idle agent : its live, contiguous mlx-lm cache, as its last turn left it (no copy;
                             SEMANTIC_KV_HOT_LIVE_AGENTS, default 1, 0 compacts every idle agent)
    older idle agents      : compacted into shared blocks + a private tail
    running agents         : checked out: eviction never sees them

    blocks (by chained name, reference counted)        agent A: [b0][b1][b2] + tail A
    ┌────┬────┬────┬────┐                               agent B: [b0][b1][b3] + tail B
    │ b0 │ b1 │ b2 │ b3 │                               agent C: live cache (most recent)
    └────┴────┴────┴────┘

Agents with a common prefix (a shared system prompt) hold its blocks once. Full-attention layers are
compacted; sliding-window layers are small (one window) and stay as they are, as do an agent's window
checkpoints (engine/kv/checkpoints.py), which a checked-out agent carries into its next entry. Evicting
drops memory only: every finished turn is already on its way to the warm tier.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.kv.checkpoints import KEPT, WindowCheckpoint, best_checkpoint, fresh_windows
from engine.kv.layout import CacheLayout, arrays_of, join_tokens, take_tokens, token_count, token_range
from engine.kv.recent_ids import RecentIds

# Evicted sessions remembered, to tell a turn that found nothing of its own that it was evicted
EVICTED_REMEMBERED = 1024


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
    checkpoints: list[WindowCheckpoint] = field(default_factory=list)  # oldest first, all on `tokens`

    @property
    def compact(self) -> bool:
        return self.cache is None

    @property
    def held_bytes(self) -> int:
        """Bytes the entry holds alone, its checkpoints included."""
        return self.nbytes + sum(checkpoint.nbytes for checkpoint in self.checkpoints)


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
        kept: Callable[[str], bool] = lambda session_id: False,
        agent_max_bytes: int | None = None,
    ):
        self.budget_bytes = budget_bytes
        self.max_agents = max_agents
        self.layout = layout
        self.block_tokens = block_tokens
        self.namer = namer
        self.live_agents = live_agents  # most recent idle agents kept as live caches
        self.kept = kept  # agents evicted last (pinned, or kept for a while: engine/kv/policy.py)
        self.agent_max_bytes = agent_max_bytes  # one agent's most (None: no limit); past it, it is not kept
        self._entries: OrderedDict[str, HotEntry] = OrderedDict()  # least recently used first
        self._blocks: dict[str, _Block] = {}
        self._checked_out: set[str] = set()
        # Checked-out sessions' checkpoints, carried into the entry their turn puts back
        self._carried: dict[str, list[WindowCheckpoint]] = {}
        self.evictions = 0
        self._evicted = RecentIds(EVICTED_REMEMBERED)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._entries

    @property
    def used_bytes(self) -> int:
        held = sum(entry.held_bytes for entry in self._entries.values())
        return held + sum(block.nbytes for block in self._blocks.values())

    @property
    def shared_bytes_saved(self) -> int:
        """Bytes the pool would hold more if every agent kept its own copy of shared blocks."""
        return sum(block.nbytes * (block.users - 1) for block in self._blocks.values() if block.users > 1)

    # -- checkout / put ----------------------------------------------------------------------------
    def checkout(self, session_id: str) -> HotEntry | None:
        """Take a session's entry out (live form); the session is checked out until `put` or `check_in`."""
        self._checked_out.add(session_id)
        entry = self._entries.pop(session_id, None)
        self._carried[session_id] = list(entry.checkpoints) if entry is not None else []
        if entry is not None and entry.compact:
            entry.cache = self._materialize(entry, len(entry.tokens))
            self._release_blocks(entry.chain)
            entry.chain, entry.tail, entry.kept = [], {}, {}
            entry.nbytes = sum(c.nbytes for c in entry.cache)
        return entry

    def check_in(self, session_id: str) -> None:
        """The checked-out session's turn kept nothing (its cache is lost or not storable)."""
        self._checked_out.discard(session_id)
        self._carried.pop(session_id, None)

    def add_checkpoint(self, session_id: str, checkpoint: WindowCheckpoint) -> None:
        """A checked-out session's running turn has read its prompt: its windows at that point."""
        self._carried.setdefault(session_id, []).append(checkpoint)

    def latest_checkpoint(self, session_id: str, tokens: list[int]) -> WindowCheckpoint | None:
        """The latest window checkpoint a checked-out session carries that stands before the end of `tokens`,
        on them."""
        on_tokens = (c for c in self._carried.get(session_id, []) if c.position < len(tokens) and c.lies_on(tokens))
        return max(on_tokens, key=lambda checkpoint: checkpoint.position, default=None)

    def put(self, entry: HotEntry) -> list[str]:
        """Insert as most recent and check the session in; compact older idle agents; evict over the limits."""
        self._checked_out.discard(entry.session_id)
        carried = self._carried.pop(entry.session_id, [])
        entry.checkpoints = [c for c in [*entry.checkpoints, *carried] if c.lies_on(entry.tokens)][-KEPT:]
        entry.last_used = time.time()
        self.drop(entry.session_id)
        self._entries[entry.session_id] = entry
        idle = list(self._entries.values())
        for older in idle[: max(0, len(idle) - self.live_agents)]:
            if not older.compact:
                self._compact(older)
        if self._over_quota(entry) and not entry.compact:
            self._compact(entry)
        if self._over_quota(entry):  # it would push out others: it resumes from the warm tier instead
            self._evict_one(entry.session_id)
            return [entry.session_id, *self._evict()]
        return self._evict()

    def _over_quota(self, entry: HotEntry) -> bool:
        """The entry holds more than one agent may (its shared blocks counted whole)."""
        if self.agent_max_bytes is None:
            return False
        held = entry.held_bytes + sum(self._blocks[name].nbytes for name in entry.chain if name in self._blocks)
        return held > self.agent_max_bytes

    def drop(self, session_id: str) -> bool:
        self._evicted.discard(session_id)
        entry = self._entries.pop(session_id, None)
        if entry is None:
            return False
        self._release_blocks(entry.chain)
        return True

    def rename(self, session_id: str, new_session_id: str) -> bool:
        """The idle session's entry under `new_session_id`, in its place in the LRU order (what the new id
        held is dropped); whether it had one."""
        entry = self._entries.get(session_id)
        if entry is None or new_session_id == session_id:
            return False
        self.drop(new_session_id)
        entry.session_id = new_session_id
        self._entries = OrderedDict(
            (new_session_id if key == session_id else key, held) for key, held in self._entries.items()
        )
        return True

    def entries(self) -> list[HotEntry]:
        return list(self._entries.values())

    def last_used(self, session_id: str) -> float | None:
        entry = self._entries.get(session_id)
        return entry.last_used if entry is not None else None

    def was_evicted(self, session_id: str) -> bool:
        """Its entry was evicted (one of the last EVICTED_REMEMBERED) and has not come back since."""
        return session_id in self._evicted

    def resume_point(self, entry: HotEntry, matched: int) -> int:
        """The most of an entry's first `matched` tokens a cache can be built for: all of them unless a
        wrapped window would have to be cut, then its latest window checkpoint within them (0: none)."""
        if matched == len(entry.tokens) or not self._wrapped(entry):
            return matched
        checkpoint = best_checkpoint(entry.checkpoints, matched)
        return checkpoint.position if checkpoint is not None else 0

    def prefix_cache(self, entry: HotEntry, point: int) -> list:
        """New caches holding the first `point` tokens of an idle entry (a resume_point); the entry is
        unchanged."""
        return self._materialize(entry, point, self._windows_at(entry, point))

    def cut(self, entry: HotEntry, point: int) -> list:
        """A checked-out entry's own caches cut back to its first `point` tokens (a resume_point)."""
        windows = self._windows_at(entry, point)
        for layer, cache in enumerate(entry.cache):
            if layer in windows:
                entry.cache[layer] = windows[layer]
            else:
                cache.trim(len(entry.tokens) - point)
        return entry.cache

    def _windows_at(self, entry: HotEntry, point: int) -> dict:
        """Sliding layers' caches at `point` from a window checkpoint, where a wrapped window cannot be cut
        there ({}: the entry's own windows serve)."""
        if point == len(entry.tokens) or not self._wrapped(entry):
            return {}
        return fresh_windows(next(c for c in entry.checkpoints if c.position == point))

    def _wrapped(self, entry: HotEntry) -> bool:
        """A sliding window of the entry has wrapped: it cannot be cut back to an earlier token."""
        from mlx_lm.models.cache import RotatingKVCache

        sources = entry.cache if not entry.compact else list(entry.kept.values())
        return any(isinstance(c, RotatingKVCache) and c.offset >= c.max_size for c in sources)

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

    def _materialize(self, entry: HotEntry, matched: int, windows: dict | None = None) -> list:
        """Contiguous mlx-lm caches for the first `matched` tokens of an entry (live or compact); the
        sliding layers' caches from `windows` where given."""
        from mlx_lm.models.cache import KVCache, QuantizedKVCache, RotatingKVCache

        caches = []
        for layer, kind in enumerate(self.layout.layers if self.layout else []):
            if windows and layer in windows:
                caches.append(windows[layer])
                continue
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
        """Evict over the limits: the least recently used agent that is not kept first."""
        evicted = []
        while self._entries and (len(self._entries) > self.max_agents or self.used_bytes > self.budget_bytes):
            session_id = next((sid for sid in self._entries if not self.kept(sid)), next(iter(self._entries)))
            self._evict_one(session_id)
            evicted.append(session_id)
        return evicted

    def _evict_one(self, session_id: str) -> None:
        self.drop(session_id)
        self.evictions += 1
        self._evicted.add([session_id])

    def check_integrity(self) -> None:
        """Raise AssertionError if an invariant is broken (tests call this after every operation)."""
        if self.used_bytes > self.budget_bytes:
            raise AssertionError(f"hot bytes {self.used_bytes} over budget {self.budget_bytes}")
        if len(self._entries) > self.max_agents:
            raise AssertionError(f"{len(self._entries)} resident agents over the limit {self.max_agents}")
        for session_id in self._checked_out:
            if session_id in self._entries:
                raise AssertionError(f"checked-out session {session_id!r} is also idle in the pool")
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
            if len(entry.checkpoints) > KEPT or not all(c.lies_on(entry.tokens) for c in entry.checkpoints):
                raise AssertionError(f"{entry.session_id!r}: a window checkpoint is not on its tokens, or too many")
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
