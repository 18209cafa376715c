"""One turn of generation on the engine thread, with mlx-lm's own sampler, caches and detokenizer.

Stop sequences are matched on decoded text with mlx-lm's TextStateMachine, so a stop string that
spans tokens is caught and never returned.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

from engine.errors import RequestError
from engine.events import (
    CacheReport,
    PrefillProgress,
    Timing,
    TurnChunk,
    TurnEvent,
    TurnFinished,
    TurnStarted,
    Usage,
)
from engine.loader import LoadedModel
from engine.requests import GenerationRequest
from engine.sampling import request_sampler


def render_prompt(loaded: LoadedModel, request: GenerationRequest) -> list[int]:
    """Token ids of the chat-templated conversation, ending with the assistant's turn opener (or, when the
    last message is the assistant's, with its text, to be continued)."""
    from engine.tools.formats import tool_format
    from engine.tools.render import template_inputs

    tokenizer = loaded.tokenizer
    fmt = tool_format(tokenizer, constrained=request.constrained)
    messages, tools = template_inputs(request, fmt)
    # A conversation that ends with the assistant's words is continued from them (answer prefill).
    continues = messages[-1]["role"] == "assistant"
    if tokenizer.chat_template:
        try:
            text = tokenizer.apply_chat_template(
                messages,
                **({"tools": tools} if tools else {}),
                add_generation_prompt=not continues,
                continue_final_message=continues,
                tokenize=False,
            )
        except Exception as exc:  # jinja raises TemplateError / its own exceptions from raise_exception
            raise RequestError(f"the model's chat template rejected the conversation: {exc}") from None
    else:
        text = "\n\n".join(m["content"] for m in messages) + "\n\n"
    if loaded.prompt_encoder is not None:
        return loaded.prompt_encoder.encode(text)
    return tokenizer.encode(text, add_special_tokens=False)


def check_context(prompt_tokens: int, context_length: int) -> None:
    if prompt_tokens >= context_length:
        raise RequestError(f"prompt is too long: {prompt_tokens} tokens > {context_length - 1} maximum")


@dataclass
class _Turn:
    """One request on its way through prefill and decode."""

    loaded: LoadedModel
    request: GenerationRequest
    prompt: list[int]
    cache: list  # mlx-lm caches already holding `reused` tokens of the prompt
    report: CacheReport
    max_tokens: int
    cancelled: threading.Event
    prefill_step_size: int
    stream: object | None
    started: float
    clock: Callable[[], float]
    kv_bits: int | None = None
    kv_group_size: int = 64
    emit: Callable[[TurnEvent], None] | None = None


def run_turn(
    loaded: LoadedModel,
    request: GenerationRequest,
    cancelled: threading.Event,
    prefill_step_size: int,
    stream=None,
    memory=None,
    clock: Callable[[], float] = time.perf_counter,
    kv_bits: int | None = None,
    kv_group_size: int = 64,
    emit: Callable[[TurnEvent], None] | None = None,
) -> Iterator[TurnEvent]:
    """Yield events for one request; the last one is TurnFinished (RequestError is raised instead).

    With `memory` (a KVMemory), the longest cached prefix of the prompt is restored and only the rest
    is prefilled; the turn's cache is handed back to it after the last event. With `emit`,
    PrefillProgress events are sent through it while the prompt is prefilled.
    """
    from mlx_lm.models.cache import make_prompt_cache

    started = clock()
    prompt = render_prompt(loaded, request)
    check_context(len(prompt), loaded.info.context_length)
    if memory is not None:
        restored = memory.acquire(request.session_id, prompt)
        cache, report = restored.cache, CacheReport(restored.source, restored.reused_tokens, restored.restore_s)
    else:
        cache, report = make_prompt_cache(loaded.model), CacheReport()
    turn = _Turn(
        loaded=loaded,
        request=request,
        prompt=prompt,
        cache=cache,
        report=report,
        max_tokens=min(request.max_tokens, loaded.info.context_length - len(prompt)),
        cancelled=cancelled,
        prefill_step_size=prefill_step_size,
        stream=stream,
        started=started,
        clock=clock,
        kv_bits=kv_bits,
        kv_group_size=kv_group_size,
        emit=emit,
    )
    try:
        generated_ids = yield from _generate(turn)
    except BaseException:
        if memory is not None:
            memory.abandon(request.session_id)
        raise
    if memory is not None:
        # After the last event: the caller has its answer before the cache is kept.
        memory.release(request.session_id, prompt + generated_ids, cache)


