"""Attention for MLX's CPU backend with the softmax in numpy.

MLX's CPU `exp` runs at ~85 M elements/s (no SIMD); numpy's runs at ~2 G/s. Attention over a long
cache is dominated by that softmax: a 45-token turn over 4k cached tokens of the default model costs
~0.75 s in `mx.fast.scaled_dot_product_attention` and ~0.2 s here, and a cold 4k prefill spends more
than half its time there. So on the CPU backend, for float32 attention big enough to matter, the
engine thread keeps the matmuls in MLX and does the softmax with numpy, in place on the scores through
a zero-copy view, one slab of query rows at a time so that the scores stay in the CPU's cache.

`install(model)` points the model's modules at `dispatch`, which uses numpy only on threads that
called `enable_on_this_thread()` (the engine thread) and falls back to mlx-lm's own function for
everything else: quantized caches, attention sinks, other dtypes or devices, and small problems.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx_lm.models import base

# Below this many scores (batch x heads x queries x keys) MLX's own kernel is about as fast. (The
# per-layer synchronisation costs little: on the CPU, `mx.async_eval` of a step runs mostly inline.)
MIN_SCORES = 1 << 14
# Scores per slab: 8 MB of float32 stays in the CPU's last-level cache through max, exp, sum and divide.
SLAB_SCORES = 1 << 21
# Masked scores: finite, so a fully masked row (left padding in a batch) gets uniform weights as it
# does in MLX, instead of NaNs that would reach the padding's keys and values; far enough below any
# real score that its weight is exactly 0, near enough to 0 that subtracting a row's max cannot overflow.
MASKED = np.float32(-1e30)

_mlx_attention = base.scaled_dot_product_attention
_thread_state = threading.local()


def enable_on_this_thread(enabled: bool = True) -> None:
    _thread_state.enabled = enabled


def install(model) -> None:
    """Route the attention of every module `model` is built from through `dispatch`."""
    for name in {type(module).__module__ for _, module in model.named_modules()}:
        module = sys.modules.get(name)
        if getattr(module, "scaled_dot_product_attention", None) is _mlx_attention:
            module.scaled_dot_product_attention = dispatch


def dispatch(queries, keys, values, cache, scale: float, mask, sinks=None):
    """mlx-lm's `scaled_dot_product_attention`, computed by numpy where that is faster."""
    if (
        getattr(_thread_state, "enabled", False)
        and sinks is None
        and not hasattr(cache, "bits")
        and queries.dtype == mx.float32
        and keys.dtype == mx.float32
        and mx.default_device() == mx.cpu
        and queries.shape[0] * queries.shape[1] * queries.shape[2] * keys.shape[2] >= MIN_SCORES
    ):
        return attention(queries, keys, values, scale, mask)
    return _mlx_attention(queries, keys, values, cache, scale=scale, mask=mask, sinks=sinks)


