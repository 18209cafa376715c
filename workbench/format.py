"""A finished turn as the workbench shows it: a footer line (chat, TUI) and a JSON result (chat --json,
batch). Pure functions, so the CLI and the TUI share them without importing each other."""

from __future__ import annotations

from engine.events import TurnFinished


def turn_footer(finished: TurnFinished) -> str:
    """One line under a reply: where its cache came from, what was prefilled, how fast."""
    usage, timing = finished.usage, finished.timing
    cached = f"{finished.cache.source} cache {usage.cached_tokens} tokens" if usage.cached_tokens else "cold"
    prefilled = usage.prompt_tokens - usage.cached_tokens
    missed = f", {finished.cache.miss_reason}" if finished.cache.miss_reason else ""
    return (
        f"[{cached}, prefilled {prefilled}, first token {timing.ttft_s:.2f}s, {timing.decode_tokens_per_s:.1f} tok/s"
        f"{missed}]"
    )


def json_result(session_id: str, finished: TurnFinished) -> dict:
    return {
        "session": session_id,
        "text": finished.text,
        "finish_reason": finished.finish_reason,
        "usage": {
            "prompt_tokens": finished.usage.prompt_tokens,
            "completion_tokens": finished.usage.completion_tokens,
            "cached_tokens": finished.usage.cached_tokens,
        },
        "cache": {
            "source": finished.cache.source,
            "reused_tokens": finished.cache.reused_tokens,
            "decision": finished.cache.decision,
            "estimate_s": round(finished.cache.estimate_s, 4),
            "miss_reason": finished.cache.miss_reason,
        },
        **(
            {"tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in finished.tool_calls]}
            if finished.tool_calls
            else {}
        ),
        "timing": {
            "ttft_s": round(finished.timing.ttft_s, 4),
            "prefill_tokens_per_s": round(finished.timing.prefill_tokens_per_s, 2),
            "decode_tokens_per_s": round(finished.timing.decode_tokens_per_s, 2),
        },
        "sampling": finished.sampling.values() if finished.sampling is not None else None,
    }
