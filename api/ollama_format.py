"""Ollama's wire format: its error body, its timestamps, and the counts and durations (nanoseconds) of the
last line of an answer.

Error:     {"error": M}, for every path under /api/ (the status says the kind)
Last line: {"done": true, "done_reason", "total_duration", "load_duration", "prompt_eval_count",
            "prompt_eval_duration", "eval_count", "eval_duration", "prompt_cache_tokens"}
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from api.errors import ApiError
from engine.events import TurnFinished

PATH_PREFIX = "/api/"
# Ollama ends every answer with "stop" or "length"; a tool call, a stop string and a cancel are a "stop".
DONE_REASON = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool_calls": "stop",
    "cancelled": "stop",
}


def is_ollama(path: str) -> bool:
    return path.startswith(PATH_PREFIX)


def error_body(error: ApiError) -> dict:
    return {"error": error.message}


def timestamp(moment: float | None = None) -> str:
    """RFC 3339 in UTC, as Ollama writes `created_at` and `modified_at`."""
    when = datetime.fromtimestamp(time.time() if moment is None else moment, UTC)
    return when.isoformat().replace("+00:00", "Z")


def nanoseconds(seconds: float) -> int:
    return max(int(seconds * 1e9), 0)


def done_fields(finished: TurnFinished, arrived: float) -> dict:
    """The last line's figures. `arrived` is the request's perf_counter time: total_duration counts the wait
    for a batch slot too. load_duration is the time spent reading the conversation's KV cache from disk (the
    model itself stays loaded); prompt_eval_count counts the whole prompt, prompt_cache_tokens (not
    Ollama's) the part of it read from the cache instead of computed."""
    timing = finished.timing
    restore_s = finished.cache.restore_s
    return {
        "done": True,
        "done_reason": DONE_REASON[finished.finish_reason],
        "total_duration": nanoseconds(time.perf_counter() - arrived),
        "load_duration": nanoseconds(restore_s),
        "prompt_eval_count": finished.usage.prompt_tokens,
        "prompt_eval_duration": nanoseconds(timing.ttft_s - restore_s),
        "eval_count": finished.usage.completion_tokens,
        "eval_duration": nanoseconds(timing.total_s - timing.ttft_s),
        "prompt_cache_tokens": finished.usage.cached_tokens,
    }
