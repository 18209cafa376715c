"""The caller's side of one request: its events arrive on a queue; it can be cancelled from any thread."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator

from engine.errors import EngineError, RequestError
from engine.events import TurnEvent, TurnFailed, TurnFinished
from engine.requests import GenerationRequest

log = logging.getLogger(__name__)


class TurnHandle:
    """Callers iterate `events()` or wait for `result()`; the engine thread `emit`s into it."""

    def __init__(self, request: GenerationRequest, on_event: Callable[[TurnEvent], None] | None = None):
        self.request = request
        self._events: queue.Queue[TurnEvent] = queue.Queue()
        self._cancelled = threading.Event()
        # Called on the engine thread with every event (an asyncio server wakes its loop with it).
        self._on_event = on_event
        self._shape = None  # turns a tool-offering turn's text into tool-call events

    @property
    def request_id(self) -> str:
        return self.request.request_id

    # -- engine thread ---------------------------------------------------------------------------
    def begin(self, loaded) -> None:
        """Called on the engine thread as the turn starts on `loaded` (a LoadedModel)."""
        from engine.tools.stream import output_stream

        self._shape = output_stream(self.request, loaded.tokenizer)

    def emit(self, event: TurnEvent) -> None:
        """Hand an event to the caller (shaped into tool-call events once the turn has begun)."""
        for shaped in self._shape(event) if self._shape is not None else (event,):
            self._events.put(shaped)
            if self._on_event is not None:
                try:
                    self._on_event(shaped)
                except Exception:  # noqa: BLE001 - a consumer that went away must not stop the engine
                    log.debug("event listener of %s failed", self.request_id, exc_info=True)

    def fail(self, message: str, kind: str) -> None:
        """End the turn with TurnFailed: `kind` "request", "cancelled" or "internal"."""
        self.emit(TurnFailed(self.request_id, message, kind))

    def end_unstarted(self) -> None:
        """End a turn that was cancelled while it waited, before it started."""
        self.fail("the request was cancelled before it started", "cancelled")

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # -- caller ----------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop generating after the current token; the turn finishes with reason "cancelled"."""
        self._cancelled.set()

    def events(self, timeout: float | None = None) -> Iterator[TurnEvent]:
        """Events until (and including) TurnFinished or TurnFailed."""
        while True:
            event = self._events.get(timeout=timeout)
            yield event
            if isinstance(event, TurnFinished | TurnFailed):
                return

    def result(self) -> TurnFinished:
        """Wait for the end of the turn; raise RequestError/EngineError if it failed."""
        for event in self.events():
            if isinstance(event, TurnFinished):
                return event
            if isinstance(event, TurnFailed):
                raise (RequestError if event.kind == "request" else EngineError)(event.message)
        raise EngineError("the turn ended without a result")
