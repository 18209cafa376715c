"""Anthropic Messages: POST /v1/messages (streaming and not) and POST /v1/messages/count_tokens."""

from __future__ import annotations

import asyncio
import json
import uuid

from sanic import Blueprint
from sanic.response import json as json_response

from api import sse
from api.bridge import TurnStream, failure
from api.errors import error_body
from api.generation import generation_request, text_only_error
from api.schemas.anthropic import CountTokensRequest, MessagesRequest, TextBlock
from api.sessions import session_id_from
from api.usage import ANTHROPIC_STOP, anthropic_input_usage, anthropic_usage
from api.validation import parse, read_json
from engine.events import TurnChunk, TurnFailed, TurnFinished, TurnStarted
from engine.requests import ChatMessage

bp = Blueprint("anthropic", url_prefix="/v1/messages")


def engine_messages(parsed: MessagesRequest | CountTokensRequest) -> list[ChatMessage]:
    """System prompt and turns as chat messages; the same input always renders the same text (cache reuse)."""
    messages = []
    if parsed.system:
        system = parsed.system if isinstance(parsed.system, str) else "\n".join(b.text for b in parsed.system)
        if system.strip():
            messages.append(ChatMessage(role="system", content=system))
    for index, message in enumerate(parsed.messages):
        content = message.content
        text = content if isinstance(content, str) else _blocks_text(content, f"messages.{index}.content")
        messages.append(ChatMessage(role=message.role, content=text))
    return messages


def _blocks_text(blocks: list, where: str) -> str:
    parts = []
    for index, block in enumerate(blocks):
        if block.type == "text":
            parts.append(block.text)
        elif block.type in ("image", "document"):
            raise text_only_error(block.type, f"{where}.{index}")
        elif block.type == "tool_use":
            parts.append(f"[tool call {block.name} {json.dumps(block.input, ensure_ascii=False, sort_keys=True)}]")
        elif block.type == "tool_result":
            label = "tool error" if block.is_error else "tool result"
            parts.append(f"[{label} {block.tool_use_id}]\n{_result_text(block.content, f'{where}.{index}.content')}")
        # thinking blocks are the model's own scratch work: not sent back to it
    return "\n".join(parts)


def _result_text(content, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    for index, block in enumerate(content):
        if not isinstance(block, TextBlock):
            raise text_only_error(block.type, f"{where}.{index}")
    return "\n".join(block.text for block in content)


def _request(parsed: MessagesRequest, body: dict, headers):
    return generation_request(
        engine_messages(parsed),
        parsed.max_tokens,
        session_id_from(headers, body),
        temperature=parsed.temperature,
        top_p=parsed.top_p,
        top_k=parsed.top_k,
        stop=parsed.stop_sequences,
    )


@bp.post("")
async def create_message(request):
    server = request.app.ctx.server
    body = read_json(request)
    parsed = parse(MessagesRequest, body)
    engine = server.ready_engine()
    model = server.served_model(parsed.model)
    generation = _request(parsed, body, request.headers)
    message_id = f"msg_{uuid.uuid4().hex[:24]}"
    # A session's requests run one at a time, in arrival order (the lock is FIFO).
    async with (
        server.locks.hold(generation.session_id),
        TurnStream(engine, generation, server.settings.sse_keepalive_s) as turn,
    ):
        if parsed.stream:
            return await _stream(request, turn, message_id, model, engine.kv_enabled)
        finished = await turn.finished()
        server.metrics.observe_turn(finished)
        return json_response(
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": finished.text}],
                "stop_reason": ANTHROPIC_STOP[finished.finish_reason],
                "stop_sequence": finished.stop_sequence,
                "usage": anthropic_usage(finished.usage, engine.kv_enabled),
            }
        )


async def _stream(request, turn: TurnStream, message_id: str, model: str, kv_enabled: bool):
    """message_start, one text block (start, deltas, stop), message_delta, message_stop; pings between."""
    async with sse.EventStream(request) as stream:
        async for event in turn.events():
            if event is None:
                await stream.send(sse.event("ping", {"type": "ping"}))
            elif isinstance(event, TurnStarted):
                usage = {**anthropic_input_usage(event.prompt_tokens, event.cache.reused_tokens, kv_enabled)}
                message = {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {**usage, "output_tokens": 0},
                }
                await stream.send(sse.event("message_start", {"type": "message_start", "message": message}))
                await stream.send(
                    sse.event(
                        "content_block_start",
                        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                    )
                )
            elif isinstance(event, TurnChunk):
                delta = {"type": "text_delta", "text": event.text}
                await stream.send(
                    sse.event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
                )
            elif isinstance(event, TurnFinished):
                request.app.ctx.server.metrics.observe_turn(event)
                await stream.send(sse.event("content_block_stop", {"type": "content_block_stop", "index": 0}))
                delta = {"stop_reason": ANTHROPIC_STOP[event.finish_reason], "stop_sequence": event.stop_sequence}
                await stream.send(
                    sse.event(
                        "message_delta",
                        {"type": "message_delta", "delta": delta, "usage": anthropic_usage(event.usage, kv_enabled)},
                    )
                )
                await stream.send(sse.event("message_stop", {"type": "message_stop"}))
            elif isinstance(event, TurnFailed):
                if not stream.opened:
                    raise failure(event)
                await stream.send(sse.event("error", error_body(True, failure(event))))


@bp.post("/count_tokens")
async def count_tokens(request):
    server = request.app.ctx.server
    body = read_json(request)
    parsed = parse(CountTokensRequest, body)
    engine = server.ready_engine()
    server.served_model(parsed.model)
    generation = generation_request(engine_messages(parsed), 1, None)
    count = await asyncio.to_thread(engine.count_tokens, generation)
    return json_response({"input_tokens": count})
