"""Newline-delimited JSON streams (Ollama's streaming format): one JSON object a line, opened lazily.

Like api/sse.py's EventStream (whose ending, counting and logging it shares): a request that fails before
its first line still gets a plain JSON error with the right status; once open, an error is a line of its own.
There are no keep-alive lines: Ollama clients parse every line as JSON, and a blank one is none.
"""

from __future__ import annotations

import json

from api.sse import SSE_HEADERS, EventStream

CONTENT_TYPE = "application/x-ndjson"


class JsonLinesStream(EventStream):
    async def send_line(self, payload: dict) -> None:
        if self.response is None:
            self.request.ctx.streamed = True  # the metrics middleware leaves this request to `record`
            self.response = await self.request.respond(content_type=CONTENT_TYPE, headers=SSE_HEADERS)
        await self.response.send(json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n")
