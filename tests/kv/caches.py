"""Caches for the hot pool's tests, without a model.

FakeCache is a live cache reduced to what the pool's bookkeeping reads (offset, nbytes, trim). For the
paths that copy keys and values (compaction into shared blocks and back), `token_caches` builds real
mlx-lm KVCaches, tiny, whose every key and value is a function of (layer, position, token): caches of
equal prefixes hold equal blocks, and any cache can be checked against the tokens it claims to hold.
"""

from __future__ import annotations

from engine.kv.blocks import block_names, root_name
from engine.kv.hot import HotEntry, HotPool
from engine.kv.layout import CacheLayout, LayerKind

BLOCK_TOKENS = 4
NUM_LAYERS = 2
HEADS, DIM = 1, 4
# float16 keys and values of every layer
BYTES_PER_TOKEN = NUM_LAYERS * 2 * HEADS * DIM * 2
LAYOUT = CacheLayout((LayerKind(None),) * NUM_LAYERS)
ROOT = root_name("fake-model", LAYOUT.describe(), BLOCK_TOKENS)


class FakeCache:
    """A live layer cache as the pool's bookkeeping sees it."""

    def __init__(self, offset: int, bytes_per_token: int = BYTES_PER_TOKEN // NUM_LAYERS):
        self.offset = offset
        self.bytes_per_token = bytes_per_token

    @property
    def nbytes(self) -> int:
        return self.offset * self.bytes_per_token

    def trim(self, count: int) -> int:
        count = min(self.offset, count)
        self.offset -= count
        return count


def fake_entry(session_id: str, tokens: list[int], tenant: str = "") -> HotEntry:
    caches = [FakeCache(len(tokens)) for _ in range(NUM_LAYERS)]
    return HotEntry(session_id, list(tokens), caches, sum(c.nbytes for c in caches), tenant=tenant)


def expected_keys(tokens: list[int], layer: int):
    """(1, HEADS, len(tokens), DIM) float16: position t holds [token, t, layer, 1]."""
    import mlx.core as mx

    rows = [[token, position, layer, 1] for position, token in enumerate(tokens)]
    return mx.array(rows, dtype=mx.float16).reshape(1, HEADS, len(tokens), DIM)


def token_caches(tokens: list[int]) -> list:
    """Real KVCaches holding `tokens` (values are the keys negated)."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    caches = []
    for layer in range(NUM_LAYERS):
        keys = expected_keys(tokens, layer)
        cache = KVCache()
        cache.state = (keys, -keys, len(tokens))
        caches.append(cache)
    mx.eval([array for cache in caches for array in (cache.keys, cache.values)])
    return caches


def token_entry(session_id: str, tokens: list[int]) -> HotEntry:
    caches = token_caches(tokens)
    return HotEntry(session_id, list(tokens), caches, sum(c.nbytes for c in caches))


def holds_tokens(caches: list, tokens: list[int]) -> bool:
    """The caches hold exactly the keys and values of `tokens`, in every layer."""
    import mlx.core as mx

    for layer, cache in enumerate(caches):
        if int(cache.offset) != len(tokens):
            return False
        keys, values = cache.keys[..., : len(tokens), :], cache.values[..., : len(tokens), :]
        wanted = expected_keys(tokens, layer)
        if keys.shape != wanted.shape or not (mx.array_equal(keys, wanted) and mx.array_equal(values, -wanted)):
            return False
    return True


def compacting_pool(budget_bytes: int, max_agents: int, live_agents: int = 1, kept=None) -> HotPool:
    """A pool that compacts idle agents into shared blocks, as the engine's does."""
    return HotPool(
        budget_bytes,
        max_agents,
        layout=LAYOUT,
        block_tokens=BLOCK_TOKENS,
        namer=lambda entry: block_names(entry.tokens, ROOT, BLOCK_TOKENS),
        live_agents=live_agents,
        kept=kept or (lambda session_id: False),
    )
