"""Anthropic Messages: POST /v1/messages (streaming and not) and POST /v1/messages/count_tokens."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

from sanic import Blueprint
from sanic.response import json as json_response

from api import sse
from api.access_log import note_for
from api.agent_titles import claude_code_title
from api.bridge import TurnStream, failure
from api.cache_hints import anthropic_keep_s
from api.errors import ApiError, error_body
from api.generation import check_prompt_fits, check_schema, generation_request, text_only_error
from api.schemas.anthropic import CountTokensRequest, MessagesRequest, TextBlock
from api.sessions import from_claude_code, scoped, session_id_from
from api.system_turns import fit_system_turns, renders_system_turns
from api.usage import ANTHROPIC_STOP, anthropic_input_usage, anthropic_usage
from api.validation import parse, read_json
from api.volatile import drop_volatile_lines
from engine.events import ToolCallDelta, ToolCallStart, TurnChunk, TurnFailed, TurnFinished, TurnStarted
from engine.requests import ChatMessage, ToolCall, ToolSpec
from engine.sessions import SessionCorrupt, SessionStore

bp = Blueprint("anthropic", url_prefix="/v1/messages")
log = logging.getLogger("agent_memory.api")


def engine_messages(parsed: MessagesRequest | CountTokensRequest, drop_volatile: bool = True) -> list[ChatMessage]:
    """System prompt and turns as chat messages; the same input always renders the same text (cache reuse).
    A user turn's tool_result blocks become "tool" turns, before the text sent with them. System text loses
    its volatile lines (api/volatile.py) unless `drop_volatile` is false; system entries inside `messages`
    stay system messages here (api/system_turns.py fits them to the template)."""
    clean = drop_volatile_lines if drop_volatile else str
    messages = []
    if parsed.system:
        blocks = [parsed.system] if isinstance(parsed.system, str) else [block.text for block in parsed.system]
        system = "\n".join(text for text in map(clean, blocks) if text)
        if system.strip():
            messages.append(ChatMessage(role="system", content=system))
    for index, message in enumerate(parsed.messages):
        where = f"messages.{index}.content"
        blocks = [TextBlock(type="text", text=message.content)] if isinstance(message.content, str) else message.content
        if message.role == "system":
            messages.append(ChatMessage(role="system", content=clean(_system_text(blocks, where))))
            continue
        texts, calls = [], []
        for number, block in enumerate(blocks):
            if block.type == "text":
                texts.append(block.text)
            elif block.type in ("image", "document"):
                raise text_only_error(block.type, f"{where}.{number}")
            elif block.type == "tool_use":
                arguments = json.dumps(block.input, ensure_ascii=False)
                calls.append(ToolCall(id=block.id, name=block.name, arguments=arguments))
            elif block.type == "tool_result":
                messages.append(
                    ChatMessage(
                        role="tool",
                        content=_result_text(block.content, f"{where}.{number}.content"),
                        tool_call_id=block.tool_use_id,
                        is_error=bool(block.is_error),
                    )
                )
            # thinking blocks are the model's own scratch work: not sent back to it
        if texts or calls or not any(block.type == "tool_result" for block in blocks):
            messages.append(ChatMessage(role=message.role, content="\n".join(texts), tool_calls=tuple(calls)))
    return messages


def _system_text(blocks, where: str) -> str:
    for number, block in enumerate(blocks):
        if block.type != "text":
            raise ApiError(400, f"{where}.{number}: a system message holds text blocks only", param=where)
    return "\n".join(block.text for block in blocks)


def _result_text(content, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    for index, block in enumerate(content):
        if not isinstance(block, TextBlock):
            raise text_only_error(block.type, f"{where}.{index}")
    return "\n".join(block.text for block in content)


def _tools(parsed: MessagesRequest | CountTokensRequest) -> dict:
    """tools, tool_choice and output_config.format as the engine's request fields."""
    tools = [
        ToolSpec(
            name=tool.name,
            description=tool.description or "",
            parameters=check_schema(tool.input_schema, f"tools.{index}.input_schema"),
        )
        for index, tool in enumerate(parsed.tools or ())
    ]
    choice = parsed.tool_choice
    mode = {"auto": "auto", "any": "required", "tool": "required", "none": "none"}[choice.type] if choice else "auto"
    if choice is not None and choice.type == "tool" and not choice.name:
        raise ApiError(400, "tool_choice.name: required when tool_choice.type is 'tool'", param="tool_choice.name")
    output_format = parsed.output_config.format if parsed.output_config else None
    return {
        "tools": tools,
        "tool_choice": mode,
        "tool_name": choice.name if choice is not None and choice.type == "tool" else None,
        "parallel_tool_calls": not (choice and choice.disable_parallel_tool_use),
        "response_schema": output_format.schema_ if output_format is not None else None,
    }


def _conversation(parsed: MessagesRequest | CountTokensRequest, engine, settings) -> list[ChatMessage]:
    """The request's messages as the serving model renders them (renders a probe once per model)."""
    return fit_system_turns(engine_messages(parsed, settings.drop_volatile_lines), renders_system_turns(engine))


