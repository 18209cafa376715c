"""One turn's bookkeeping, whichever path generates it (the batch scheduler or the lone path).

    prepare_turn   render the prompt (the turn's clock starts here) → check the context → the
                   sampling settings (unset ones from the model's defaults) → logits processors →
                   the KV memory's longest cached prefix (cache + CacheReport, with why it missed)
    announce       TurnStarted
    progress       PrefillProgress, counting the reused tokens as done
    add_token ×N   detokenize, hold back text that may start a stop string, emit TurnChunk; says
                   when the turn ends (end-of-turn token, max_tokens, a stop string)
    finish         TurnFinished (usage and timings), then the cache goes back to the KV memory

The generating path owns the MLX side (the cache while it runs, sampling, forward passes); a Turn
never touches MLX arrays, so both paths share every rule about what the caller sees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from engine.events import CacheReport, PrefillProgress, Timing, TurnChunk, TurnFinished, TurnStarted, Usage
from engine.handle import TurnHandle
from engine.kv.miss import REASONS
from engine.loader import LoadedModel
from engine.prompt import check_context, render_prompt
from engine.prompt_position import message_at
from engine.requests import GenerationRequest
from engine.sampling import check_sampling, logits_processors

clock = time.perf_counter


@dataclass
class Turn:
    handle: TurnHandle
    request: GenerationRequest  # the handle's, its sampling settings all set (the model's defaults filled in)
    prompt: list[int]
    report: CacheReport
    cache: list  # mlx-lm caches holding the report's reused tokens; the generating path owns them while it runs
    processors: list  # logits processors (engine.sampling.logits_processors)
    max_tokens: int  # the request's, clamped to the context left after the prompt
    started_at: float  # when rendering the prompt began: time to first token counts from there
    detokenizer: object  # mlx-lm's streaming detokenizer, this turn's own
    stops: object  # mlx-lm TextStateMachine over the request's stop strings
    stop_state: object = None
    generated_ids: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    raw_text: str = ""  # everything decoded, stop text included: to name the stop string that matched
    first_token_at: float | None = None
    stop_sequence: str | None = None
    ended_by_token: bool = False  # the last generated token is the end-of-turn token (not part of the answer)
    failure: Exception | None = None  # what failed in this turn's own sampling step (see guarded)
    cancelled: bool = False  # stopped by its client: its answer is not part of any transcript

    @property
    def request_id(self) -> str:
        return self.handle.request_id

    @property
    def session_id(self) -> str | None:
        return self.request.session_id

    @property
    def new_tokens(self) -> list[int]:
        """The prompt tokens the KV memory did not have: what the model must read."""
        return self.prompt[self.report.reused_tokens :]

    @property
    def prefilling(self) -> bool:
        """Its prompt is still being read (no token generated yet)."""
        return self.first_token_at is None

    # -- events ----------------------------------------------------------------------------------
    def announce(self, loaded: LoadedModel) -> None:
        self.handle.begin(loaded)
        self.handle.emit(TurnStarted(self.request_id, len(self.prompt), self.report))

    def progress(self, done: int, total: int) -> None:
        """`done` of `total` new prompt tokens read."""
        reused = self.report.reused_tokens
        self.handle.emit(PrefillProgress(self.request_id, reused + done, reused + total))

    def add_token(self, token: int, finish_reason: str | None) -> str | None:
        """Take one generated token; `finish_reason` is "stop" for an end-of-turn token, "length" for the
        last one max_tokens allows, else None. Returns why the turn ends with this token ("stop",
        "length", "stop_sequence") or None."""
        if self.first_token_at is None:
            self.first_token_at = clock()
        self.generated_ids.append(token)
        self.ended_by_token = finish_reason == "stop"
        if not self.ended_by_token:
            self.detokenizer.add_token(token)
        if finish_reason is not None:
            self.detokenizer.finalize()
        segment = without_cut_character(self.detokenizer.last_segment, finish_reason)
        if self._show(segment, final=finish_reason is not None) and not self.ended_by_token:
            self.stop_sequence = matched_stop(self.request.stop, self.raw_text)
            return "stop_sequence"
        return finish_reason

    def _show(self, text: str, final: bool) -> bool:
        """Stream the visible part of `text` (held back while it may start a stop string; all of it when
        `final`). Returns True when a stop string matched: it is never shown."""
        self.raw_text += text
        self.stop_state, visible, state_name = self.stops.step(self.stop_state, text)
        matched = state_name is None
        if final and not matched:
            self.stop_state, rest, _ = self.stops.flush(self.stop_state)
            visible += rest
        if visible:
            self.pieces.append(visible)
            self.handle.emit(TurnChunk(self.request_id, visible))
        return matched

    def finish(self, reason: str) -> None:
        """Emit TurnFinished: `reason` from add_token, or "cancelled"."""
        self.cancelled = reason == "cancelled"
        finished_at = clock()
        generated = len(self.generated_ids) - int(self.ended_by_token)
        first = self.first_token_at or finished_at
        prefill_s = first - self.started_at
        decode_s = finished_at - first
        self.handle.emit(
            TurnFinished(
                request_id=self.request_id,
                text="".join(self.pieces),
                finish_reason=reason,
                usage=Usage(len(self.prompt), max(generated, 0), self.report.reused_tokens),
                cache=self.report,
                timing=Timing(
                    ttft_s=prefill_s,
                    prefill_tokens_per_s=len(self.new_tokens) / prefill_s if prefill_s > 0 else 0.0,
                    decode_tokens_per_s=max(generated - 1, 0) / decode_s if decode_s > 0 else 0.0,
                    total_s=finished_at - self.started_at,
                ),
                stop_sequence=self.stop_sequence,
                prompt_token_ids=self.prompt,
                sampling=self.request.sampling,
            )
        )

    def keep(self, memory, cache: list | None) -> None:
        """After the last event (the caller has its answer first): hand the turn's cache to the KV memory,
        or give the session's place up when the cache is lost (None)."""
        if memory is None:
            return
        memory.take_hints(self.session_id, self.request.keep_s, self.request.retention_s)
        tokens = self.prompt + self.generated_ids
        if self.cancelled and cache is not None:
            # A stopped turn is in no transcript: the session keeps what it had before it, not its blocks
            tokens = self.prompt[: self.report.reused_tokens]
            cache = _cut_back(cache, len(tokens))
        if cache is None:
            memory.abandon(self.session_id, self.request.tenant)
            return
        if self.first_token_at is not None and not self.cancelled:
            prefill_s = self.first_token_at - self.started_at - self.report.restore_s
            memory.observe_prefill(len(self.new_tokens), len(self.prompt), prefill_s)
        memory.release(self.session_id, tokens, cache, tenant=self.request.tenant)


