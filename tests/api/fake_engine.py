"""An engine stand-in for the API's contract tests: the surface api/ uses, no MLX, turns scripted as the
engine's own events (engine/events.py).

    app = create_app(settings, FakeEngine())      every route, middleware and error handler as served
    engine.turn = text_turn("Hi", " there")       what the next submits stream, in order
    engine.requests[-1]                            the GenerationRequest the route built

A turn is a function of the GenerationRequest that returns the events to stream; submit hands them to the
route's listener at once, as the engine thread would one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from engine.events import (
    CacheReport,
    Timing,
    ToolCallDelta,
    ToolCallStart,
    TurnEvent,
    TurnFailed,
    TurnFinished,
    TurnStarted,
    Usage,
)
from engine.events import TurnChunk as Chunk
from engine.kv.stats import KVOverview
from engine.loader import ModelInfo
from engine.requests import GenerationRequest, ToolCall
from engine.sampling import ENGINE_DEFAULTS

MODEL_ID = "fake-model"
TIMING = Timing(ttft_s=0.02, prefill_tokens_per_s=1000.0, decode_tokens_per_s=50.0, total_s=0.1)
# Tokens each message costs besides its words (a chat template's role markers)
MESSAGE_OVERHEAD_TOKENS = 4

Turn = Callable[["FakeEngine", GenerationRequest], list[TurnEvent]]


class FakeHandle:
    """What submit returns: the route cancels it when it is done with the turn."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeEngine:
    """The attributes and calls of engine.engine.Engine that api/ reaches (see the module docstring)."""

    def __init__(self, model_dir: Path, context_length: int = 4096, cached_tokens: int = 0):
        self.model_id = MODEL_ID
        self.state = "ready"  # "loading" | "ready" | "swapping" | "failed" | "closed"
        self.started = True
        self.load_error: str | None = None
        self.info = ModelInfo(
            model_id=MODEL_ID,
            path=str(model_dir),
            source_kind="directory",
            model_type="llama",
            fingerprint="f" * 16,
            backend="cpu",
            compute_dtype="float32",
            blas="none",
            context_length=context_length,
            num_layers=2,
            num_parameters=135_000_000,
            kv_bytes_per_token=1024,
            vocab_size=49152,
            sampling_defaults=ENGINE_DEFAULTS,
        )
        self.tokenizer = SimpleNamespace(chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
        self.queue_depth = 0
        self.batching = True
        self.kv_enabled = True
        self.cached_tokens = cached_tokens  # what every turn reports as read from the cache
        self.turn: Turn = text_turn("Hello", " there")
        self.refuse: Exception | None = None  # raised by submit (EngineBusy, EngineClosed)
        self.requests: list[GenerationRequest] = []
        self.handles: list[FakeHandle] = []
        self.closes = 0

    def start(self, wait: bool = True) -> FakeEngine:
        self.started = True
        return self

    def close(self, timeout: float = 30.0) -> None:
        self.closes += 1

    def count_tokens(self, request: GenerationRequest) -> int:
        """Words plus a fixed cost per message: a system turn anywhere adds tokens (a ChatML-like template)."""
        return sum(len(message.content.split()) + MESSAGE_OVERHEAD_TOKENS for message in request.messages)

    def submit(self, request: GenerationRequest, on_event: Callable[[TurnEvent], None] | None = None) -> FakeHandle:
        if self.refuse is not None:
            raise self.refuse
        self.requests.append(request)
        handle = FakeHandle(request)
        self.handles.append(handle)
        for event in self.turn(self, request):
            if on_event is not None:
                on_event(event)
        return handle

    def kv_overview(self, sessions: bool = True) -> KVOverview:
        return KVOverview(enabled=False)


def started(engine: FakeEngine, request: GenerationRequest) -> TurnStarted:
    report = CacheReport(source="hot" if engine.cached_tokens else "cold", reused_tokens=engine.cached_tokens)
    return TurnStarted(request.request_id, engine.count_tokens(request), report)


def finished(
    engine: FakeEngine,
    request: GenerationRequest,
    text: str,
    completion_tokens: int,
    finish_reason: str = "stop",
    tool_calls: tuple[ToolCall, ...] = (),
    stop_sequence: str | None = None,
) -> TurnFinished:
    prompt_tokens = engine.count_tokens(request)
    return TurnFinished(
        request.request_id,
        text,
        finish_reason,
        Usage(prompt_tokens, completion_tokens, engine.cached_tokens),
        CacheReport(source="hot" if engine.cached_tokens else "cold", reused_tokens=engine.cached_tokens),
        TIMING,
        stop_sequence=stop_sequence,
        tool_calls=tool_calls,
        sampling=ENGINE_DEFAULTS,
    )


def text_turn(*pieces: str, finish_reason: str = "stop", stop_sequence: str | None = None) -> Turn:
    """A turn that streams `pieces` of text, one token each, then finishes."""

    def turn(engine: FakeEngine, request: GenerationRequest) -> list[TurnEvent]:
        text = "".join(pieces)
        return [
            started(engine, request),
            *(Chunk(request.request_id, piece) for piece in pieces),
            finished(engine, request, text, len(pieces), finish_reason, stop_sequence=stop_sequence),
        ]

    return turn


def tool_turn(name: str, argument_pieces: list[str], text: str = "", call_id: str = "call_0") -> Turn:
    """A turn that writes `text`, then one call of tool `name` whose arguments arrive in pieces."""

    def turn(engine: FakeEngine, request: GenerationRequest) -> list[TurnEvent]:
        call = ToolCall(id=call_id, name=name, arguments="".join(argument_pieces))
        events: list[TurnEvent] = [started(engine, request)]
        if text:
            events.append(Chunk(request.request_id, text))
        events.append(ToolCallStart(request.request_id, 0, call_id, name))
        events += [ToolCallDelta(request.request_id, 0, piece) for piece in argument_pieces]
        events.append(finished(engine, request, text, 5, "tool_calls", tool_calls=(call,)))
        return events

    return turn


def failed_turn(message: str, kind: str, after_text: str | None = None) -> Turn:
    """A turn that fails (`kind` as TurnFailed's): at once, or after streaming `after_text`."""

    def turn(engine: FakeEngine, request: GenerationRequest) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        if after_text is not None:
            events += [started(engine, request), Chunk(request.request_id, after_text)]
        return [*events, TurnFailed(request.request_id, message, kind)]

    return turn
