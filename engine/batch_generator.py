"""mlx-lm's BatchGenerator, less the copies of a lone sequence's KV cache.

mlx-lm 0.32 copies a sequence's whole cache three times per turn even when it runs alone (for a
resumed agent with 4k cached tokens, ~200 MB of float32 each): `merge` copies the cache into a new
batch buffer sized exactly to it (so the first new token grows it: another copy), `split` deep-copies
the prompt batch when its prompts start generating, and `extract` copies the finished sequence back
out. Here a sequence that is alone in its batch hands its arrays over at each of those points, and a
split that moves every prompt hands the caches over too.

Handing over is safe because the side that gives the arrays away drops them at once: MLX then owns a
single reference and writes the next tokens in place.
"""

from __future__ import annotations

from mlx_lm.generate import BatchGenerator, GenerationBatch, PromptProcessingBatch
from mlx_lm.models.cache import BatchKVCache, KVCache


class _PromptBatch(PromptProcessingBatch):
    def split(self, indices):
        if sorted(indices) != list(range(len(self.uids))):
            return super().split(indices)
        moved = self.__class__.__new__(self.__class__)
        moved.__dict__.update(self.__dict__)
        moved.prompt_cache = list(self.prompt_cache)
        self.filter([])  # empties this batch's lists; `moved` keeps its own
        return moved


class _GenerationBatch(GenerationBatch):
    # True while the caller drops the extracted sequences right after extracting them.
    _dropping_extracted = False
    # On MLX's CPU backend `async_eval` computes inline, so mlx-lm's pipelining makes every token
    # (the first one included) wait for the next token's forward pass too. There this batch reports
    # each token as soon as it is sampled and feeds it to the model at the start of the next step.
    evaluates_inline = False
    _unfed = False  # the tokens last reported still wait for their forward pass

    def _step(self):
        if not self.evaluates_inline:
            return super()._step()
        import mlx.core as mx

        if self._unfed:
            self._feed()
        mx.eval(self._next_tokens, self._next_logprobs)
        self._current_tokens, self._current_logprobs = self._next_tokens, self._next_logprobs
        self._unfed = True
        return self._current_tokens.tolist(), self._current_logprobs

    def _feed(self) -> None:
        """One forward pass over the tokens last reported: the caches take them in and the next tokens
        are sampled (the body of mlx-lm's step)."""
        import mlx.core as mx

        inputs = self._next_tokens
        logits = self.model(inputs[:, None], cache=self.prompt_cache)[:, -1, :]
        if any(self.logits_processors):
            processed_logits = []
            for e in range(len(self.uids)):
                sample_logits = logits[e : e + 1]
                processors = self.logits_processors[e] or ()
                if processors:
                    context = self._token_context[e].update_and_fetch(inputs[e : e + 1])
                    for processor in processors:
                        sample_logits = processor(context, sample_logits)
                processed_logits.append(sample_logits)
            logits = mx.concatenate(processed_logits, axis=0)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        samplers = [self.fallback_sampler if s is None else s for s in (self.samplers or [None] * len(self.uids))]
        if not samplers or all(s is samplers[0] for s in samplers):
            sampled = (samplers[0] if samplers else self.fallback_sampler)(logprobs)
        else:
            sampled = mx.concatenate([s(logprobs[e : e + 1]) for e, s in enumerate(samplers)], axis=0)
        for tokens, token in zip(self.tokens, inputs.tolist(), strict=True):
            tokens.append(token)  # `tokens` are the ones in the caches
        self._next_tokens, self._next_logprobs = sampled, list(logprobs)
        self._unfed = False

    def extend(self, batch):
        # Newcomers arrive with their first token sampled and not yet reported: the running
        # sequences catch up to that point first.
        if self._unfed and self.uids:
            self._feed()
        super().extend(batch)
        self._unfed = False

    def next(self):
        # GenerationBatch.next extracts only the caches of finishing sequences, then filters them out.
        self._dropping_extracted = True
        try:
            return super().next()
        finally:
            self._dropping_extracted = False

    def extract_cache(self, idx: int) -> list:
        if self._dropping_extracted and len(self.uids) == 1:
            return [_hand_out(cache) for cache in self.prompt_cache]
        return super().extract_cache(idx)


class LeanBatchGenerator(BatchGenerator):
    def __init__(self, *args, **kwargs):
        import mlx.core as mx

        super().__init__(*args, **kwargs)
        # The prompt batch new prompts join and split from, and the generation batch they move to:
        # both live as long as the generator.
        self._prompt_batch.__class__ = _PromptBatch
        self._generation_batch.__class__ = _GenerationBatch
        self._generation_batch.evaluates_inline = self._stream.device == mx.cpu

    def _make_batch(self, n: int):
        if n != 1:
            return super()._make_batch(n)
        uid, segments, max_tokens, caches, *rest = self._unprocessed_sequences[0]
        adopted = [_adopt(cache) for cache in caches]
        if not any(adopted):
            return super()._make_batch(n)
        # mlx-lm merges empty stand-ins (nothing to copy); the adopted batch caches replace them.
        stand_ins = [cache if batch is None else KVCache() for cache, batch in zip(caches, adopted, strict=True)]
        self._unprocessed_sequences[0] = (uid, segments, max_tokens, stand_ins, *rest)
        prompt_batch = super()._make_batch(1)
        prompt_batch.prompt_cache = [
            merged if batch is None else batch for merged, batch in zip(prompt_batch.prompt_cache, adopted, strict=True)
        ]
        return prompt_batch

    def remove(self, uids, return_prompt_caches=False):
        batch = self._generation_batch
        batch._dropping_extracted = set(batch.uids) <= set(uids)
        try:
            return super().remove(uids, return_prompt_caches=return_prompt_caches)
        finally:
            batch._dropping_extracted = False


def _adopt(cache) -> BatchKVCache | None:
    """A batch of one over a plain KV cache's own arrays, spare capacity included (None for other
    kinds, which mlx-lm merges). The cache gives its arrays up."""
    import mlx.core as mx

    if type(cache) is not KVCache or cache.keys is None:
        return None
    batch = BatchKVCache([0])
    batch.keys, batch.values, batch._idx = cache.keys, cache.values, cache.offset
    batch.offset = mx.array([cache.offset])
    cache.keys = cache.values = None
    cache.offset = 0
    return batch


def _hand_out(cache):
    """The one sequence of a batch cache as a plain KV cache over the same arrays (copied by mlx-lm's
    extract when it is another kind or still left-padded)."""
    if type(cache) is not BatchKVCache or cache.keys is None or int(cache.left_padding[0].item()) != 0:
        return cache.extract(0)
    single = KVCache()
    single.keys, single.values, single.offset = cache.keys, cache.values, cache._idx
    return single