def _request(parsed: MessagesRequest, body: dict, session_id: str | None, tenant: str, engine, settings):
    """The engine request, checked against the context (400 at once when too long). Renders the prompt:
    run it off the event loop."""
    generation = generation_request(
        _conversation(parsed, engine, settings),
        parsed.max_tokens,
        session_id,
        tenant=tenant,
        keep_s=anthropic_keep_s(body),
        temperature=parsed.temperature,
        top_p=parsed.top_p,
        top_k=parsed.top_k,
        repetition_penalty=parsed.repetition_penalty,
        stop=parsed.stop_sequences,
        **_tools(parsed),
    )
    check_prompt_fits(engine, generation)
    return generation


def tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def _content(finished: TurnFinished) -> list[dict]:
    blocks = [{"type": "text", "text": finished.text}] if finished.text or not finished.tool_calls else []
    for call in finished.tool_calls:
        blocks.append({"type": "tool_use", "id": tool_use_id(call.id), "name": call.name, "input": _input(call)})
    return blocks


def _input(call) -> dict:
    try:
        value = json.loads(call.arguments)
    except ValueError:  # a call cut short by max_tokens: its arguments are incomplete
        return {}
    return value if isinstance(value, dict) else {}


@bp.post("")
async def create_message(request):
    server = request.app.ctx.server
    body = read_json(request)
    parsed = parse(MessagesRequest, body)
    engine = server.ready_engine()
    model = await server.model_for(parsed.model)
    session_id = note_for(request).session_id = scoped(request, session_id_from(request.headers, body, anthropic=True))
    generation = await asyncio.to_thread(
        _request, parsed, body, session_id, request.ctx.tenant, engine, server.settings
    )
    if session_id is not None and from_claude_code(request.headers, body):  # its id is a UUID: name it
        store = SessionStore.of(server.settings)
        try:
            await asyncio.to_thread(store.name, session_id, claude_code_title(body))
        except (SessionCorrupt, OSError) as exc:  # a title is a nicety: the turn goes on without it
            log.warning("could not title session %r: %s", session_id, exc)
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
                "content": _content(finished),
                "stop_reason": ANTHROPIC_STOP[finished.finish_reason],
                "stop_sequence": finished.stop_sequence,
                "usage": anthropic_usage(finished.usage, engine.kv_enabled),
            }
        )


async def _stream(request, turn: TurnStream, message_id: str, model: str, kv_enabled: bool):
    """message_start, content blocks (text, tool_use) each as start, deltas, stop; message_delta,
    message_stop; pings between. A block opens when its first piece arrives."""
    blocks = _BlockWriter()
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
            elif isinstance(event, TurnChunk):
                await stream.send(*blocks.text(event.text))
            elif isinstance(event, ToolCallStart):
                await stream.send(*blocks.tool_use(tool_use_id(event.call_id), event.name))
            elif isinstance(event, ToolCallDelta):
                await stream.send(*blocks.delta({"type": "input_json_delta", "partial_json": event.arguments}))
            elif isinstance(event, TurnFinished):
                request.app.ctx.server.metrics.observe_turn(event)
                await stream.send(*blocks.close(final=True))
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


class _BlockWriter:
    """Content block events in order: the open block is closed before the next one starts."""

    def __init__(self):
        self.count = 0  # blocks started so far
        self.open: str | None = None  # "text" | "tool_use"

    def text(self, text: str) -> list[str]:
        events = [] if self.open == "text" else [*self.close(), self._start({"type": "text", "text": ""}, "text")]
        return [*events, *self.delta({"type": "text_delta", "text": text})]

    def tool_use(self, block_id: str, name: str) -> list[str]:
        block = {"type": "tool_use", "id": block_id, "name": name, "input": {}}
        return [*self.close(), self._start(block, "tool_use")]

    def delta(self, delta: dict) -> list[str]:
        index = self.count - 1
        return [sse.event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})]

    def close(self, final: bool = False) -> list[str]:
        """Stop the open block; at the end of a message that had none, an empty text block."""
        if self.open is None:
            if final and not self.count:
                return [self._start({"type": "text", "text": ""}, "text"), *self.close()]
            return []
        self.open = None
        return [sse.event("content_block_stop", {"type": "content_block_stop", "index": self.count - 1})]

    def _start(self, block: dict, kind: str) -> str:
        self.open = kind
        self.count += 1
        index = self.count - 1
        return sse.event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


@bp.post("/count_tokens")
async def count_tokens(request):
    server = request.app.ctx.server
    body = read_json(request)
    parsed = parse(CountTokensRequest, body)
    engine = server.ready_engine()
    server.served_model(parsed.model)

    def count() -> int:
        generation = generation_request(_conversation(parsed, engine, server.settings), 1, None, **_tools(parsed))
        return engine.count_tokens(generation)

    return json_response({"input_tokens": await asyncio.to_thread(count)})
