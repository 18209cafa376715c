"""mlx-lm's BatchGenerator with fewer copies of a lone sequence's KV cache and, where evaluation is
inline (the CPU), no forward pass that a token waits for without needing it.

Copies. mlx-lm 0.32 copies a sequence's whole cache three times per turn even when it runs alone (for a
resumed agent with 4k cached tokens, ~200 MB of float32 each): `merge` copies the cache into a new
batch buffer sized exactly to it (so the first new token grows it: another copy), `split` deep-copies
the prompt batch when its prompts start generating, and `extract` copies the finished sequence back
out. Here a sequence that is alone in its batch hands its arrays over at each of those points, and a
split that moves every prompt hands the caches over too. Handing over is safe because the side that
gives the arrays away drops them at once: MLX then owns a single reference and writes in place.

First token (CPU). mlx-lm reads a prompt's last token in a forward pass of its own, and computes each
next token before it returns the current one. On a GPU that second pass overlaps; on the CPU
`mx.async_eval` computes inline, so every turn's first token waited for two passes more than it needs
(each a full read of the weights). Here the chunk that reads a prompt's last token also yields its
first token (the vocabulary projection computed for that position only), and each token is returned
before the next one is computed.
"""

from __future__ import annotations

import time

from mlx_lm.generate import BatchGenerator, GenerationBatch, PromptProcessingBatch
from mlx_lm.models.cache import BatchKVCache, KVCache

from engine.mlx_lm_ext import chunk_lengths


