"""Plain event objects for one streamed turn, shared by the CLI, TUI, API and metrics.

The engine thread produces them; consumers read them from a TurnHandle. They carry no MLX objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class CacheReport:
    source: str = "cold"  # "cold" | "hot" | "warm"
    reused_tokens: int = 0
    restore_s: float = 0.0


@dataclass(frozen=True)
class Timing:
    ttft_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    total_s: float


@dataclass(frozen=True)
class TurnStarted:
    request_id: str
    prompt_tokens: int
    cache: CacheReport


@dataclass(frozen=True)
class PrefillProgress:
    request_id: str
    done_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class TurnChunk:
    request_id: str
    text: str


@dataclass(frozen=True)
class TurnFinished:
    request_id: str
    text: str
    # "stop" (end of turn), "stop_sequence", "length" (max_tokens or context) or "cancelled"
    finish_reason: str
    usage: Usage
    cache: CacheReport
    timing: Timing
    stop_sequence: str | None = None
    prompt_token_ids: list[int] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class TurnFailed:
    request_id: str
    message: str
    kind: str  # "request" (the caller's input), "cancelled" (before it started) or "internal"


TurnEvent = TurnStarted | PrefillProgress | TurnChunk | TurnFinished | TurnFailed
