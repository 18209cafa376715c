"""The one wrapper around MLX's fused attention, `mx.fast.scaled_dot_product_attention`, which mlx-lm's
models call in every layer: a decode step's RowPadding mask (decode_rows.py) runs it row by row, and
`observed` records the masks and keys that reach it, so that each path can check, on a model, that the
model hands the cache's mask and keys to MLX unchanged (a numeric comparison cannot: in bfloat16 a
fused and an unfused attention differ by more than any tolerance that still tells a wrong mask apart)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from engine.mlx_lm_ext import decode_rows

_mlx_sdpa = None  # MLX's own function, once install() has wrapped it
_observers: list[list] = []


def scaled_dot_product_attention(queries, keys, values, *, scale, mask=None, **kwargs):
    for calls in _observers:
        calls.append((mask, keys.shape))
    if isinstance(mask, decode_rows.RowPadding):
        return decode_rows.by_rows(_mlx_sdpa, queries, keys, values, scale, mask, **kwargs)
    return _mlx_sdpa(queries, keys, values, scale=scale, mask=mask, **kwargs)


def install() -> None:
    """Wrap MLX's fused attention (models call it through `mx.fast`) once per process."""
    import mlx.core as mx

    global _mlx_sdpa
    if _mlx_sdpa is None:
        _mlx_sdpa = mx.fast.scaled_dot_product_attention
        mx.fast.scaled_dot_product_attention = scaled_dot_product_attention


def hands_over(model, left_padding: list[int], prompt: list[list[int]], step: list[list[int]], accept) -> bool:
    """Whether every layer of `model` hands MLX's attention what `accept(mask, keys shape)` approves, in
    the forward pass of `step` after `prompt` on batch caches with `left_padding`; False for models with
    caches other than plain KV ones, and for one that fails."""
    import mlx.core as mx
    from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

    layers = make_prompt_cache(model)
    if not all(type(cache) is KVCache for cache in layers):
        return False
    try:
        caches = [BatchKVCache(left_padding) for _ in layers]
        model(mx.array(prompt), cache=caches)
        with observed() as calls:
            mx.eval(model(mx.array(step), cache=caches))
    except Exception:  # noqa: BLE001 - a model built otherwise: the path stays off
        return False
    return len(calls) == len(layers) and all(accept(mask, keys) for mask, keys in calls)


@contextlib.contextmanager
def observed() -> Iterator[list]:
    """The (mask, keys shape) of every attention call inside the block, in order."""
    calls: list = []
    _observers.append(calls)
    try:
        yield calls
    finally:
        _observers.remove(calls)
