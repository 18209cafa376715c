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


@contextlib.contextmanager
def observed() -> Iterator[list]:
    """The (mask, keys shape) of every attention call inside the block, in order."""
    calls: list = []
    _observers.append(calls)
    try:
        yield calls
    finally:
        _observers.remove(calls)
