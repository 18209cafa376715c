"""Usage and stop reasons in each API's vocabulary, from the engine's TurnFinished."""

from __future__ import annotations

from engine.events import TurnFinished, Usage

ANTHROPIC_STOP = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "cancelled": "end_turn",
}
OPENAI_FINISH = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "cancelled": "stop",
}


def anthropic_input_usage(prompt_tokens: int, cached_tokens: int, kv_enabled: bool) -> dict:
    """`input_tokens` counts only what was not read from cache; new prompt tokens are stored for reuse."""
    fresh = prompt_tokens - cached_tokens
    return {
        "input_tokens": fresh,
        "cache_creation_input_tokens": fresh if kv_enabled else 0,
        "cache_read_input_tokens": cached_tokens,
    }


def anthropic_usage(usage: Usage, kv_enabled: bool) -> dict:
    return {
        **anthropic_input_usage(usage.prompt_tokens, usage.cached_tokens, kv_enabled),
        "output_tokens": usage.completion_tokens,
    }


def openai_usage(usage: Usage) -> dict:
    """`prompt_tokens` includes cached tokens; `prompt_tokens_details.cached_tokens` counts them."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def turn_summary(finished: TurnFinished) -> dict:
    """The agent API's view of a finished turn: usage, where the cache came from, timings."""
    return {
        "finish_reason": finished.finish_reason,
        "stop_sequence": finished.stop_sequence,
        "usage": finished.usage.to_json(),
        "cache": finished.cache.to_json(),
        "timing": finished.timing.to_json(),
        # The values the turn sampled with (those the request left unset are the model's defaults)
        "sampling": finished.sampling.values() if finished.sampling is not None else None,
    }
