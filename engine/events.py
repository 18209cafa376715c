"""Plain event objects for one streamed turn, shared by the CLI, TUI, API and metrics.

The engine thread produces them; consumers read them from a TurnHandle. They carry no MLX objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from engine.requests import SamplingParams, ToolCall


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    def to_json(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
        }

    @classmethod
    def from_json(cls, data: dict) -> Usage:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class CacheReport:
    source: str = "cold"  # "cold" | "hot" | "warm" | "shared"
    reused_tokens: int = 0
    restore_s: float = 0.0
    # "restore", "recompute" or "partial" (engine/kv/cost.py) and that choice's estimated seconds
    decision: str = "recompute"
    estimate_s: float = 0.0
    # Why the cache gave less than the prompt, in words ("system prompt changed at token 12"), and its
    # kind (engine/kv/miss.py); None when the turn reused all its own stored cache could give
    miss_reason: str | None = None
    miss_kind: str | None = None

    def to_json(self) -> dict:
        """What `chat --json`, `batch` and the agent API show of it (the miss's kind is for metrics)."""
        return {
            "source": self.source,
            "reused_tokens": self.reused_tokens,
            "restore_s": round(self.restore_s, 4),
            "decision": self.decision,
            "estimate_s": round(self.estimate_s, 4),
            "miss_reason": self.miss_reason,
        }

    @classmethod
    def from_json(cls, data: dict) -> CacheReport:
        """The report from its JSON (a server's): what it lacks takes the default."""
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class Timing:
    ttft_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    total_s: float

    def to_json(self) -> dict:
        return {
            "ttft_s": round(self.ttft_s, 4),
            "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 2),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 2),
            "total_s": round(self.total_s, 4),
        }

    @classmethod
    def from_json(cls, data: dict) -> Timing:
        return cls(**_known(cls, data))


def _known(cls, data: dict) -> dict:
    """The entries of `data` that are fields of the dataclass `cls` (a newer server may send more)."""
    return {f.name: data[f.name] for f in fields(cls) if f.name in data}


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
class ToolCallStart:
    """The model began call number `index` (0, 1, ... within the turn) of tool `name`."""

    request_id: str
    index: int
    call_id: str
    name: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of call `index`'s arguments JSON; the pieces of one call concatenate to its arguments."""

    request_id: str
    index: int
    arguments: str


@dataclass(frozen=True)
class TurnFinished:
    request_id: str
    text: str
    # "stop" (end of turn), "stop_sequence", "length" (max_tokens or context), "tool_calls" or "cancelled"
    finish_reason: str
    usage: Usage
    cache: CacheReport
    timing: Timing
    stop_sequence: str | None = None
    prompt_token_ids: list[int] = field(default_factory=list, repr=False)
    tool_calls: tuple[ToolCall, ...] = ()
    # Calls the model wrote that did not parse (returned as text instead)
    invalid_tool_calls: int = 0
    # The settings the turn sampled with: the request's, the unset ones from the model's defaults
    sampling: SamplingParams | None = None


@dataclass(frozen=True)
class TurnFailed:
    request_id: str
    message: str
    kind: str  # "request" (the caller's input), "cancelled" (before it started) or "internal"


TurnEvent = TurnStarted | PrefillProgress | TurnChunk | ToolCallStart | ToolCallDelta | TurnFinished | TurnFailed
