"""mlx-lm's BatchGenerator, less one copy of every prompt's KV cache.

When prompts finish prefilling, mlx-lm 0.32 splits them off the prompt batch with `split`, which
deep-copies the whole batch cache and then filters both copies. When every prompt of the batch moves
on at once (the usual case: one new request, or requests that arrived together) the copy is thrown
away at once; for a resumed agent with 4k cached tokens it is ~200 MB of float32 written per turn.
Here such a split hands the caches over instead.
"""

from __future__ import annotations

from mlx_lm.generate import BatchGenerator, PromptProcessingBatch


class _PromptBatch(PromptProcessingBatch):
    def split(self, indices):
        if sorted(indices) != list(range(len(self.uids))):
            return super().split(indices)
        moved = self.__class__.__new__(self.__class__)
        moved.__dict__.update(self.__dict__)
        moved.prompt_cache = list(self.prompt_cache)
        self.filter([])  # empties this batch's lists; `moved` keeps its own
        return moved


class LeanBatchGenerator(BatchGenerator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The one prompt batch new prompts are added to and split from.
        self._prompt_batch.__class__ = _PromptBatch
