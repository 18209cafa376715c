"""Prefill attention on MLX's CUDA backend without a cuDNN graph per shape.

MLX's CUDA backend runs attention over more than one query through cuDNN, which builds a graph for
every new combination of query and key shapes (and mask) before its first use and keeps it in a
cache. A long prompt's full prefill steps repeat their shapes, so their graphs are built once; but a
resumed agent's new turn, the last step of a prompt, and a batch of prompts with left padding each
bring a shape nobody had before, and the build costs far more than the attention it computes
(docs/benchmarks.md). For those, this module computes attention from MLX's matmuls and softmax, whose
kernels do not depend on the sequence lengths. Full prefill steps and decoding keep the fused kernels.

`install(model)` points the model's modules at `dispatch`, which does this only on threads that
called `enable_on_this_thread()` (the engine thread) and leaves everything else to mlx-lm.
"""

from __future__ import annotations

import threading

import mlx.core as mx

from engine.mlx_lm_ext.attention import MLX_LM_ATTENTION, route_attention

_mlx_attention = MLX_LM_ATTENTION
_thread_state = threading.local()


def enable_on_this_thread(full_step: int | None) -> None:
    """Compute attention here for fewer queries than `full_step` (a full prefill step); None: never."""
    _thread_state.full_step = full_step


def install(model) -> None:
    """Route the attention of every module `model` is built from through `dispatch`."""
    route_attention(model, dispatch)


def dispatch(queries, keys, values, cache, scale: float, mask, sinks=None):
    """mlx-lm's `scaled_dot_product_attention`, by matmuls where a fused kernel would need a new graph."""
    full_step = getattr(_thread_state, "full_step", None)
    if full_step is not None and 1 < queries.shape[2] < full_step and sinks is None and not hasattr(cache, "bits"):
        return attention(queries, keys, values, scale, mask)
    return _mlx_attention(queries, keys, values, cache, scale=scale, mask=mask, sinks=sinks)


def attention(queries, keys, values, scale: float, mask) -> mx.array:
    """softmax(q kᵀ · scale + mask) v for q (B, Hq, L, D), k and v (B, Hkv, S, D), Hq a multiple of Hkv.

    `mask` is None, "causal" (query i sits at position S - L + i) or an array broadcastable to
    (B, Hq, L, S): boolean (True = attend) or additive. The softmax runs in float32; a row with
    every key masked (left padding in a batch) gets uniform weights, as in MLX's own kernels.
    """
    batch, num_heads, num_queries, head_dim = queries.shape
    num_kv_heads, num_keys = keys.shape[1], keys.shape[2]
    group = num_heads // num_kv_heads
    # The heads that share a key head are one matmul: (B, Hkv, group * L, D) @ (B, Hkv, D, S)
    q = (queries * scale).reshape(batch, num_kv_heads, group * num_queries, head_dim)
    scores = (q @ keys.swapaxes(-1, -2)).reshape(batch, num_kv_heads, group, num_queries, num_keys)
    scores = scores.astype(mx.float32)
    lowest = mx.finfo(mx.float32).min
    if isinstance(mask, str):
        visible = mx.arange(num_keys - num_queries, num_keys)[:, None] >= mx.arange(num_keys)[None, :]
        scores = mx.where(visible, scores, lowest)
    elif isinstance(mask, mx.array):
        mask = _by_kv_head(mask, num_kv_heads, group)
        scores = mx.where(mask, scores, lowest) if mask.dtype == mx.bool_ else scores + mask.astype(mx.float32)
    weights = mx.softmax(scores, axis=-1).astype(values.dtype)
    out = weights.reshape(batch, num_kv_heads, group * num_queries, num_keys) @ values
    return out.reshape(batch, num_heads, num_queries, -1)


def _by_kv_head(mask: mx.array, num_kv_heads: int, group: int) -> mx.array:
    """A mask broadcastable to (B, Hq, L, S) as one broadcastable to (B, Hkv, group, L, S)."""
    while mask.ndim < 4:
        mask = mask[None]
    if mask.shape[1] == 1:
        return mask[:, :, None]
    return mask.reshape(mask.shape[0], num_kv_heads, group, *mask.shape[2:])