class _PromptBatch(PromptProcessingBatch):
    # Chunks are padded up to a few lengths (chunk_lengths.py): set on the generator's prompt batch.
    rounds_chunks = False

    def prompt(self, tokens):
        longest = max((len(t) for t in tokens), default=0)
        length = chunk_lengths.rounded(longest, max(longest, self.prefill_step_size)) if self.rounds_chunks else longest
        if length == longest or not chunk_lengths.applies(self.prompt_cache):
            return super().prompt(tokens)

        def forward(inputs) -> list:
            self.model(inputs, cache=self.prompt_cache)
            return []  # only the caches are kept, as in mlx-lm's `prompt`

        self._chunk(tokens, length, forward)

    def split(self, indices):
        if sorted(indices) != list(range(len(self.uids))):
            return super().split(indices)
        moved = self.__class__.__new__(self.__class__)
        moved.__dict__.update(self.__dict__)
        moved.prompt_cache = list(self.prompt_cache)
        self.filter([])  # empties this batch's lists; `moved` keeps its own
        return moved

    def prompt_to_end(self, tokens: list[list[int]], rows: list[int], last_logits):
        """mlx-lm's `prompt` for one chunk (at most a step's tokens per prompt) that ends the prompts
        of `rows`: returns the model's output at each one's last token, from `last_logits(inputs,
        caches, rows, positions)`."""
        positions = [len(tokens[row]) - 1 for row in rows]
        longest = max(len(t) for t in tokens)
        return self._chunk(tokens, longest, lambda inputs: last_logits(inputs, self.prompt_cache, rows, positions))

    def _chunk(self, tokens: list[list[int]], length: int, forward):
        """mlx-lm's `prompt` for one chunk: the prompts right-padded to `length` tokens, `forward(inputs)`
        run over them, then each cache's padding moved to the left of its row (as mlx-lm pads prompts of
        different lengths). Returns what `forward` returned, evaluated with the caches."""
        import mlx.core as mx
        from mlx_lm.generate import _right_pad_prompts

        for held, new in zip(self.tokens, tokens, strict=True):
            held += new
        lengths = [len(t) for t in tokens]
        padded = length > min(lengths)
        if padded:
            inputs = _right_pad_prompts(tokens, max_length=length)
            for cache in self.prompt_cache:
                cache.prepare(lengths=lengths, right_padding=[length - n for n in lengths])
        else:
            inputs = mx.array(tokens)
        output = forward(inputs)
        if padded:
            for cache in self.prompt_cache:
                cache.finalize()
        mx.eval(output, [cache.state for cache in self.prompt_cache])
        mx.clear_cache()
        return output


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
        inputs = self._next_tokens
        logits = self.model(inputs[:, None], cache=self.prompt_cache)[:, -1, :]
        for tokens, token in zip(self.tokens, inputs.tolist(), strict=True):
            tokens.append(token)  # `tokens` are the ones in the caches
        self._sample(logits, inputs)

    def _sample(self, logits, inputs) -> None:
        """The next tokens from `logits` (one row per sequence), the model's output for `inputs`."""
        import mlx.core as mx

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
        self._next_tokens, self._next_logprobs = sampled, list(logprobs)
        self._unfed = False

    @classmethod
    def started(cls, prompts: PromptProcessingBatch, logits):
        """A batch of prompts whose last token the prompt batch has read, the first token sampled from
        `logits` (the model's output at each one's last token) and not reported yet: the state mlx-lm's
        constructor reaches with one more forward pass over the last prompt token."""
        import mlx.core as mx
        from mlx_lm.models.cache import TokenBuffer

        batch = cls.__new__(cls)
        batch.model, batch.uids, batch.prompt_cache = prompts.model, prompts.uids, prompts.prompt_cache
        batch.tokens, batch.samplers, batch.fallback_sampler = (
            prompts.tokens,
            prompts.samplers,
            prompts.fallback_sampler,
        )
        batch.logits_processors, batch.stop_sequences = prompts.logits_processors, prompts.stop_sequences
        batch.max_tokens, batch.evaluates_inline = prompts.max_tokens, True
        batch._current_tokens, batch._current_logprobs = None, []
        # As in mlx-lm: the context starts without the last prompt token, which the first sample adds.
        batch._token_context = [TokenBuffer(tokens[:-1]) for tokens in batch.tokens]
        batch._num_tokens = [0] * len(batch.uids)
        batch._matchers = [stops.matcher() for stops in batch.stop_sequences]
        batch._sample(logits, mx.array([tokens[-1] for tokens in batch.tokens]))
        return batch

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
    def __init__(self, *args, inline_first_token: bool = False, rounded_chunks: bool = False, **kwargs):
        import mlx.core as mx

        super().__init__(*args, **kwargs)
        # The prompt batch new prompts join and split from, and the generation batch they move to:
        # both live as long as the generator.
        self._prompt_batch.__class__ = _PromptBatch
        self._generation_batch.__class__ = _GenerationBatch
        self._generation_batch.evaluates_inline = inline_first_token
        self._prompt_batch.rounds_chunks = rounded_chunks
        # With inline evaluation, a prompt's first token comes from the chunk that reads its last token,
        # instead of one more forward pass over that token alone (mlx-lm's way, which every turn waits for).
        with mx.stream(self._stream):
            self._head = _split_head(self.model) if inline_first_token else None

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

    def insert_segments(self, segments, *args, **kwargs):
        uids = super().insert_segments(segments, *args, **kwargs)
        if self._head is not None:
            # mlx-lm splits the last token off into its own segment; it is read with the rest here.
            for entry in list(self._unprocessed_sequences)[-len(uids) :]:
                parts = entry[1]
                if len(parts) > 1 and len(parts[-1]) == 1:
                    last = parts.pop()
                    parts[-1] = parts[-1] + last
        return uids

    def _next(self):
        if self._head is None:
            return super()._next()
        import mlx.core as mx

        prompt_responses, generation_responses = [], []
        if len(self._generation_batch) > 0:
            tic = time.perf_counter()
            generation_responses = self._generation_batch.next()
            self._counters.decode_time += time.perf_counter() - tic
            self._counters.generation_tokens += len(generation_responses)
            self._counters.generation_steps += 1
            if self._counters.generation_steps % 512 == 0:
                mx.clear_cache()
        if len(self._generation_batch) >= self.completion_batch_size:
            return prompt_responses, generation_responses
        joining = min(
            self.prefill_batch_size - len(self._prompt_batch),
            self.completion_batch_size - len(self._generation_batch),
            len(self._unprocessed_sequences),
        )
        if joining > 0:
            self._prompt_batch.extend(self._make_batch(joining))

        # One chunk of every prompt; the prompts it ends start generating with the token it yields.
        chunks, ending = [], []
        for row, processing in enumerate(self._currently_processing):
            segments = processing[0]
            chunk = segments[0][: self.prefill_step_size]
            segments[0] = segments[0][len(chunk) :]
            response = PromptProcessingBatch.Response(self._prompt_batch.uids[row], 0, False, False)
            if not segments[0]:
                segments.pop(0)
                response.end_of_segment = True
                if not segments:
                    response.end_of_prompt = True
                    ending.append(row)
            processing[1] += len(chunk)
            response.progress = (processing[1], processing[2])
            prompt_responses.append(response)
            chunks.append(chunk)
        if not chunks:
            return prompt_responses, generation_responses
        self._counters.prompt_tokens += sum(len(chunk) for chunk in chunks)
        tic = time.perf_counter()
        if not ending:
            self._prompt_batch.prompt(chunks)
        else:
            logits = self._prompt_batch.prompt_to_end(chunks, ending, self._last_logits)
            self._currently_processing = [p for row, p in enumerate(self._currently_processing) if row not in ending]
            self._generation_batch.extend(_GenerationBatch.started(self._prompt_batch.split(ending), logits))
        self._counters.prompt_time += time.perf_counter() - tic
        return prompt_responses, generation_responses

    def _last_logits(self, inputs, caches, rows: list[int], positions: list[int]):
        """The model's output at one position of each of `rows`, the vocabulary projection computed
        for those positions only."""
        import mlx.core as mx

        trunk, head = self._head
        hidden = trunk(inputs, caches)
        return head(hidden[mx.array(rows), mx.array(positions)][:, None, :])[:, 0, :]

    def extract_layers(self, uid: int, layers: list[int]) -> list | None:
        """Copies of a running sequence's caches of some layers (mlx-lm's extract_cache copies every
        layer); None when it is not being read or generated."""
        found = self._find_uids([uid]).get(uid)
        if found is None or found[0] == 0:
            return None
        stage, index = found
        batch = self._prompt_batch if stage == 1 else self._generation_batch
        return [batch.prompt_cache[layer].extract(index) for layer in layers]

    def remove(self, uids, return_prompt_caches=False):
        batch = self._generation_batch
        batch._dropping_extracted = set(batch.uids) <= set(uids)
        try:
            return super().remove(uids, return_prompt_caches=return_prompt_caches)
        finally:
            batch._dropping_extracted = False


def _split_head(model):
    """(trunk, head) such that model(x) is head(trunk(x)) (mlx-lm's usual `self.model` then tied
    embeddings or `lm_head`), checked on two tokens; None for a model built otherwise."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    trunk = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    if head is None:
        head = getattr(getattr(trunk, "embed_tokens", None), "as_linear", None)
    if not callable(trunk) or not callable(head):
        return None
    probe = mx.array([[1, 2]])
    try:
        whole = model(probe, cache=make_prompt_cache(model))
        split = head(trunk(probe, make_prompt_cache(model)))
        mx.eval(whole, split)
    except Exception:  # noqa: BLE001 - any other shape of model keeps mlx-lm's way
        return None
    return (trunk, head) if whole.shape == split.shape and mx.allclose(whole, split).item() else None


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
