"""What a model's KV cache looks like, layer by layer, and how to move it between MLX and numpy.

Full-attention layers (mlx-lm's KVCache) hold every token, so they can be cut at any position and are
stored as shareable blocks. Sliding-window layers (RotatingKVCache) hold only the last `window`
tokens; they are stored as a window snapshot at the end of a session's sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerKind:
    sliding_window: int | None  # None: full attention
    keep: int = 0


@dataclass(frozen=True)
class CacheLayout:
    layers: tuple[LayerKind, ...]

    @classmethod
    def of(cls, model) -> CacheLayout:
        from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

        kinds = []
        for cache in make_prompt_cache(model):
            if isinstance(cache, RotatingKVCache):
                kinds.append(LayerKind(cache.max_size, cache.keep))
            elif type(cache) is KVCache:
                kinds.append(LayerKind(None))
            else:
                raise UnsupportedCache(type(cache).__name__)
        return cls(tuple(kinds))

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
        return ",".join(parts)

    def resumable_everywhere(self) -> bool:
        return not self.sliding_layers


class UnsupportedCache(Exception):
    """The model uses a cache kind the KV memory cannot store; it runs without reuse."""


def cache_offset(cache_list) -> int:
    return int(cache_list[0].offset) if cache_list else 0


def full_layer_slice(cache, start: int, end: int):
    """Keys and values of tokens [start, end) of a full-attention layer, shape (heads, tokens, dim)."""
    return cache.keys[0, :, start:end, :], cache.values[0, :, start:end, :]


def sliding_window_snapshot(cache):
    """The last min(offset, window) tokens of a rotating layer, oldest first."""
    size = min(int(cache.offset), cache.max_size)
    keys = cache._temporal_order(cache.keys)[0, :, -size:, :]
    values = cache._temporal_order(cache.values)[0, :, -size:, :]
    return keys, values


DISK_DTYPES = ("float16", "float32", "int8")
INT8_GROUP = 64


def encode_for_disk(keys, values, disk_dtype: str) -> dict[str, np.ndarray]:
    """(heads, tokens, dim) MLX keys/values as named numpy parts: `k`/`v`, or 8-bit `kq ks kb vq vs vb`."""
    import mlx.core as mx

    if disk_dtype == "int8" and keys.shape[-1] % INT8_GROUP == 0:
        parts = {}
        for name, array in (("k", keys), ("v", values)):
            packed, scales, biases = mx.quantize(array, group_size=INT8_GROUP, bits=8)
            parts.update(
                {f"{name}q": packed, f"{name}s": scales.astype(mx.float16), f"{name}b": biases.astype(mx.float16)}
            )
    else:
        dtype = mx.float32 if disk_dtype == "float32" else mx.float16
        parts = {"k": keys.astype(dtype), "v": values.astype(dtype)}
    mx.eval(list(parts.values()))
    return {name: np.array(array) for name, array in parts.items()}


def decode_from_disk(parts: dict, dtype):
    """Named parts (MLX arrays) back to (keys, values) in the compute dtype."""
    import mlx.core as mx

    if "k" in parts:
        return parts["k"].astype(dtype), parts["v"].astype(dtype)
    return tuple(
        mx.dequantize(parts[f"{name}q"], parts[f"{name}s"], parts[f"{name}b"], group_size=INT8_GROUP, bits=8).astype(
            dtype
        )
        for name in ("k", "v")
    )


def build_cache(layout: CacheLayout, full: dict[int, tuple], sliding: dict[int, tuple], offset: int, dtype):
    """mlx-lm cache objects at `offset` tokens from numpy (or mlx) keys/values per layer."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache, RotatingKVCache

    caches = []
    for index, kind in enumerate(layout.layers):
        source = full if kind.sliding_window is None else sliding
        keys, values = source[index]
        keys = (keys if isinstance(keys, mx.array) else mx.array(keys))[None].astype(dtype)
        values = (values if isinstance(values, mx.array) else mx.array(values))[None].astype(dtype)
        if kind.sliding_window is None:
            cache = KVCache()
            cache.state = (keys, values, offset)
        else:
            cache = RotatingKVCache(max_size=kind.sliding_window, keep=kind.keep)
            cache.state = (keys, values, offset, kind.keep, kind.sliding_window, keys.shape[2])
        caches.append(cache)
    mx.eval([c.keys for c in caches] + [c.values for c in caches])
    return caches