def _generate(turn: _Turn) -> Generator[TurnEvent, None, list[int]]:
    """Prefill what is not cached, decode, and return the generated token ids."""
    import mlx.core as mx
    from mlx_lm.generate import TextStateMachine, stream_generate

    request, loaded, reused = turn.request, turn.loaded, turn.report.reused_tokens
    logits_processors = turn_processors(loaded, request) or None  # a bad schema fails before the turn starts
    yield TurnStarted(request.request_id, len(turn.prompt), turn.report)

    sampler = request_sampler(request.sampling)
    stops = TextStateMachine({"normal": [(stop, None) for stop in request.stop]} if request.stop else None)
    stop_state = stops.make_state()

    progress: list[PrefillProgress] = []

    def on_prefill(done: int, total: int) -> None:
        # Live when the caller gave a channel (the engine's event queue): a long prefill shows progress.
        event = PrefillProgress(request.request_id, reused + done, reused + total)
        if turn.emit is not None:
            turn.emit(event)
        else:
            progress.append(event)

    pieces: list[str] = []
    raw_text = ""  # everything decoded, stop text included: to name the stop that matched
    finish_reason, stop_sequence = "length", None
    first_token_at = None
    generated = 0
    response = None
    generated_ids: list[int] = []
    responses = stream_generate(
        loaded.model,
        loaded.tokenizer,
        turn.prompt[reused:],
        max_tokens=turn.max_tokens,
        sampler=sampler,
        logits_processors=logits_processors,
        prompt_cache=turn.cache,
        prefill_step_size=turn.prefill_step_size,
        prompt_progress_callback=on_prefill,
        **({"stream": turn.stream} if turn.stream is not None else {}),
        # Quantize from the first token, so a restored QuantizedKVCache and a cold one agree.
        **(
            {"kv_bits": turn.kv_bits, "kv_group_size": turn.kv_group_size, "quantized_kv_start": 0}
            if turn.kv_bits
            else {}
        ),
    )
    try:
        for response in responses:
            yield from progress
            progress.clear()
            if first_token_at is None:
                first_token_at = turn.clock()
            generated = response.generation_tokens
            generated_ids.append(response.token)
            segment = without_cut_character(response.text, response.finish_reason)
            raw_text += segment
            stop_state, text, state_name = stops.step(stop_state, segment)
            if state_name is None:
                finish_reason, stop_sequence = "stop_sequence", _matched_stop(request.stop, raw_text)
                if text:
                    pieces.append(text)
                    yield TurnChunk(request.request_id, text)
                break
            if response.finish_reason is not None:
                if response.finish_reason == "length":
                    stop_state, rest, _ = stops.flush(stop_state)
                    text += rest
                finish_reason = response.finish_reason
            if text:
                pieces.append(text)
                yield TurnChunk(request.request_id, text)
            if turn.cancelled.is_set():
                finish_reason = "cancelled"
                break
    finally:
        # Close the generator here, on the engine thread, and wait for its queued work: left to the
        # garbage collector it may be finalized on another thread while MLX still runs it.
        responses.close()
        mx.synchronize()

    finished = turn.clock()
    if response is not None and response.finish_reason == "stop":
        generated -= 1  # the end-of-turn token is not part of the answer
    first = first_token_at or finished
    decode_s = finished - first
    yield TurnFinished(
        request_id=request.request_id,
        text="".join(pieces),
        finish_reason=finish_reason,
        usage=Usage(prompt_tokens=len(turn.prompt), completion_tokens=max(generated, 0), cached_tokens=reused),
        cache=turn.report,
        timing=Timing(
            ttft_s=first - turn.started,
            prefill_tokens_per_s=(response.prompt_tps if response is not None else 0.0),
            decode_tokens_per_s=(max(generated - 1, 0) / decode_s if decode_s > 0 else 0.0),
            total_s=finished - turn.started,
        ),
        stop_sequence=stop_sequence,
        prompt_token_ids=turn.prompt,
    )
    return generated_ids


def turn_processors(loaded: LoadedModel, request: GenerationRequest) -> list:
    """Logits processors for a turn: an end-of-turn ban, and the grammar of a constrained turn."""
    from engine.tools.grammar import constraint_processor

    processors = [_ban_tokens(loaded.tokenizer.eos_token_ids)] if request.sampling.ignore_eos else []
    constraint = constraint_processor(loaded.tokenizer, request)
    if constraint is not None:
        processors.append(constraint)
    return processors


def _ban_tokens(token_ids):
    import mlx.core as mx

    banned = mx.array(sorted(token_ids))

    def processor(tokens, logits):
        logits[:, banned] = -float("inf")
        return logits

    return processor


def without_cut_character(segment: str, finish_reason: str | None) -> str:
    """A turn's last text segment without the character `max_tokens` cut in two: the detokenizer
    flushes the bytes it holds back for an unfinished character as U+FFFD."""
    return segment.rstrip("\ufffd") if finish_reason == "length" else segment


def _matched_stop(stops: list[str], text: str) -> str | None:
    found = [(text.find(stop), stop) for stop in stops if stop in text]
    return min(found)[1] if found else None
