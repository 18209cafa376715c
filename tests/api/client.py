"""The app in-process: requests through Sanic's ASGI test client, each answered whole (a stream is read to its
end), and the two streaming framings taken apart strictly."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import httpx
from sanic import Sanic


class Client:
    def __init__(self, app: Sanic):
        self.app = app

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        async def send() -> httpx.Response:
            _, response = await self.app.asgi_client.request(method, path, gather_request=False, **kwargs)
            return response

        return asyncio.run(send())

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body=None, **kwargs) -> httpx.Response:
        return self.request("POST", path, json=body, **kwargs)


def body(response: httpx.Response):
    return json.loads(response.text)


@dataclass(frozen=True)
class Frame:
    event: str | None  # the `event:` line (Anthropic, Responses); None for data-only frames (Chat Completions)
    data: str  # the `data:` line's text
    comment: bool = False  # a `: keep-alive` line

    def json(self) -> dict:
        return json.loads(self.data)


def sse_frames(text: str) -> list[Frame]:
    """Server-Sent Events as sent: frames ended by a blank line, each an optional `event:` line and one
    `data:` line, or one comment line. Anything else fails."""
    assert text.endswith("\n\n"), f"the stream does not end with a blank line: {text[-80:]!r}"
    frames = []
    for chunk in text[:-2].split("\n\n"):
        lines = chunk.split("\n")
        if len(lines) == 1 and lines[0].startswith(":"):
            frames.append(Frame(None, "", comment=True))
            continue
        event = None
        if lines[0].startswith("event: "):
            event = lines.pop(0).removeprefix("event: ")
        assert len(lines) == 1 and lines[0].startswith("data: "), f"not an SSE frame: {chunk!r}"
        frames.append(Frame(event, lines[0].removeprefix("data: ")))
    return frames


def ndjson_lines(text: str) -> list[dict]:
    """Newline-delimited JSON: every line one JSON object, the last ended by a newline too."""
    assert text.endswith("\n"), f"the stream does not end with a newline: {text[-80:]!r}"
    return [json.loads(line) for line in text[:-1].split("\n")]
