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
from dataclasses import dataclass, field

from engine.errors import RequestError
from engine.events import CacheReport, PrefillProgress, Timing, TurnChunk, TurnFailed, TurnFinished, TurnStarted, Usage
from engine.generation import _matched_stop, check_context, render_prompt, turn_processors, without_cut_character
from engine.kv.blocks import common_prefix_length
from engine.loader import LoadedModel
from engine.sampling import request_sampler

log = logging.getLogger(__name__)


def can_batch(model, kv_bits: int | None) -> bool:
    """Plain and sliding-window KV caches batch (BatchKVCache, BatchRotatingKVCache); quantized caches
    take the one-at-a-time path (mlx-lm's QuantizedKVCache cannot be merged)."""
    from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

    return kv_bits is None and all(type(cache) in (KVCache, RotatingKVCache) for cache in make_prompt_cache(model))


@dataclass
class _Sequence:
    handle: object  # TurnHandle
    prompt: list[int]
    report: CacheReport
    admitted: float
    detokenizer: object
    stops: object  # TextStateMachine
    stop_state: object
    uid: int = -1
    generated_ids: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    raw_text: str = ""
    first_token_at: float | None = None
    # Tokens of this prompt that waiting requests share: offered to them once it is prefilled
    shared_prefix: int = 0

    @property
    def prefilling(self) -> bool:
        """Its prompt is still being read (no token generated yet)."""
        return self.first_token_at is None

    @property
    def request(self):
        return self.handle.request

    @property
    def session_key(self):
        return self.request.session_id


MIN_PREFILL_CHUNK = 64  # tokens per prompt per step, however many prompts share a step


