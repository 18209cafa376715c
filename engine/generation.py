"""The lone path: one turn at a time through mlx-lm's `generate_step`, for what the batch scheduler
cannot run (mlx-lm's QuantizedKVCache, SEMANTIC_KV_BITS, cannot be merged into a batch) and for a
batch size of 1. What the caller sees is engine/turn.py's, as on the batched path."""

from __future__ import annotations

import logging

from engine.backend import prefill_step_size
from engine.errors import RequestError
from engine.handle import TurnHandle
from engine.loader import LoadedModel
from engine.sampling import repair_random_state, request_sampler
from engine.settings import Settings
from engine.turn import Turn, prepare_turn

log = logging.getLogger(__name__)


def serve_alone(handle: TurnHandle, loaded: LoadedModel, memory, stream, settings: Settings) -> None:
    """Run one request to its end on the engine thread; every outcome reaches the handle."""
    if handle.cancelled:  # cancelled while it waited: never started
        handle.end_unstarted()
        return
    try:
        turn = prepare_turn(handle, loaded, memory)
    except RequestError as exc:
        handle.fail(str(exc), "request")
        return
    except Exception as exc:  # noqa: BLE001 - report, keep the engine thread alive for others
        log.exception("starting %s failed", handle.request_id)
        handle.fail(f"generation failed: {exc}", "internal")
        return
    turn.announce(loaded)
    try:
        reason = _generate(turn, loaded, stream, settings)
    except Exception as exc:  # noqa: BLE001 - report, keep the engine thread alive for others
        log.exception("generation failed for %s", handle.request_id)
        repair_random_state()
        if memory is not None:
            memory.abandon(turn.session_id, turn.request.tenant)
        handle.fail(f"generation failed: {exc}", "internal")
        return
    turn.finish(reason)
    turn.keep(memory, turn.cache)


def _generate(turn: Turn, loaded: LoadedModel, stream, settings: Settings) -> str:
    """Prefill what is not cached, then decode until the turn ends; returns its finish reason."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step, wired_limit

    eos_ids = loaded.tokenizer.eos_token_ids
    tokens = generate_step(
        mx.array(turn.new_tokens),
        loaded.model,
        stream,
        max_tokens=turn.max_tokens,
        sampler=request_sampler(turn.request.sampling),
        logits_processors=turn.processors or None,
        prompt_cache=turn.cache,
        prefill_step_size=prefill_step_size(settings),
        prompt_progress_callback=turn.progress,
        # Quantized from the first token, so a restored QuantizedKVCache and a cold one agree.
        **(
            {"kv_bits": settings.kv_bits, "kv_group_size": settings.kv_group_size, "quantized_kv_start": 0}
            if settings.kv_bits
            else {}
        ),
    )
    reason = "length"
    try:
        with wired_limit(loaded.model, [stream]):
            for count, (token, _) in enumerate(tokens, start=1):
                token = int(token)
                ending = "stop" if token in eos_ids else "length" if count >= turn.max_tokens else None
                ended = turn.add_token(token, ending)
                if ended is not None:
                    return ended
                if turn.handle.cancelled:
                    return "cancelled"
    finally:
        # Closed here, on the engine thread, and its queued work waited for: left to the garbage
        # collector the generator may be finalized on another thread while MLX still runs it.
        tokens.close()
        mx.synchronize()
    return reason
