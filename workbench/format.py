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
        "usage": finished.usage.to_json(),
        "cache": finished.cache.to_json(),
        **(
            {"tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in finished.tool_calls]}
            if finished.tool_calls
            else {}
        ),
        "timing": finished.timing.to_json(),
        "sampling": finished.sampling.values() if finished.sampling is not None else None,
    }
