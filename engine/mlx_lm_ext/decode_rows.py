"""Decode steps of a left-padded batch attend row by row, each row over its own keys only (CUDA).

A batch of agents with histories of different lengths is left-padded, and mlx-lm hides the padding
with a boolean mask. MLX's CUDA backend has a fused attention kernel for one query token and for
cuDNN, but neither takes an array mask: every decode step of such a batch ran the unfused attention
(scores materialised, the grouped keys and values broadcast, a softmax, another matmul) in every
layer, while a batch without padding runs the fused kernel. Here the decode step's attention runs
per row instead, on that row's keys from its first real token: in one call of a batch kernel that
starts each row where its keys do (ragged_decode.py), or, where that kernel is not usable, once per
run of rows with the same padding, with no mask, so each takes the fused kernel. The keys are a view
of the batch's cache, not a copy.

The row split needs each row's padding on the host; `masks._make_mask` reads it there for every
step already. Only models that hand the cache's mask to MLX's fused attention as it is, in every
layer, take this path: `switch` checks the model on a left-padded batch whenever a generator is
made. Metal's fused kernel takes the mask, and the CPU runs the unfused attention either way: both
keep the mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.mlx_lm_ext import ragged_decode
from engine.mlx_lm_ext.path_switch import PathSwitch


@dataclass(frozen=True)
class RowPadding:
    """The mask of a decode step that attends row by row: each row's left padding (from the host), and
    the same on the device for the batch kernel (ragged_decode.py), made once per step."""

    left_padding: tuple[int, ...]
    starts: object = field(compare=False)


def row_mask(tokens: int, left_padding: list[int], **kwargs) -> RowPadding | None:
    """The mask for this step if it attends row by row (one token, padded rows, no window), else None."""
    import mlx.core as mx

    if not switch.on or tokens != 1 or kwargs.get("window_size") is not None or not any(left_padding):
        return None
    return RowPadding(tuple(left_padding), mx.array(left_padding, dtype=mx.int32))


def by_rows(attend, queries, keys, values, scale, mask: RowPadding, **kwargs):
    """Each row over its own keys: in one call of the batch kernel where it takes the step, else `attend`
    (MLX's fused attention) per run of rows with the same padding."""
    import mlx.core as mx

    if ragged_decode.takes(queries, keys, values, kwargs):
        return ragged_decode.attend(queries, keys, values, scale, mask.starts)
    parts = []
    for first, end, start in _runs(mask.left_padding):
        parts.append(
            attend(
                queries[first:end],
                keys[first:end, :, start:],
                values[first:end, :, start:],
                scale=scale,
                mask=None,
                **kwargs,
            )
        )
    return mx.concatenate(parts, axis=0)


def _runs(left_padding: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(first row, end row, padding) of each run of neighbouring rows with the same padding: one call each."""
    runs = []
    first = 0
    for row in range(1, len(left_padding) + 1):
        if row == len(left_padding) or left_padding[row] != left_padding[first]:
            runs.append((first, row, left_padding[first]))
            first = row
    return runs


def _hands_over_row_padding(model) -> bool:
    """Whether every layer of `model` hands a left-padded batch's decode mask to MLX's fused attention as
    it is (and the step computes)."""
    from engine.mlx_lm_ext import attention

    prompt = [[0, 0, 0, *range(1, 38)], list(range(41, 81))]
    return attention.hands_over(model, [3, 0], prompt, [[7], [9]], lambda mask, _: isinstance(mask, RowPadding))


switch = PathSwitch(
    _hands_over_row_padding,
    "decode attention stays masked: the model does not hand the cache's mask to MLX's attention",
)
