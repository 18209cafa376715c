"""What a model's KV cache looks like, layer by layer, and how to cut, join and rebuild it.

Full-attention layers (mlx-lm's KVCache) hold every token, so they can be cut at any position and are
stored as shareable blocks. Sliding-window layers (RotatingKVCache) hold only the last `window`
tokens; they are stored as a window snapshot at the end of a session's sequence.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerKind:
    sliding_window: int | None  # None: full attention
    keep: int = 0


@dataclass(frozen=True)
class CacheLayout:
    layers: tuple[LayerKind, ...]
    # Full-attention layers as mlx-lm's QuantizedKVCache (SEMANTIC_KV_BITS): keys and values are then
    # (packed, scales, biases) triples, every one with tokens on the same axis.
    kv_bits: int | None = None
    kv_group_size: int = 64

    @classmethod
    def of(cls, model, kv_bits: int | None = None, kv_group_size: int = 64) -> CacheLayout:
        from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

        kinds = []
        for cache in make_prompt_cache(model):
            if isinstance(cache, RotatingKVCache):
                kinds.append(LayerKind(cache.max_size, cache.keep))
            elif type(cache) is KVCache:
                kinds.append(LayerKind(None))
            else:
                raise UnsupportedCache(type(cache).__name__)
        if kv_bits and any(kind.sliding_window is not None for kind in kinds):
            raise UnsupportedCache("RotatingKVCache with SEMANTIC_KV_BITS (mlx-lm cannot quantize it)")
        return cls(tuple(kinds), kv_bits, kv_group_size)

    @property
    def full_layers(self) -> list[int]:
        return [i for i, kind in enumerate(self.layers) if kind.sliding_window is None]

    @property
    def sliding_layers(self) -> list[int]:
        return [i for i, kind in enumerate(self.layers) if kind.sliding_window is not None]

    @property
    def min_window(self) -> int | None:
        windows = [kind.sliding_window for kind in self.layers if kind.sliding_window is not None]
        return min(windows) if windows else None

    def describe(self) -> str:
        """A stable text used in block names, so blocks of another layout never match."""
        parts = ["full" if k.sliding_window is None else f"window{k.sliding_window}/keep{k.keep}" for k in self.layers]
        quantized = f"|kv{self.kv_bits}g{self.kv_group_size}" if self.kv_bits else ""
        return ",".join(parts) + quantized

    def resumable_everywhere(self) -> bool:
        return not self.sliding_layers


class UnsupportedCache(Exception):
    """The model uses a cache kind the KV memory cannot store; it runs without reuse."""


def kv_dtype(model):
    """The dtype of the keys and values `model` computes: that of its floating-point parameters (a
    quantized model's packed weights are integers; its scales, norms and activations are floats)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    for _, value in tree_flatten(model.parameters()):
        if mx.issubdtype(value.dtype, mx.floating):
            return value.dtype
    return mx.float32


def cache_offset(cache_list) -> int:
    return int(cache_list[0].offset) if cache_list else 0


def take_tokens(x, start: int, end: int, axis: int):
    """Tokens [start, end) along `axis` of an array or of a quantized (packed, scales, biases) triple."""
    if isinstance(x, tuple | list):
        return tuple(take_tokens(part, start, end, axis) for part in x)
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, end)
    return x[tuple(index)]


def join_tokens(parts: list, axis: int):
    """Concatenate arrays (or quantized triples, part by part) along the token axis."""
    import mlx.core as mx

    if isinstance(parts[0], tuple | list):
        return tuple(join_tokens([p[i] for p in parts], axis) for i in range(len(parts[0])))
    return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=axis)


def arrays_of(x) -> list:
    return [a for part in x for a in arrays_of(part)] if isinstance(x, tuple | list) else [x]


def token_count(x, axis: int) -> int:
    return int(arrays_of(x)[0].shape[axis])


def token_range(cache, start: int, end: int) -> tuple:
    """Keys and values of tokens [start, end) of a full-attention layer, shape (1, heads, tokens, dim)."""
    return take_tokens(cache.keys, start, end, axis=2), take_tokens(cache.values, start, end, axis=2)


def full_layer_slice(cache, start: int, end: int):
    """Keys and values of tokens [start, end) of a full-attention layer, shape (heads, tokens, dim)."""
    keys, values = token_range(cache, start, end)
    return _drop_batch(keys), _drop_batch(values)


def _drop_batch(x):
    return tuple(_drop_batch(p) for p in x) if isinstance(x, tuple | list) else x[0]


def sliding_window_snapshot(cache):
    """The last min(offset, window) tokens of a rotating layer, oldest first."""
    size = min(int(cache.offset), cache.max_size)
    keys = cache._temporal_order(cache.keys)[0, :, -size:, :]
    values = cache._temporal_order(cache.values)[0, :, -size:, :]
    return keys, values


def rotating_cache(window: int, keep: int, keys, values, offset: int):
    """A RotatingKVCache that has read `offset` tokens, from (1, heads, n, dim) keys and values: its last
    n tokens, oldest first."""
    from mlx_lm.models.cache import RotatingKVCache

    cache = RotatingKVCache(max_size=window, keep=keep)
    cache.state = (keys, values, offset, keep, window, keys.shape[2])
    return cache


def build_cache(layout: CacheLayout, full: dict[int, tuple], sliding: dict[int, tuple], offset: int, dtype):
    """mlx-lm cache objects at `offset` tokens from (heads, tokens, dim) keys/values per layer."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    def batched(x):
        if isinstance(x, tuple | list):
            return tuple(batched(part) for part in x)
        array = (x if isinstance(x, mx.array) else mx.array(x))[None]
        return array if array.dtype in (mx.uint32, dtype) else array.astype(dtype)

    caches = []
    for index, kind in enumerate(layout.layers):
        source = full if kind.sliding_window is None else sliding
        keys, values = (batched(x) for x in source[index])
        if kind.sliding_window is not None:
            cache = rotating_cache(kind.sliding_window, kind.keep, keys, values, offset)
        elif layout.kv_bits:
            cache = QuantizedKVCache(group_size=layout.kv_group_size, bits=layout.kv_bits)
            cache.state = (keys, values, offset, layout.kv_group_size, layout.kv_bits)
        else:
            cache = KVCache()
            cache.state = (keys, values, offset)
        caches.append(cache)
    mx.eval([array for c in caches for array in arrays_of((c.keys, c.values))])
    return caches
