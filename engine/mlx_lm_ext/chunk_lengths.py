"""Prompt chunks rounded up to a few lengths (CUDA).

MLX's CUDA backend builds kernels, CUDA graphs and cuDNN attention plans for each new number of tokens
a forward pass reads. Resumed agents bring new turns of every length, so nearly every turn met a shape
the process had not met and paid for it while the batch waited. Here a chunk's prompts are right-padded
(as mlx-lm pads prompts of different lengths that prefill together) up to the next of a few lengths:
multiples of an eighth of the chunk's power of two, at least 32. Short chunks, which read the weights
more than they compute, get their padding nearly free; a long one grows by at most an eighth. The
padded positions end up as left padding of their rows, which every batch cache already hides.
"""

from __future__ import annotations

SMALLEST_UNIT = 32  # tokens: chunks up to this many share one length


def rounded(tokens: int, most: int) -> int:
    """The length a chunk whose longest prompt has `tokens` tokens is padded to: at most `most` (the
    prefill step) and never below `tokens`."""
    if tokens <= 1:
        return tokens
    unit = max(SMALLEST_UNIT, 1 << max(0, tokens.bit_length() - 4))
    return max(tokens, min(-(-tokens // unit) * unit, most))


def applies(caches) -> bool:
    """Whether a prompt batch's caches take right padding as plain batch caches do (other kinds keep
    exact lengths)."""
    from mlx_lm.models.cache import BatchKVCache

    return bool(caches) and all(type(cache) is BatchKVCache for cache in caches)
