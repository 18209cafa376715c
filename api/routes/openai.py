"""OpenAI Chat Completions: POST /v1/chat/completions, streaming and not."""

from __future__ import annotations

import asyncio
import time
import uuid

from sanic import Blueprint
from sanic.response import json as json_response

from api import sse
from api.access_log import note_for
from api.bridge import TurnStream, failure
from api.cache_hints import openai_retention_s
from api.errors import ApiError, error_body
from api.generation import check_prompt_fits, check_schema, generation_request, text_only_error
from api.schemas.openai import ChatCompletionRequest, NamedToolChoice
from api.sessions import checked_session_id, scoped, session_id_from
from api.usage import OPENAI_FINISH, openai_usage
from api.validation import parse, read_json
from engine.events import ToolCallDelta, ToolCallStart, TurnChunk, TurnFailed, TurnFinished, TurnStarted
from engine.requests import NO_ARGUMENTS, ChatMessage, ToolCall, ToolSpec

bp = Blueprint("openai", url_prefix="/v1/chat")

# Used when a request sets neither max_tokens nor max_completion_tokens (the context limit still applies).
DEFAULT_MAX_TOKENS = 2048
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def engine_messages(parsed: ChatCompletionRequest) -> list[ChatMessage]:
    messages = []
    for index, message in enumerate(parsed.messages):
        text = _content_text(message.content, f"messages.{index}.content")
        if message.role in ("tool", "function"):
            call_id = message.tool_call_id or message.name or "call"
            messages.append(ChatMessage(role="tool", content=text, tool_call_id=call_id, name=message.name))
            continue
        calls = tuple(
            ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
            for call in message.tool_calls or ()
        )
        messages.append(ChatMessage(role=ROLES[message.role], content=text, tool_calls=calls))
    return messages


def _content_text(content, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for index, part in enumerate(content):
        if part.type == "text":
            parts.append(part.text or "")
        elif part.type == "refusal":
            parts.append(part.refusal or "")
        else:
            raise text_only_error(part.type, f"{where}.{index}")
    return "\n".join(parts)


def _tools(parsed: ChatCompletionRequest) -> dict:
    """tools, tool_choice and response_format as the engine's request fields."""
    tools = [
        ToolSpec(
            name=tool.function.name,
            description=tool.function.description or "",
            parameters=check_schema(tool.function.parameters or NO_ARGUMENTS, f"tools.{index}.function.parameters"),
        )
        for index, tool in enumerate(parsed.tools or ())
    ]
    choice, name = parsed.tool_choice, None
    if isinstance(choice, NamedToolChoice):
        choice, name = "required", choice.function.name
    schema = None
    if parsed.response_format is not None and parsed.response_format.type == "json_object":
        schema = {"type": "object"}
    elif parsed.response_format is not None and parsed.response_format.type == "json_schema":
        format_schema = parsed.response_format.json_schema
        schema = check_schema(format_schema and format_schema.schema_, "response_format.json_schema.schema")
    return {
        "tools": tools,
        "tool_choice": choice or "auto",
        "tool_name": name,
        "parallel_tool_calls": parsed.parallel_tool_calls is not False,
        "response_schema": schema,
    }


def _request(parsed: ChatCompletionRequest, body: dict, request):
    if parsed.n not in (None, 1):
        raise ApiError(400, "n must be 1: this server returns one choice per request", param="n")
    stop = [parsed.stop] if isinstance(parsed.stop, str) else parsed.stop
    session_id = session_id_from(request.headers, body) or (
        parsed.prompt_cache_key and checked_session_id(parsed.prompt_cache_key, "prompt_cache_key")
    )
    return generation_request(
        engine_messages(parsed),
        parsed.max_completion_tokens or parsed.max_tokens or DEFAULT_MAX_TOKENS,
        scoped(request, session_id),
        tenant=request.ctx.tenant,
        retention_s=openai_retention_s(parsed.prompt_cache_retention),
        temperature=parsed.temperature,
        top_p=parsed.top_p,
        frequency_penalty=parsed.frequency_penalty,
        presence_penalty=parsed.presence_penalty,
        repetition_penalty=parsed.repetition_penalty,
        seed=parsed.seed,
        stop=stop,
        **_tools(parsed),
    )


def _tool_calls(finished: TurnFinished) -> list[dict]:
    return [
        {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        for call in finished.tool_calls
    ]


@bp.post("/completions")
async def create_chat_completion(request):
    server = request.app.ctx.server
    body = read_json(request)
    parsed = parse(ChatCompletionRequest, body)
    engine = server.ready_engine()
    model = await server.model_for(parsed.model)
    generation = _request(parsed, body, request)
    note_for(request).session_id = generation.session_id
    await asyncio.to_thread(check_prompt_fits, engine, generation)  # too long: a 400 now, not after the queue
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model}
    # A session's requests run one at a time, in arrival order (the lock is FIFO).
    async with (
        server.locks.hold(generation.session_id),
        TurnStream(engine, generation, server.settings.sse_keepalive_s) as turn,
    ):
        if parsed.stream:
            include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
            return await _stream(request, turn, head, include_usage)
        finished = await turn.finished()
        server.metrics.observe_turn(finished)
        return json_response(
            {
                **head,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            # OpenAI sends null content beside tool calls when the model wrote no text
                            "content": finished.text or (None if finished.tool_calls else ""),
                            "refusal": None,
                            **({"tool_calls": _tool_calls(finished)} if finished.tool_calls else {}),
                        },
                        "logprobs": None,
                        "finish_reason": OPENAI_FINISH[finished.finish_reason],
                    }
                ],
                "usage": openai_usage(finished.usage),
            }
        )


async def _stream(request, turn: TurnStream, head: dict, include_usage: bool):
    """Chunks: role first, then content deltas, then finish_reason; usage last when asked; [DONE]."""
    usage_field = {"usage": None} if include_usage else {}

    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse.data({**head, "object": "chat.completion.chunk", "choices": [choice], **usage_field})

    async with sse.EventStream(request) as stream:
        async for event in turn.events():
            if event is None:
                await stream.send(sse.KEEPALIVE_COMMENT)
            elif isinstance(event, TurnStarted):
                await stream.send(chunk({"role": "assistant", "content": ""}))
            elif isinstance(event, TurnChunk):
                await stream.send(chunk({"content": event.text}))
            elif isinstance(event, ToolCallStart):
                call = {"index": event.index, "id": event.call_id, "type": "function"}
                await stream.send(chunk({"tool_calls": [{**call, "function": {"name": event.name, "arguments": ""}}]}))
            elif isinstance(event, ToolCallDelta):
                call = {"index": event.index, "function": {"arguments": event.arguments}}
                await stream.send(chunk({"tool_calls": [call]}))
            elif isinstance(event, TurnFinished):
                request.app.ctx.server.metrics.observe_turn(event)
                await stream.send(chunk({}, OPENAI_FINISH[event.finish_reason]))
                if include_usage:
                    usage = {
                        **head,
                        "object": "chat.completion.chunk",
                        "choices": [],
                        "usage": openai_usage(event.usage),
                    }
                    await stream.send(sse.data(usage))
                await stream.send(sse.data("[DONE]"))
            elif isinstance(event, TurnFailed):
                if not stream.opened:
                    raise failure(event)
                await stream.send(sse.data(error_body(False, failure(event))))
