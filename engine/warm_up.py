"""A model's first turns at load, on backends that build kernels the first time they meet them.

MLX's GPU backends compile kernels (and CUDA's cuDNN plans attention) the first time a shape and an
operation meet, so a fresh process's first turns paid seconds that its later ones did not: on an H100
the first request of a server (31 prompt tokens) waited 17 s, and a resumed turn in a fresh process
took 0.4 s more than the same turn later. Here, before the engine reports ready, two requests run
through the engine's own batch path with no KV memory (nothing is kept or learned): a prompt of
a whole prefill step and more, and a short one beside it (their lengths differ, so the batch has left
padding and masks), one greedy and one sampled, a few tokens each.
"""

from __future__ import annotations

import logging
import time

from engine.handle import TurnHandle
from engine.mlx_lm_ext import AttentionPaths
from engine.requests import ChatMessage, GenerationRequest, SamplingParams

log = logging.getLogger(__name__)

GENERATED_TOKENS = 4
# Past one prefill step, so the step's own shape and a shorter last chunk after it are both met.
EXTRA_PROMPT_TOKENS = 100
FILLER = "Lighthouses guide ships along rocky coasts at night. "


def warm_up(loaded, prefill_step: int, stream, attention: AttentionPaths) -> float:
    """Run the warm-up turns on the engine thread; returns the seconds they took."""
    from engine.events import TurnFailed
    from engine.scheduler import BatchScheduler

    started = time.perf_counter()
    longest = min(prefill_step + EXTRA_PROMPT_TOKENS, loaded.info.context_length - 2 * GENERATED_TOKENS - 64)
    requests = [
        _request(loaded, longest, SamplingParams(temperature=0.0)),
        _request(loaded, min(32, longest), SamplingParams()),
    ]
    handles = [TurnHandle(request) for request in requests]
    scheduler = BatchScheduler(loaded, None, len(handles), prefill_step, stream, attention)
    try:
        scheduler.waiting.extend(handles)
        while scheduler.busy:
            scheduler.admit()
            scheduler.step()
    except Exception:  # noqa: BLE001 - the model serves without it; its first turns pay what it would have
        log.exception("the warm-up failed; serving without it")
        return time.perf_counter() - started
    finally:
        scheduler.close()
    for handle in handles:
        failed = [event for event in handle.events(timeout=0) if isinstance(event, TurnFailed)]
        if failed:
            log.warning("a warm-up turn failed (%s); the first turns will build what it would have", failed[0].message)
    seconds = time.perf_counter() - started
    log.info("warmed up in %.1f s (kernels built for the first turns)", seconds)
    return seconds


def _request(loaded, tokens: int, sampling: SamplingParams) -> GenerationRequest:
    """A one-message request whose prompt is about `tokens` tokens long."""
    per_filler = max(1, len(loaded.tokenizer.encode(FILLER)))
    text = FILLER * max(1, tokens // per_filler)
    return GenerationRequest(
        messages=[ChatMessage(role="user", content=text)],
        max_tokens=GENERATED_TOKENS,
        sampling=sampling.model_copy(update={"ignore_eos": True}),
    )
