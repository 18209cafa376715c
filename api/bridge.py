"""The engine's events on the asyncio loop: the engine thread wakes the loop, nothing blocks it.

A handler submits through TurnStream and reads events (None marks a quiet interval: time for a
keep-alive) inside `async with`, whose exit cancels the turn, so a client that goes away frees the
engine within one token, and then waits for the turn's end: whatever runs next under the session's lock
(its next turn, a DELETE) sees the cache the cancelled turn left. The server's running turns are known
(RunningTurns), so that a shutdown past its grace period ends each with an error its client is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from sanic import Request
from sanic.exceptions import ServerError

from api.access_log import TurnNote, note_for
from api.errors import ApiError
from engine.errors import EngineBusy, EngineClosed
from engine.events import (
    PrefillProgress,
    ToolCallStart,
    TurnChunk,
    TurnEvent,
    TurnFailed,
    TurnFinished,
    TurnStarted,
)

# How long a handler that is done with a turn waits for the engine to end it (one step; a turn still
# waiting for a batch slot ends at once)
CANCEL_WAIT_S = 30.0


class TurnStream:
    def __init__(self, engine, request, keepalive_s: float = 10.0):
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[TurnEvent] = asyncio.Queue()

        def on_event(event: TurnEvent) -> None:
            loop.call_soon_threadsafe(self._queue.put_nowait, event)

        try:
            self.handle = engine.submit(request, on_event=on_event)
        except EngineBusy as exc:
            raise ApiError(429, str(exc), headers={"Retry-After": "2"}) from None
        except EngineClosed as exc:
            raise ApiError(503, f"{exc}; retry shortly", headers={"Retry-After": "5"}) from None
        self.done = False
        self.keepalive_s = keepalive_s
        self._ended_by: str | None = None  # why the server ended the turn (shutdown), if it did
        http_request = _current_request()
        self.note, self._arrived = _request_note(http_request)
        self.note.session_id = request.session_id
        self._running = http_request.app.ctx.server.turns if http_request is not None else None
        if self._running is not None:
            self._running.add(self)

    async def __aenter__(self) -> TurnStream:
        return self

    async def __aexit__(self, exc_type, *exc) -> None:
        if self._running is not None:
            self._running.discard(self)
        self.cancel()  # a client that went away (or an error) stops the generation after this token
        try:
            async with asyncio.timeout(CANCEL_WAIT_S):
                async for _ in self.events():  # drained up to the turn's end, which it notes
                    pass
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            if exc_type is None:
                raise  # cancelled while leaving normally: pass it on (else the original exception goes on)

    async def events(self) -> AsyncIterator[TurnEvent | None]:
        """Events for the client; None whenever `keepalive_s` passed without one (prefill progress
        is not sent to clients, so a long prefill yields keep-alives)."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not self.done:
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that meets an
                # arriving event, so a client's hang-up went unseen and its turn ran to max_tokens
                async with asyncio.timeout(max(0.0, self.keepalive_s - (loop.time() - last))):
                    event = await self._queue.get()
            except TimeoutError:
                last = loop.time()
                yield None
                continue
            if isinstance(event, PrefillProgress):
                continue
            if self._ended_by is not None and _cancelled(event):
                event = TurnFailed(event.request_id, self._ended_by, "cancelled")
            self._note(event)
            if isinstance(event, TurnFinished | TurnFailed):
                self.done = True
            last = loop.time()
            yield event

    async def finished(self) -> TurnFinished:
        """Wait for the end of the turn (non-streaming responses)."""
        async for event in self.events():
            if isinstance(event, TurnFailed):
                raise failure(event)
            if isinstance(event, TurnFinished):
                return event
        raise ApiError(500, "the turn ended without a result")

    def _note(self, event: TurnEvent) -> None:
        """The turn's figures for the access log, as far as they are known."""
        note = self.note
        if isinstance(event, TurnStarted):
            note.prompt_tokens, note.cached_tokens = event.prompt_tokens, event.cache.reused_tokens
            note.miss_reason = event.cache.miss_reason  # a stream opens after this: its headers have it
        elif isinstance(event, TurnFinished):
            note.prompt_tokens, note.cached_tokens = event.usage.prompt_tokens, event.usage.cached_tokens
            note.generated_tokens = event.usage.completion_tokens
        if note.ttft_s is None and isinstance(event, TurnChunk | ToolCallStart | TurnFinished):
            note.ttft_s = time.perf_counter() - self._arrived

    def cancel(self) -> None:
        if not self.done:
            self.handle.cancel()

    def end(self, reason: str) -> None:
        """Stop the turn for the server's own reason: its client gets an error saying so (a 503 before
        the answer began, an error event in a stream), not an answer that looks complete."""
        self._ended_by = reason
        self.cancel()


class RunningTurns:
    """The server's turns in flight."""

    def __init__(self):
        self._streams: set[TurnStream] = set()

    def add(self, stream: TurnStream) -> None:
        self._streams.add(stream)

    def discard(self, stream: TurnStream) -> None:
        self._streams.discard(stream)

    def __len__(self) -> int:
        return len(self._streams)

    def end_all(self, reason: str) -> None:
        for stream in list(self._streams):
            stream.end(reason)


def _cancelled(event: TurnEvent) -> bool:
    return (isinstance(event, TurnFinished) and event.finish_reason == "cancelled") or (
        isinstance(event, TurnFailed) and event.kind == "cancelled"
    )


def _current_request() -> Request | None:
    """Handlers run in the request's own task, so Sanic knows the request without every route passing
    it in; None outside one."""
    try:
        return Request.get_current()
    except ServerError:
        return None


def _request_note(request: Request | None) -> tuple[TurnNote, float]:
    """The HTTP request's access-log note and arrival time; outside one, a loose note."""
    if request is None:
        return TurnNote(), time.perf_counter()
    return note_for(request), getattr(request.ctx, "started", time.perf_counter())


def failure(event: TurnFailed) -> ApiError:
    if event.kind == "request":
        return ApiError(400, event.message)
    if event.kind == "cancelled":
        return ApiError(503, event.message, headers={"Retry-After": "1"})
    return ApiError(500, event.message, headers={"x-should-retry": "false"})