def attention(queries, keys, values, scale: float, mask) -> mx.array:
    """softmax(q kᵀ · scale + mask) v for q (B, Hq, L, D), k and v (B, Hkv, S, D), Hq a multiple of Hkv.

    `mask` is None, "causal" (query i sits at position S - L + i) or an array broadcastable to
    (B, Hq, L, S): boolean (True = attend) or additive. The matmuls stay in MLX (one BLAS in the
    process); each slab of scores is evaluated, exponentiated in place through a zero-copy numpy
    view, multiplied by the values and divided by its rows' sums.
    """
    batch, num_heads, num_queries, head_dim = queries.shape
    num_kv_heads, num_keys = keys.shape[1], keys.shape[2]
    group = num_heads // num_kv_heads
    q = (queries * scale).reshape(batch, num_kv_heads, group, num_queries, head_dim)
    keys_t = keys.swapaxes(-1, -2)
    masks = _mask_view(mask, batch, num_kv_heads, group, num_queries, num_keys)
    # Slabs of whole batch rows when they fit (batched decode), else of query rows of one sequence.
    per_query = num_heads * num_keys
    seqs = max(1, min(batch, SLAB_SCORES // (per_query * num_queries)))
    rows = num_queries if seqs > 1 else max(1, SLAB_SCORES // per_query)
    if rows < num_queries or seqs < batch:
        keys_t, values = mx.contiguous(keys_t), mx.contiguous(values)  # read once per slab
    slabs, pending = [], []
    for first in range(0, batch, seqs):
        last = min(batch, first + seqs)
        for start in range(0, num_queries, rows):
            stop = min(num_queries, start + rows)
            shape = (last - first, num_kv_heads, group, stop - start)
            q_slab = q[first:last, :, :, start:stop].reshape(*shape[:2], -1, head_dim)
            scores = q_slab @ keys_t[first:last]
            mx.eval(scores, *pending)
            view = np.asarray(scores).reshape(*shape, num_keys)
            _apply_mask(view, masks, first, last, start, stop, num_queries)
            view -= view.max(axis=-1, keepdims=True)
            np.exp(view, out=view)
            # Normalised after the product: one pass over the scores fewer. (einsum sums a contiguous
            # row faster than `sum`, which adds pairwise.)
            sums = mx.array(np.einsum("...k->...", view)[..., None])
            pending = [(scores @ values[first:last]).reshape(*shape, -1) / sums]
            slabs.extend(pending)
    if len(slabs) > 1:
        per_seq = -(-num_queries // rows)
        seq_outs = [
            mx.concatenate(slabs[i : i + per_seq], axis=3) if per_seq > 1 else slabs[i]
            for i in range(0, len(slabs), per_seq)
        ]
        slabs = [mx.concatenate(seq_outs, axis=0)]
    out = slabs[0]
    return out.reshape(batch, num_heads, num_queries, -1)


@dataclass(frozen=True)
class _PaddedCausal:
    """A causal mask that also hides each sequence's first `left[b]` keys (its left padding in a batch;
    none for mlx-lm's "causal"): applied by slicing the few masked columns, not by a pass over every
    score."""

    left: np.ndarray  # (B,)


def _mask_view(mask, batch: int, num_kv_heads: int, group: int, num_queries: int, num_keys: int):
    """The mask as a _PaddedCausal when it is causal (mlx-lm's "causal", or an array from its batch
    caches); any other array mask as a numpy view (B, Hkv, group, L, S); None for no mask. An array is
    analysed once: a model's layers share it."""
    if isinstance(mask, str):
        return _PaddedCausal(np.zeros(batch, dtype=np.intp))
    if not isinstance(mask, mx.array):
        return None
    shape = (batch, num_kv_heads, group, num_queries, num_keys)
    last = getattr(_thread_state, "last_mask", None)
    if last is not None and last[0] is mask and last[1] == shape:  # held here until the next mask
        return last[2]
    analysed = mask
    if analysed.dtype not in (mx.bool_, mx.float32):
        analysed = analysed.astype(mx.float32)  # numpy has no bfloat16
    mx.eval(analysed)
    full = np.broadcast_to(np.asarray(analysed), (batch, num_kv_heads * group, num_queries, num_keys))
    view = _padded_causal(full) or full.reshape(shape)
    _thread_state.last_mask = (mask, shape, view)
    return view


def _padded_causal(full: np.ndarray) -> _PaddedCausal | None:
    """`full` (B, H, L, S) as a _PaddedCausal if it is a boolean mask the same for every head, in
    which query i sees keys left[b] to S - L + i; else None."""
    batch, _, num_queries, num_keys = full.shape
    if full.dtype != np.bool_ or (full.shape[1] > 1 and full.strides[1] != 0) or num_queries > num_keys:
        return None
    per_sequence = full[:, 0]
    # The last query sees the most keys: its first visible one is the end of the padding.
    left = np.argmax(per_sequence[:, -1], axis=-1)
    columns = np.arange(num_keys)
    causal = columns[None, :] <= np.arange(num_keys - num_queries, num_keys)[:, None]
    expected = causal[None] & (columns[None, None, :] >= left[:, None, None])
    return _PaddedCausal(left) if np.array_equal(per_sequence, expected) else None


def _apply_mask(scores, masks, first: int, last: int, start: int, stop: int, num_queries: int) -> None:
    """Mask scores (sequences, Hkv, group, rows, S) of sequences first:last, query rows start:stop."""
    num_keys = scores.shape[-1]
    if isinstance(masks, _PaddedCausal):
        for index, left in enumerate(masks.left[first:last]):
            if left:
                scores[index, ..., :left] = MASKED
        # Row r may see keys up to S - L + r: only the columns after the slab's first row's last key
        # can be hidden.
        first_column = num_keys - num_queries + start + 1
        if first_column < num_keys:
            first_hidden = np.arange(stop - start) + 1  # within scores[..., first_column - 1 :]
            hidden = np.arange(num_keys - first_column + 1)[None, :] >= first_hidden[:, None]
            np.copyto(scores[..., first_column - 1 :], MASKED, where=hidden)
    elif masks is not None:
        part = masks[first:last, :, :, start:stop]
        if part.dtype == np.bool_:
            np.copyto(scores, MASKED, where=~part)
        else:
            scores += part
            np.maximum(scores, MASKED, out=scores)  # -inf in an additive mask: see MASKED
