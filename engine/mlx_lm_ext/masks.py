"""Batch caches that hold no left padding ask for mlx-lm's fused causal attention.

mlx-lm's BatchKVCache always builds an explicit boolean mask (causal and left padding), even for a
batch of one or of prompts of equal length: on a GPU that turns the fused causal kernel into an
attention over materialised scores (a long prefill several times slower) and gives every decode step
a mask to build and read. Without padding the mask is exactly "causal" (None for one query), which
is what mlx-lm's plain KVCache returns. A short chunk that reads padded keys (prefill_keys.py) gets
its mask from there, and a decode step that attends row by row (decode_rows.py) each row's padding.
"""

from __future__ import annotations

from mlx_lm.models.cache import BatchKVCache

from engine.mlx_lm_ext import attention, decode_rows, prefill_keys

_mlx_lm_make_mask = BatchKVCache.make_mask


def _make_mask(self, N: int, return_array: bool = False, **kwargs):
    padded = prefill_keys.padded_mask(self, N, **kwargs)
    if padded is not None:
        return padded
    if return_array:
        return _mlx_lm_make_mask(self, N, return_array=return_array, **kwargs)
    left_padding = self.left_padding.tolist()
    if kwargs.get("window_size") is None and not any(left_padding):
        return "causal" if N > 1 else None
    rows = decode_rows.row_mask(N, left_padding, **kwargs)
    if rows is not None:
        return rows
    return _mlx_lm_make_mask(self, N, return_array=return_array, **kwargs)


def install() -> None:
    BatchKVCache.make_mask = _make_mask
    prefill_keys.install()
    attention.install()
