"""Prompt chunks of batch caches read their keys up to a whole number of 256-token steps (CUDA).

MLX's CUDA backend plans cuDNN attention for each exact query shape, key shape and key strides, and a
resumed agent's chunk nearly always meets a key length it has not met (its history grew since): each
such turn paid a new plan, tens to hundreds of milliseconds while the whole batch waited, for an
attention that then takes a few. Here a chunk of several tokens reads the keys up to the next multiple
of 256, from a buffer grown in whole steps of 256, with an explicit mask that hides the positions past
its tokens: key lengths repeat, and so do the plans. The hidden positions hold zeros or tokens cut off
earlier, finite either way, and the mask gives them no weight.

Only chunks short next to the keys they read take this path, and only while the scores the mask makes
MLX materialise stay small: a long first prompt, and every later chunk of a long prompt, keep the
fused kernels (cuDNN's causal attention skips the masked half of its scores and never writes them
out; unfused, a long prompt's later chunks ran several times slower, docs/benchmarks.md). And only
models whose attention takes the cache's own mask: `switch` checks, whenever a generator is made,
that the model hands a short chunk's padded keys and mask to MLX's attention as they are.
"""

from __future__ import annotations

from mlx_lm.models.cache import BatchKVCache

from engine.mlx_lm_ext.path_switch import PathSwitch

STEP = 256
# A chunk takes this path when the keys it reads are at least this many times its own tokens,
KEYS_PER_QUERY = 4
# and its scores (tokens x padded keys, per row and head) are at most this many: a new cuDNN plan
# costs tens of milliseconds, materialised scores grow with both lengths.
MAX_SCORES = 1 << 21

_mlx_lm_update_and_fetch = BatchKVCache.update_and_fetch


def _padded_end(end: int) -> int:
    return -(-end // STEP) * STEP


def _applies(start: int, tokens: int) -> bool:
    """Whether a chunk of `tokens` after `start` cached tokens reads padded keys."""
    end = start + tokens
    return switch.on and tokens > 1 and tokens * KEYS_PER_QUERY <= end and tokens * _padded_end(end) <= MAX_SCORES


def update_and_fetch(self, keys, values):
    import mlx.core as mx

    start, tokens = self._idx, keys.shape[2]
    if not _applies(start, tokens):
        return _mlx_lm_update_and_fetch(self, keys, values)
    end = start + tokens
    padded = _padded_end(end)
    if self.keys is None or self.keys.shape[2] < padded:
        batch, heads, _, key_dim = keys.shape
        more_keys = mx.zeros((batch, heads, padded - start, key_dim), keys.dtype)
        more_values = mx.zeros((batch, heads, padded - start, values.shape[3]), values.dtype)
        if self.keys is None:
            self.keys, self.values = more_keys, more_values
        else:
            self.keys = mx.concatenate([self.keys[..., :start, :], more_keys], axis=2)
            self.values = mx.concatenate([self.values[..., :start, :], more_values], axis=2)
    self.offset = self.offset + tokens
    self._idx = end
    self.keys[..., start:end, :] = keys
    self.values[..., start:end, :] = values
    return self.keys[..., :padded, :], self.values[..., :padded, :]


def padded_mask(cache: BatchKVCache, tokens: int, **kwargs):
    """The chunk's mask over the padded keys (None: this chunk reads its keys exactly)."""
    import mlx.core as mx
    from mlx_lm.models.base import create_causal_mask

    if kwargs.get("window_size") is not None or not _applies(cache._idx, tokens):
        return None
    end = cache._idx + tokens
    mask = create_causal_mask(tokens, offset=cache._idx, left_padding=cache.left_padding)
    hidden = _padded_end(end) - end
    if hidden:
        mask = mx.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, hidden)], constant_values=False)
    return mask


def install() -> None:
    BatchKVCache.update_and_fetch = update_and_fetch


def _hands_over_padded_keys(model) -> bool:
    """Whether every layer of `model` hands a short chunk's padded keys and their mask to MLX's fused
    attention as they are (and the chunk computes)."""
    import mlx.core as mx

    from engine.mlx_lm_ext import attention

    def padded(mask, keys) -> bool:
        return isinstance(mask, mx.array) and keys[2] == STEP and mask.shape[-1] == STEP

    return attention.hands_over(model, [0], [list(range(1, 41))], [list(range(41, 49))], padded)


switch = PathSwitch(
    _hands_over_padded_keys,
    "prompt chunks read exact key lengths: the model does not hand the cache's mask to MLX's attention",
)
