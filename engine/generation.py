"""One turn of generation on the engine thread, with mlx-lm's own sampler, caches and detokenizer.

Stop sequences are matched on decoded text with mlx-lm's TextStateMachine, so a stop string that
spans tokens is caught and never returned.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

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


def render_prompt(loaded: LoadedModel, request: GenerationRequest) -> list[int]:
    """Token ids of the chat-templated conversation, ending with the assistant's turn opener."""
    tokenizer = loaded.tokenizer
    messages = [message.model_dump() for message in request.messages]
    if tokenizer.chat_template:
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja raises TemplateError / its own exceptions from raise_exception
            raise RequestError(f"the model's chat template rejected the conversation: {exc}") from None
    else:
        text = "\n\n".join(m["content"] for m in messages) + "\n\n"
    return tokenizer.encode(text, add_special_tokens=False)


def check_context(prompt_tokens: int, context_length: int) -> None:
    if prompt_tokens >= context_length:
        raise RequestError(f"prompt is too long: {prompt_tokens} tokens > {context_length - 1} maximum")


def run_turn(
    loaded: LoadedModel,
    request: GenerationRequest,
    cancelled: threading.Event,
    prefill_step_size: int,
    stream=None,
    memory=None,
    clock: Callable[[], float] = time.perf_counter,
) -> Iterator[TurnEvent]:
    """Yield events for one request; the last one is TurnFinished (RequestError is raised instead).

    With `memory` (a KVMemory), the longest cached prefix of the prompt is restored and only the rest
    is prefilled; the turn's cache is handed back to it after the last event.
    """
    from mlx_lm.models.cache import make_prompt_cache

    started = clock()
    prompt = render_prompt(loaded, request)
    check_context(len(prompt), loaded.info.context_length)
    max_tokens = min(request.max_tokens, loaded.info.context_length - len(prompt))
    if memory is not None:
        restored = memory.acquire(request.session_id, prompt)
        prompt_cache, reused, source, restore_s = (
            restored.cache,
            restored.reused_tokens,
            restored.source,
            restored.restore_s,
        )
    else:
        prompt_cache, reused, source, restore_s = make_prompt_cache(loaded.model), 0, "cold", 0.0
    try:
        yield from _generate(
            loaded,
            request,
            prompt,
            prompt_cache,
            reused,
            CacheReport(source, reused, restore_s),
            max_tokens,
            cancelled,
            prefill_step_size,
            stream,
            memory,
            started,
            clock,
        )
    except BaseException:
        if memory is not None:
            memory.abandon(request.session_id)
        raise


def _generate(
    loaded,
    request,
    prompt,
    prompt_cache,
    reused,
    cache_report,
    max_tokens,
    cancelled,
    prefill_step_size,
    stream,
    memory,
    started,
    clock,
) -> Iterator[TurnEvent]:
    import mlx.core as mx
    from mlx_lm.generate import TextStateMachine, stream_generate
    from mlx_lm.sample_utils import make_sampler

    yield TurnStarted(request.request_id, len(prompt), cache_report)

    params = request.sampling
    if params.seed is not None:
        mx.random.seed(params.seed)
    logits_processors = [_ban_tokens(loaded.tokenizer.eos_token_ids)] if params.ignore_eos else None
    sampler = make_sampler(temp=params.temperature, top_p=params.top_p, min_p=params.min_p, top_k=params.top_k)
    stops = TextStateMachine({"normal": [(stop, None) for stop in request.stop]} if request.stop else None)
    stop_state = stops.make_state()

    progress: list[PrefillProgress] = []

    def on_prefill(done: int, total: int) -> None:
        progress.append(PrefillProgress(request.request_id, done, total))

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
        prompt[reused:],
        max_tokens=max_tokens,
        sampler=sampler,
        logits_processors=logits_processors,
        prompt_cache=prompt_cache,
        prefill_step_size=prefill_step_size,
        prompt_progress_callback=on_prefill,
        **({"stream": stream} if stream is not None else {}),
    )
    try:
        for response in responses:
            yield from progress
            progress.clear()
            if first_token_at is None:
                first_token_at = clock()
            generated = response.generation_tokens
            generated_ids.append(response.token)
            raw_text += response.text
            stop_state, text, state_name = stops.step(stop_state, response.text)
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
            if cancelled.is_set():
                finish_reason = "cancelled"
                break
    finally:
        # Close the generator here, on the engine thread, and wait for its queued work: left to the
        # garbage collector it may be finalized on another thread while MLX still runs it.
        responses.close()
        mx.synchronize()

    finished = clock()
    if response is not None and response.finish_reason == "stop":
        generated -= 1  # the end-of-turn token is not part of the answer
    ttft = (first_token_at or finished) - started
    decode_s = finished - (first_token_at or finished)
    timing = Timing(
        ttft_s=ttft,
        prefill_tokens_per_s=(response.prompt_tps if response is not None else 0.0),
        decode_tokens_per_s=(max(generated - 1, 0) / decode_s if decode_s > 0 else 0.0),
        total_s=finished - started,
    )
    yield TurnFinished(
        request_id=request.request_id,
        text="".join(pieces),
        finish_reason=finish_reason,
        usage=Usage(prompt_tokens=len(prompt), completion_tokens=max(generated, 0), cached_tokens=reused),
        cache=cache_report,
        timing=timing,
        stop_sequence=stop_sequence,
        prompt_token_ids=prompt,
    )
    if memory is not None:
        # After the last event: the caller has its answer before the cache is kept.
        memory.release(request.session_id, prompt + generated_ids, prompt_cache)


def _ban_tokens(token_ids):
    import mlx.core as mx

    banned = mx.array(sorted(token_ids))

    def processor(tokens, logits):
        logits[:, banned] = -float("inf")
        return logits

    return processor


def _matched_stop(stops: list[str], text: str) -> str | None:
    found = [(text.find(stop), stop) for stop in stops if stop in text]
    return min(found)[1] if found else None