class BatchScheduler:
    def __init__(self, loaded: LoadedModel, memory, max_batch_size: int, prefill_step_size: int, stream):
        from engine.batch_generator import LeanBatchGenerator

        self.loaded = loaded
        self.memory = memory
        self.max_batch_size = max_batch_size
        self.prefill_step_size = prefill_step_size
        self.waiting: deque = deque()  # TurnHandles in arrival order
        self.active: dict[int, _Sequence] = {}  # by BatchGenerator uid
        self._new_generator = lambda: LeanBatchGenerator(
            loaded.model,
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
        running_sessions = {s.session_key for s in self.active.values() if s.session_key is not None}
        skipped = deque()
        while self.waiting and len(self.active) < self.max_batch_size:
            handle = self.waiting.popleft()
            session_id = handle.request.session_id
            if session_id is not None and session_id in running_sessions:
                skipped.append(handle)  # waits for its session's running turn
                continue
            try:
                if not handle._cancelled.is_set() and self._follows_a_prefill(handle):
                    skipped.append(handle)  # waits for a prefix another request is computing right now
                    continue
                started = self._start(handle)
            except Exception as exc:  # noqa: BLE001 - fail this request, keep serving the others
                log.exception("starting %s failed", handle.request_id)
                self._prompts.pop(handle.request_id, None)
                handle._put(TurnFailed(handle.request_id, f"generation failed: {exc}", "internal"))
                started = False
            if started and session_id is not None:
                running_sessions.add(session_id)
        skipped.extend(self.waiting)
        self.waiting = skipped

    def _prompt(self, handle) -> list[int]:
        """The request's prompt tokens, rendered once (RequestError for a bad conversation)."""
        rendered = self._prompts.get(handle.request_id)
        if rendered is None:
            began = time.perf_counter()
            rendered = self._prompts[handle.request_id] = (began, render_prompt(self.loaded, handle.request))
        return rendered[1]

    def _follows_a_prefill(self, handle) -> bool:
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
        leader, common = None, 0
        for sequence in self.active.values():
            if sequence.prefilling:
                length = common_prefix_length(prompt[:-1], sequence.prompt[:-1])
                if length > common:
                    leader, common = sequence, length
        if leader is None or common < block or common < self.memory.cached_prefix_length(prompt) + block:
            return False
        leader.shared_prefix = max(leader.shared_prefix, common)
        return True

    def _share_prefix(self, sequence: _Sequence) -> None:
        """The sequence's prompt is prefilled: offer the part that waiting requests share."""
        extracted = self.generator.extract_cache([sequence.uid]).get(sequence.uid)
        if extracted is not None:
            self.memory.share(sequence.prompt[: sequence.shared_prefix], extracted[0])

    def _start(self, handle) -> bool:
        from mlx_lm.generate import StopSequences, TextStateMachine
        from mlx_lm.models.cache import make_prompt_cache

        request, put = handle.request, handle._put
        rendered = self._prompts.pop(handle.request_id, None)  # the request leaves the waiting queue here
        if handle._cancelled.is_set():
            put(TurnFailed(handle.request_id, "the request was cancelled before it started", "cancelled"))
            return False
        admitted = rendered[0] if rendered is not None else time.perf_counter()
        try:
            prompt = rendered[1] if rendered is not None else render_prompt(self.loaded, request)
            check_context(len(prompt), self.loaded.info.context_length)
            processors = turn_processors(self.loaded, request)
        except RequestError as exc:
            put(TurnFailed(handle.request_id, str(exc), "request"))
            return False
        if self.memory is not None:
            restored = self.memory.acquire(request.session_id, prompt)
            cache, report = restored.cache, CacheReport(restored.source, restored.reused_tokens, restored.restore_s)
        else:
            cache, report = make_prompt_cache(self.loaded.model), CacheReport()
        params = request.sampling
        stops = TextStateMachine({"normal": [(stop, None) for stop in request.stop]} if request.stop else None)
        detokenizer = self.loaded.tokenizer.detokenizer
        detokenizer.reset()
        sequence = _Sequence(handle, prompt, report, admitted, detokenizer, stops, stops.make_state())
        max_tokens = min(request.max_tokens, self.loaded.info.context_length - len(prompt))
        (sequence.uid,) = self.generator.insert(
            [prompt[report.reused_tokens :]],
            max_tokens=[max_tokens],
            caches=[cache],
            samplers=[request_sampler(params)],
            logits_processors=[processors],
            stop_sequences=[StopSequences([] if params.ignore_eos else [[eos] for eos in self.eos_ids])],
        )
        self.active[sequence.uid] = sequence
        handle.begin(self.loaded)
        put(TurnStarted(handle.request_id, len(prompt), report))
        return True

    # -- one step --------------------------------------------------------------------------------
    def step(self) -> None:
        """Cancel what was cancelled, then one decode token for every running sequence (and one prefill chunk)."""
        for sequence in [s for s in self.active.values() if s.handle._cancelled.is_set()]:
            self._finish_early(sequence, "cancelled")
        if not self.active:
            return
        # The prompts being prefilled share one chunk of tokens per step (a token budget), so however
        # many arrive together, a step (the others' next token, a newcomer's start) takes about as long
        # as one chunk.
        prefilling = sum(1 for s in self.active.values() if s.prefilling)
        self.generator.prefill_step_size = max(MIN_PREFILL_CHUNK, self.prefill_step_size // max(prefilling, 1))
        prompt_responses, generation_responses = self.generator.next()
        for response in prompt_responses:
            sequence = self.active.get(response.uid)
            if sequence is not None:
                reused = sequence.report.reused_tokens
                done, total = response.progress
                sequence.handle._put(PrefillProgress(sequence.handle.request_id, reused + done, reused + total))
        for response in generation_responses:
            sequence = self.active.get(response.uid)
            if sequence is not None:
                self._on_token(sequence, response)

    def _on_token(self, sequence: _Sequence, response) -> None:
        if sequence.first_token_at is None:
            sequence.first_token_at = time.perf_counter()
            if sequence.shared_prefix:
                self._share_prefix(sequence)
        sequence.generated_ids.append(response.token)
        end_of_turn = response.finish_reason == "stop"  # an end-of-turn token: not part of the answer
        if not end_of_turn:
            sequence.detokenizer.add_token(response.token)
        finishing = response.finish_reason is not None
        if finishing:
            sequence.detokenizer.finalize()
        segment = without_cut_character(sequence.detokenizer.last_segment, response.finish_reason)
        matched = self._emit(sequence, segment, final=finishing)
        if matched and not end_of_turn:
            stop = _matched_stop(sequence.request.stop, sequence.raw_text)
            if finishing:
                self._finish(sequence, "stop_sequence", response.prompt_cache, stop_sequence=stop)
            else:
                self._finish_early(sequence, "stop_sequence", stop)
        elif finishing:
            counted = len(sequence.generated_ids) - 1 if end_of_turn else None
            self._finish(sequence, response.finish_reason, response.prompt_cache, counted=counted)

    def _emit(self, sequence: _Sequence, text: str, final: bool) -> bool:
        """Stream the visible part of `text` (held back while it may start a stop string; all of it when
        `final`). Returns True when a stop string matched: it is never shown."""
        sequence.raw_text += text
        sequence.stop_state, visible, state_name = sequence.stops.step(sequence.stop_state, text)
        matched = state_name is None
        if final and not matched:
            sequence.stop_state, rest, _ = sequence.stops.flush(sequence.stop_state)
            visible += rest
        if visible:
            sequence.pieces.append(visible)
            sequence.handle._put(TurnChunk(sequence.handle.request_id, visible))
        return matched

    def _finish_early(self, sequence: _Sequence, reason: str, stop_sequence: str | None = None) -> None:
        """Take a sequence out of the running batch (cancelled, or a stop string matched)."""
        extracted = self.generator.remove([sequence.uid], return_prompt_caches=True)
        cache = extracted.get(sequence.uid, (None, None))[0]
        self._finish(sequence, reason, cache, stop_sequence=stop_sequence)

    def _finish(
        self,
        sequence: _Sequence,
        reason: str,
        cache: list | None,
        stop_sequence: str | None = None,
        counted: int | None = None,
    ) -> None:
        del self.active[sequence.uid]
        finished_at = time.perf_counter()
        generated = len(sequence.generated_ids) if counted is None else counted
        first = sequence.first_token_at or finished_at
        prefill_s = first - sequence.admitted
        prefilled = len(sequence.prompt) - sequence.report.reused_tokens
        decode_s = finished_at - first
        sequence.handle._put(
            TurnFinished(
                request_id=sequence.handle.request_id,
                text="".join(sequence.pieces),
                finish_reason=reason,
                usage=Usage(len(sequence.prompt), max(generated, 0), sequence.report.reused_tokens),
                cache=sequence.report,
                timing=Timing(
                    ttft_s=prefill_s,
                    prefill_tokens_per_s=prefilled / prefill_s if prefill_s > 0 else 0.0,
                    decode_tokens_per_s=max(generated - 1, 0) / decode_s if decode_s > 0 else 0.0,
                    total_s=finished_at - sequence.admitted,
                ),
                stop_sequence=stop_sequence,
                prompt_token_ids=sequence.prompt,
            )
        )
        # After the last event: the caller has its answer before the cache is kept.
        if self.memory is not None:
            if cache is None:
                self.memory.abandon(sequence.session_key)
            else:
                self.memory.release(sequence.session_key, sequence.prompt + sequence.generated_ids, cache)

    def fail_all(self, message: str) -> None:
        """A step failed: every running sequence fails (its cache state is unknown) and the batch restarts."""
        for sequence in list(self.active.values()):
            del self.active[sequence.uid]
            sequence.handle._put(TurnFailed(sequence.handle.request_id, message, "internal"))
            if self.memory is not None:
                self.memory.abandon(sequence.session_key)
        self.generator.close()
        self.generator = self._new_generator()
