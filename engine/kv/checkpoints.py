"""Window checkpoints: a model with sliding-window layers resumes inside a stored turn, at a prompt's end.

A sliding-window layer (mlx-lm's RotatingKVCache) holds only the last `window` tokens, so once a turn
has run past the window its cache cannot be cut back to an earlier token: a next prompt that differs
anywhere before the stored end (a client that re-renders the last answer, drops retries or cuts a
truncated answer) would be prefilled from scratch. Clients diverge mostly inside answers, so each turn
keeps its sliding windows as they stood when its prompt had been read (a copy of one window per
sliding layer); a later prompt that matches up to there resumes from it, the full-attention layers
cut back to the same token.

    stored turn     [ prompt ............................ | answer ........ ]
    checkpoint                                            ^ windows copied here
    next prompt     [ prompt ............................ | answer, re-rendered ... | new turn ]
                                                            ^ diverged: resumed at the checkpoint

An agent keeps the checkpoints of its last KEPT turns that still lie on its stored tokens (Claude Code
resends a truncated answer's turn without its retries); they count in its hot bytes. Its warm snapshot
stores the latest one (KVMemory._write_job), so such a prompt also resumes after a restart or an
eviction.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.kv.layout import CacheLayout, rotating_cache, sliding_window_snapshot

KEPT = 4  # checkpoints per agent: a turn and a client's retries of it


@dataclass(frozen=True)
class WindowCheckpoint:
    tokens: tuple[int, ...]  # the tokens the windows stand after
    windows: dict  # sliding layer -> RotatingKVCache holding its last window at that point
    nbytes: int

    @property
    def position(self) -> int:
        return len(self.tokens)

    def lies_on(self, tokens: list[int]) -> bool:
        """The checkpoint stands after a prefix of `tokens`."""
        return len(tokens) >= self.position and tuple(tokens[: self.position]) == self.tokens


def take_checkpoint(layout: CacheLayout, tokens: list[int], windows: dict) -> WindowCheckpoint | None:
    """A checkpoint of sliding-layer caches (layer -> RotatingKVCache, left as they are) that have read
    the first `offset` of `tokens`; None when they have read more than `tokens`."""
    import mlx.core as mx

    offset = int(next(iter(windows.values())).offset)
    if offset > len(tokens) or offset == 0:
        return None
    copies = {}
    for layer, cache in windows.items():
        keys, values = (mx.contiguous(part[None]) for part in sliding_window_snapshot(cache))
        kind = layout.layers[layer]
        copies[layer] = rotating_cache(kind.sliding_window, kind.keep, keys, values, offset)
    arrays = [array for cache in copies.values() for array in (cache.keys, cache.values)]
    mx.eval(arrays)
    return WindowCheckpoint(tuple(tokens[:offset]), copies, sum(array.nbytes for array in arrays))


def best_checkpoint(checkpoints: list[WindowCheckpoint], matched: int) -> WindowCheckpoint | None:
    """The latest checkpoint at or before `matched` tokens (all of them lie on the entry's tokens)."""
    usable = [checkpoint for checkpoint in checkpoints if checkpoint.position <= matched]
    return max(usable, key=lambda checkpoint: checkpoint.position, default=None)


def fresh_windows(checkpoint: WindowCheckpoint) -> dict:
    """The checkpoint's windows as caches of their own: generation writes into them, the checkpoint stays."""
    import mlx.core as mx

    return {
        layer: rotating_cache(cache.max_size, cache.keep, mx.array(cache.keys), mx.array(cache.values), cache.offset)
        for layer, cache in checkpoint.windows.items()
    }
