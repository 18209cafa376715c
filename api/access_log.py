"""One log line per request, written when its response has ended (a stream's when its last event is sent):

    req=0b6c5d0e-… POST /v1/messages 200 tenant=alice session=alice:4f1e… prompt=19361 cached=19104
        generated=12 ttft=0.41s duration=2.03s miss="history edited at turn 3 (token 19104)"   (one line)

Fields a request does not have (a /health probe generates nothing; no tenant without named keys) are
`-`. `miss` says why the cache gave less than the prompt (x-cache-miss-reason, engine/turn.py's words:
ASCII without quotes). TTFT is measured as the client sees it: from the request's arrival to the first
generated text or tool call, queueing included. The turn's figures are noted on the request by
api/bridge.py's TurnStream, so every route that generates is covered. Logger "agent_memory.access",
level INFO (`agent-memory serve --log-level warning` hides it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

log = logging.getLogger("agent_memory.access")

# Session ids and paths are user input: percent-encoded past these characters, so a line stays one line
# of space-separated fields whatever they hold.
_PLAIN_CHARACTERS = "._:@/+-"


@dataclass
class TurnNote:
    """What one request's turn did, as far as it got."""

    session_id: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    generated_tokens: int | None = None
    ttft_s: float | None = None
    miss_reason: str | None = None  # why the cache gave less than the prompt (x-cache-miss-reason)


def note_for(request) -> TurnNote:
    """The request's note, made on first use."""
    note = getattr(request.ctx, "turn_note", None)
    if note is None:
        note = request.ctx.turn_note = TurnNote()
    return note


def write(request, status: int) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    note = getattr(request.ctx, "turn_note", None) or TurnNote()
    started = getattr(request.ctx, "started", None)
    duration = f"{time.perf_counter() - started:.2f}s" if started is not None else "-"
    ttft = f"{note.ttft_s:.2f}s" if note.ttft_s is not None else "-"
    log.info(
        "req=%s %s %s %d tenant=%s session=%s prompt=%s cached=%s generated=%s ttft=%s duration=%s miss=%s",
        request.id,
        _quoted(request.method),
        _quoted(request.path),
        status,
        getattr(request.ctx, "tenant", "") or "-",
        _quoted(note.session_id) if note.session_id is not None else "-",
        _number(note.prompt_tokens),
        _number(note.cached_tokens),
        _number(note.generated_tokens),
        ttft,
        duration,
        f'"{note.miss_reason}"' if note.miss_reason else "-",
    )


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


def _quoted(text: str) -> str:
    return quote(text[:128], safe=_PLAIN_CHARACTERS)
