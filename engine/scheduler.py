"""Continuous batching on the engine thread: requests join and leave mlx-lm's BatchGenerator at token
boundaries, each with its own restored KV cache, sampler, stop strings and max_tokens.

    waiting (FIFO) ──admit──► active (≤ SEMANTIC_MLX_MAX_BATCH_SIZE) ──finish──► memory.release
      one request per session at a time      one BatchGenerator.next() per step:
      (a session's next turn waits for its     one decode token for every running sequence,
       previous one)                           then one prefill chunk of the prompts being read

A long cold prompt is prefilled one chunk (SEMANTIC_MLX_PREFILL_STEP_SIZE tokens) per step, so the
sequences already decoding keep streaming while it is read.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from engine.errors import RequestError
from engine.handle import TurnHandle
from engine.kv.blocks import common_prefix_length
from engine.loader import LoadedModel
from engine.mlx_lm_ext import AttentionPaths
from engine.prompt import render_prompt
from engine.sampling import SeededSampler, repair_random_state, request_sampler
from engine.turn import Turn, guarded, prepare_turn

log = logging.getLogger(__name__)


def can_batch(model, kv_bits: int | None) -> bool:
    """Plain and sliding-window KV caches batch (BatchKVCache, BatchRotatingKVCache); quantized caches
    take the lone path (mlx-lm's QuantizedKVCache cannot be merged)."""
    from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

    return kv_bits is None and all(type(cache) in (KVCache, RotatingKVCache) for cache in make_prompt_cache(model))


@dataclass
class _Sequence:
    """A turn running in the batch generator under `uid`."""

    turn: Turn
    uid: int
    # Tokens of this prompt that waiting requests share: offered to them once it is prefilled
    shared_prefix: int = 0
    checkpointed: bool = False  # its window checkpoint is taken (engine/kv/checkpoints.py)


MIN_PREFILL_CHUNK = 64  # tokens per prompt per step, however many prompts share a step


class BatchScheduler:
    def __init__(
        self,
        loaded: LoadedModel,
        memory,
        max_batch_size: int,
        prefill_step_size: int,
        stream,
        attention: AttentionPaths,
    ):
        from engine.backend import current_backend
        from engine.mlx_lm_ext import make_batch_generator

        self.loaded = loaded
        self.memory = memory
        self.max_batch_size = max_batch_size
        self.prefill_step_size = prefill_step_size
        self.waiting: deque = deque()  # TurnHandles in arrival order
        self.active: dict[int, _Sequence] = {}  # by BatchGenerator uid
        self._new_generator = lambda: make_batch_generator(
            loaded.model,
            inline_first_token=current_backend().inline_first_token,
            attention=attention,
            max_tokens=1,
            completion_batch_size=max_batch_size,
            prefill_batch_size=max_batch_size,
            prefill_step_size=prefill_step_size,
            stream=stream,
        )
        self.generator = self._new_generator()
        self.eos_ids = sorted(loaded.tokenizer.eos_token_ids)
        # Rendered prompts of waiting requests by request id, with when their rendering began (a turn's
        # time to first token counts from there, as it does for one that is rendered as it starts).
        self._prompts: dict[str, tuple[float, list[int]]] = {}

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.active)

    def close(self) -> None:
        self.generator.close()

    # -- admission -------------------------------------------------------------------------------
    def admit(self) -> None:
        """Move waiting requests into the batch while there is room; a session's turns never overlap."""
        running_sessions = {s.turn.session_id for s in self.active.values() if s.turn.session_id is not None}
        self._drop_cancelled_waiting()
        skipped = deque()
        while self.waiting and len(self.active) < self.max_batch_size:
            handle = self.waiting.popleft()
            session_id = handle.request.session_id
            if session_id is not None and session_id in running_sessions:
                skipped.append(handle)  # waits for its session's running turn
                continue
            try:
                if not handle.cancelled and self._follows_a_prefill(handle):
                    skipped.append(handle)  # waits for a prefix another request is computing right now
                    continue
                started = self._start(handle)
            except Exception as exc:  # noqa: BLE001 - fail this request, keep serving the others
                log.exception("starting %s failed", handle.request_id)
                self._prompts.pop(handle.request_id, None)
                handle.fail(f"generation failed: {exc}", "internal")
                started = False
            if started and session_id is not None:
                running_sessions.add(session_id)
        skipped.extend(self.waiting)
        self.waiting = skipped

    def _drop_cancelled_waiting(self) -> None:
        """End the waiting requests whose callers went away, without waiting for a batch slot (their
        callers wait for the end before their session's next request runs)."""
        if not any(handle.cancelled for handle in self.waiting):
            return
        kept = deque()
        for handle in self.waiting:
            if handle.cancelled:
                self._prompts.pop(handle.request_id, None)
                handle.end_unstarted()
            else:
                kept.append(handle)
        self.waiting = kept

    def _prompt(self, handle: TurnHandle) -> list[int]:
        """The request's prompt tokens, rendered once (RequestError for a bad conversation)."""
        rendered = self._prompts.get(handle.request_id)
        if rendered is None:
            began = time.perf_counter()
            rendered = self._prompts[handle.request_id] = (began, render_prompt(self.loaded, handle.request))
        return rendered[1]

    def _follows_a_prefill(self, handle: TurnHandle) -> bool:
        """Several agents that arrive together with a common prefix (a shared system prompt) would each
        compute it. A request whose prompt shares at least a block more than the KV memory holds with a
        prompt being prefilled waits for that prefill, then restores the prefix from it (see _on_token):
        it waits at most one prefill, never for the other's generation."""
        if self.memory is None or not self.memory.enabled:
            return False
        try:
            prompt = self._prompt(handle)
        except RequestError:
            return False  # _start reports it
        block = self.memory.block_tokens
        tenant = handle.request.tenant
        leader, common = None, 0
        for sequence in self.active.values():
            if sequence.turn.prefilling and sequence.turn.request.tenant == tenant:
                length = common_prefix_length(prompt[:-1], sequence.turn.prompt[:-1])
                if length > common:
                    leader, common = sequence, length
        if leader is None or common < block or common < self.memory.cached_prefix_length(prompt, tenant) + block:
            return False
        leader.shared_prefix = max(leader.shared_prefix, common)
        return True

    def _share_prefix(self, sequence: _Sequence) -> None:
        """The sequence's prompt is prefilled: offer the part that waiting requests share."""
        extracted = self.generator.extract_cache([sequence.uid]).get(sequence.uid)
        if extracted is not None:
            shared = sequence.turn.prompt[: sequence.shared_prefix]
            self.memory.share(shared, extracted[0], sequence.turn.request.tenant)

    def _start(self, handle: TurnHandle) -> bool:
        from mlx_lm.generate import StopSequences

        rendered = self._prompts.pop(handle.request_id, None)  # the request leaves the waiting queue here
        if handle.cancelled:
            handle.end_unstarted()
            return False
        try:
            turn = prepare_turn(handle, self.loaded, self.memory, rendered)
        except RequestError as exc:
            handle.fail(str(exc), "request")
            return False
        sampling = turn.request.sampling
        sampler = request_sampler(sampling)
        if isinstance(sampler, SeededSampler):  # the request's own: shared ones sample the batch in one call
            sampler = guarded(sampler, turn, _any_token)
        try:
            (uid,) = self.generator.insert(
                [turn.new_tokens],
                max_tokens=[turn.max_tokens],
                caches=[turn.cache],
                samplers=[sampler],
                logits_processors=[[guarded(processor, turn, _unchanged) for processor in turn.processors]],
                stop_sequences=[StopSequences([] if sampling.ignore_eos else [[eos] for eos in self.eos_ids])],
            )
        except BaseException:
            turn.keep(self.memory, None)  # the session's place is given up; admit reports the failure
            raise
        turn.cache = None  # the generator owns it until the turn ends
        self.active[uid] = _Sequence(turn, uid)
        turn.announce(self.loaded)
        return True

    # -- one step --------------------------------------------------------------------------------
    def step(self) -> None:
        """Cancel what was cancelled, then one decode token for every running sequence (and one prefill chunk)."""
        for sequence in [s for s in self.active.values() if s.turn.handle.cancelled]:
            self._finish_early(sequence, "cancelled")
        if not self.active:
            return
        # The prompts being prefilled share one chunk of tokens per step (a token budget), so however
        # many arrive together, a step (the others' next token, a newcomer's start) takes about as long
        # as one chunk.
        prefilling = sum(1 for s in self.active.values() if s.turn.prefilling)
        self.generator.prefill_step_size = max(MIN_PREFILL_CHUNK, self.prefill_step_size // max(prefilling, 1))
        began = time.perf_counter()
        prompt_responses, generation_responses = self.generator.next()
        computed = time.perf_counter()
        for sequence in [s for s in self.active.values() if s.turn.failure is not None]:
            self._fail_one(sequence)
        for response in prompt_responses:
            sequence = self.active.get(response.uid)
            if sequence is not None:
                sequence.turn.progress(*response.progress)
                if response.end_of_segment and not response.end_of_prompt:
                    self._checkpoint(sequence)  # all but the last prompt token, which mlx-lm reads alone
        for response in generation_responses:
            sequence = self.active.get(response.uid)
            if sequence is not None:
                self._on_token(sequence, response)
        if log.isEnabledFor(logging.DEBUG):  # where a step's time goes (serve --log-level debug)
            log.debug(
                "step: %d running, %d prefilling, %d tokens; next %.1f ms, after %.1f ms",
                len(self.active),
                prefilling,
                len(generation_responses),
                (computed - began) * 1e3,
                (time.perf_counter() - computed) * 1e3,
            )

    def _on_token(self, sequence: _Sequence, response) -> None:
        if sequence.turn.prefilling and sequence.shared_prefix:
            self._share_prefix(sequence)
        if sequence.turn.prefilling and not sequence.checkpointed:
            self._checkpoint(sequence, response.token)
        ended = sequence.turn.add_token(response.token, response.finish_reason)
        if ended is None:
            return
        if response.finish_reason is None:  # a stop string ended it: the generator still runs it
            self._finish_early(sequence, ended)
        else:
            self._finish(sequence, ended, response.prompt_cache)

    def _checkpoint(self, sequence: _Sequence, first_token: int | None = None) -> None:
        """The sequence's prompt is read (with its first token, where given, on a path that has fed it
        already): the KV memory keeps its sliding windows there, for later prompts that differ after it."""
        sequence.checkpointed = True
        turn = sequence.turn
        extract = getattr(self.generator, "extract_layers", None)  # mlx-lm's own generator has none
        layers = self.memory.checkpoint_layers(len(turn.prompt), turn.max_tokens) if self.memory else []
        windows = extract(sequence.uid, layers) if extract is not None and layers else None
        if windows:
            tokens = turn.prompt if first_token is None else [*turn.prompt, first_token]
            by_layer = dict(zip(layers, windows, strict=True))
            self.memory.checkpoint(turn.session_id, tokens, by_layer, turn.request.tenant)

    def _finish_early(self, sequence: _Sequence, reason: str) -> None:
        """Take a sequence out of the running batch (cancelled, or a stop string matched)."""
        extracted = self.generator.remove([sequence.uid], return_prompt_caches=True)
        self._finish(sequence, reason, extracted.get(sequence.uid, (None, None))[0])

    def _finish(self, sequence: _Sequence, reason: str, cache: list | None) -> None:
        del self.active[sequence.uid]
        sequence.turn.finish(reason)
        sequence.turn.keep(self.memory, cache)

    def _fail_one(self, sequence: _Sequence) -> None:
        """The sequence's own sampling failed (a grammar, its sampler): it alone leaves the batch, with its
        error; its token of this step, sampled without it, is dropped."""
        failure = sequence.turn.failure
        log.warning("%s failed in its sampling step: %s", sequence.turn.request_id, failure)
        del self.active[sequence.uid]
        self.generator.remove([sequence.uid])
        repair_random_state()
        sequence.turn.keep(self.memory, None)
        kind = "request" if isinstance(failure, RequestError) else "internal"
        sequence.turn.handle.fail(f"generation failed: {failure}", kind)

    def fail_all(self, message: str) -> None:
        """A step failed: every running sequence fails (its cache state is unknown) and the batch restarts."""
        repair_random_state()
        for sequence in list(self.active.values()):
            del self.active[sequence.uid]
            sequence.turn.handle.fail(message, "internal")
            if self.memory is not None:
                self.memory.abandon(sequence.turn.session_id, sequence.turn.request.tenant)
        self.generator.close()
        self.generator = self._new_generator()


def _unchanged(tokens, logits):
    return logits


def _any_token(logprobs):
    import mlx.core as mx

    return mx.zeros((logprobs.shape[0],), dtype=mx.uint32)
