"""Server-Sent Events: framing for both APIs, and a stream that opens lazily.

The stream is opened on the first send, so a request that fails before its first event still gets
a plain JSON error with the right status; once open, errors travel inside the stream.
"""

from __future__ import annotations

import json
import time

from api import access_log

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE_COMMENT = ": keep-alive\n\n"


def event(name: str, data: dict) -> str:
    """Anthropic style: an `event:` line naming the type, then its data."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def data(payload: dict | str) -> str:
    """OpenAI style: data lines only."""
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {text}\n\n"


class EventStream:
    def __init__(self, request):
        self.request = request
        self.response = None
        self.completed = False

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, exc_type, *exc) -> None:
        """A stream that ran to its end is ended and counted as served; any other is counted as cut (499)."""
        try:
            if exc_type is None:
                await self.end()
        finally:
            self.record()

    @property
    def opened(self) -> bool:
        return self.response is not None

    async def send(self, *texts: str) -> None:
        """Send events in one write; nothing to send is a no-op."""
        text = "".join(texts)
        if not text:
            return
        if self.response is None:
            self.request.ctx.streamed = True  # the metrics middleware leaves this request to `close`
            self.response = await self.request.respond(content_type="text/event-stream", headers=SSE_HEADERS)
        await self.response.send(text)

    async def end(self) -> None:
        """The stream is complete: end it and count the request as served."""
        if self.response is not None:
            await self.response.eof()
        self.completed = True

    def record(self) -> None:
        """Count and log the request: 499 if the client left or it failed mid-stream."""
        if self.response is None:
            return
        server = self.request.app.ctx.server
        status = 200 if self.completed else 499
        route = getattr(self.request.ctx, "route_label", "unmatched")
        seconds = time.perf_counter() - self.request.ctx.started
        server.metrics.observe_request(route, self.request.method, status, seconds, self.request.ctx.tenant)
        access_log.write(self.request, status)