def _cut_back(cache: list, tokens: int) -> list | None:
    """`cache` holding its first `tokens` tokens only; None when there are none, or when a layer cannot
    be cut back (a sliding window that has wrapped)."""
    if tokens == 0 or not all(layer.is_trimmable() for layer in cache):
        return None
    for layer in cache:
        layer.trim(layer.offset - tokens)
    return cache


def guarded(function, turn: Turn, fallback):
    """`function` (a logits processor or a request's own sampler) such that an exception it raises is
    kept in `turn.failure` instead of failing the step of every sequence in its batch; `fallback(*args)`
    stands in for its result."""

    def run(*args):
        if turn.failure is None:
            try:
                return function(*args)
            except Exception as exc:  # noqa: BLE001 - it belongs to this turn alone
                turn.failure = exc
        return fallback(*args)

    return run


def prepare_turn(
    handle: TurnHandle, loaded: LoadedModel, memory, rendered: tuple[float, list[int]] | None = None
) -> Turn:
    """A turn for `handle`'s request with its cache acquired from `memory` (a KVMemory, or None for a
    fresh cache). `rendered` is (when rendering began, prompt tokens) if the prompt was rendered while
    the request waited. Raises RequestError for a request the model cannot take."""
    from mlx_lm.generate import TextStateMachine
    from mlx_lm.models.cache import make_prompt_cache

    request = handle.request
    started_at, prompt = rendered if rendered is not None else (clock(), render_prompt(loaded, request))
    context_length = loaded.info.context_length
    check_context(len(prompt), context_length)
    request = request.model_copy(update={"sampling": request.sampling.over(loaded.info.sampling_defaults)})
    check_sampling(request.sampling, loaded.info.vocab_size)
    processors = logits_processors(loaded, request)  # before the cache is taken: this may raise
    if memory is not None:
        restored = memory.acquire(request.session_id, prompt, request.tenant)
        cache, report = (
            restored.cache,
            CacheReport(
                restored.source,
                restored.reused_tokens,
                restored.restore_s,
                restored.decision,
                restored.estimate_s,
                miss_reason(loaded, request, restored),
                restored.miss.kind if restored.miss is not None else None,
            ),
        )
    else:
        cache, report = make_prompt_cache(loaded.model), CacheReport()
    stops = TextStateMachine({"normal": [(stop, None) for stop in request.stop]} if request.stop else None)
    return Turn(
        handle=handle,
        request=request,
        prompt=prompt,
        report=report,
        cache=cache,
        processors=processors,
        max_tokens=min(request.max_tokens, context_length - len(prompt)),
        started_at=started_at,
        detokenizer=loaded.tokenizer.detokenizer,
        stops=stops,
        stop_state=stops.make_state(),
    )


def miss_reason(loaded: LoadedModel, request: GenerationRequest, restored) -> str | None:
    """The words for a restored cache's miss (engine/kv/miss.py); a divergence is placed in the message
    that holds its first differing token."""
    miss = restored.miss
    if miss is None:
        return None
    if miss.kind == "new":
        if request.session_id is None:
            return "no cached prefix"
        return "new agent: only a shared prefix was cached" if restored.reused_tokens else REASONS["new"]
    if miss.kind != "diverged":
        return REASONS[miss.kind]
    where = message_at(loaded, request, miss.token)
    if where is not None and where.role == "system":
        return f"system prompt changed at token {miss.token}"
    if where is not None and where.user_turns:
        return f"history edited at turn {where.user_turns} (token {miss.token})"
    return f"prompt changed at token {miss.token}"


def without_cut_character(segment: str, finish_reason: str | None) -> str:
    """A turn's last text segment without the character `max_tokens` cut in two: the detokenizer
    flushes the bytes it holds back for an unfinished character as U+FFFD."""
    return segment.rstrip("\ufffd") if finish_reason == "length" else segment


def matched_stop(stops: list[str], text: str) -> str | None:
    found = [(text.find(stop), stop) for stop in stops if stop in text]
    return min(found)[1] if found else None
