"""OpenAI Responses: POST /v1/responses (streaming and not), GET and DELETE /v1/responses/{id}.

A response is one model turn over `input` (text, or items: messages, function calls and their outputs).
With `store` (the default) it is kept on disk, and a request naming it as `previous_response_id` continues
its conversation under the same agent session, so the chain resumes from its KV cache:

    resp_1 (store)           session "resp_1": [input 1] -> output 1
      └ resp_2 (previous=1)  session "resp_1": [input 1, output 1, input 2] -> output 2   (prefix reused)

An explicit session id (X-Session-ID, `user`, `safety_identifier`) or `prompt_cache_key` names the session
instead; a response with `store: false` and neither still reuses the longest cached prefix. A stored
chain's conversation becomes its session's transcript, unless that holds turns of the agent API's.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from urllib.parse import unquote

from pydantic import ValidationError
from sanic import Blueprint
from sanic.response import json as json_response

from api import sse
from api.bridge import TurnStream, failure
from api.cache_hints import openai_retention_s
from api.errors import ApiError
from api.generation import check_schema, generation_request, text_only_error
from api.response_store import ResponseStore, StoredResponse, StoredResponseCorrupt
from api.routes.openai import DEFAULT_MAX_TOKENS
from api.schemas.responses import (
    ITEM_TYPES,
    AllowedTools,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    FunctionTool,
    MessageItem,
    NamespaceTool,
    ResponsesRequest,
)
from api.sessions import checked_session_id, held_across_processes, scoped, session_id_from
from api.validation import read_json
from engine.events import ToolCallDelta, ToolCallStart, TurnChunk, TurnFailed, TurnFinished, TurnStarted, Usage
from engine.requests import NO_ARGUMENTS, ChatMessage, ToolCall, ToolSpec
from engine.sessions import SessionCorrupt, SessionStore

log = logging.getLogger("agent_memory.api")

bp = Blueprint("responses", url_prefix="/v1/responses")

# The tags of the item and tool unions
_UNION_TAGS = {*ITEM_TYPES, "function", "namespace", "hosted"}


def _parse(body: dict) -> ResponsesRequest:
    """The request, or a 400 naming the deepest bad field (`input.1.call_id: field required`)."""
    try:
        return ResponsesRequest.model_validate(body, strict=True)  # JSON's types as sent, as parse() takes them
    except ValidationError as exc:
        error = max(exc.errors(), key=lambda e: len(e["loc"]))
        parts, previous = [], None
        for part in error["loc"]:
            if not _is_union_label(part, previous):
                parts.append(str(part))
            previous = part
        location = ".".join(parts)
        message = "field required" if error["type"] == "missing" else error["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{location}: {message}" if location else message, param=location or None) from None


def _is_union_label(part, previous) -> bool:
    """pydantic names union members in error locations (`str`, `list[...]`, `FunctionChoice`, and an item's
    tag after its index): not fields, which are lower case here."""
    if not isinstance(part, str):
        return False
    return (
        "[" in part
        or part in ("str", "dict")
        or part[:1].isupper()
        or (isinstance(previous, int) and part in _UNION_TAGS)
    )


def _store(request) -> ResponseStore:
    """The caller's tenant's stored responses: a chain never continues another tenant's."""
    root = request.app.ctx.server.settings.data_path / "responses"
    return ResponseStore(root / "tenants" / request.ctx.tenant if request.ctx.tenant else root)


def _stored(store: ResponseStore, response_id: str) -> StoredResponse | None:
    try:
        return store.get(response_id)
    except StoredResponseCorrupt as exc:
        log.warning("response %r: %s", response_id, exc)  # the file's path is for the log, not the client
        raise ApiError(
            409,
            f"stored response {response_id!r} is damaged and cannot be read (the server's log names its file); "
            "DELETE it to remove it",
        ) from None


# --- request -> engine -------------------------------------------------------------------------------


def _text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for index, part in enumerate(content):
        if part.type in ("input_text", "output_text"):
            parts.append(part.text or "")
        elif part.type == "refusal":
            parts.append(part.refusal or "")
        else:
            raise text_only_error(part.type, f"{where}.{index}")
    return "\n".join(parts)


def input_messages(parsed: ResponsesRequest) -> list[ChatMessage]:
    """`input` as turns: an assistant message and the function calls after it are one assistant turn;
    each call's output is a "tool" turn. Reasoning items are the model's scratch work: not sent back."""
    if parsed.input is None:
        return []
    if isinstance(parsed.input, str):
        return [ChatMessage(role="user", content=parsed.input)]
    messages: list[ChatMessage] = []
    for index, item in enumerate(parsed.input):
        where = f"input.{index}"
        if isinstance(item, MessageItem):
            role = "system" if item.role in ("system", "developer") else item.role
            messages.append(ChatMessage(role=role, content=_text(item.content, f"{where}.content")))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(id=item.call_id, name=item.name, arguments=item.arguments)
            if messages and messages[-1].role == "assistant":
                messages[-1] = messages[-1].model_copy(update={"tool_calls": (*messages[-1].tool_calls, call)})
            else:
                messages.append(ChatMessage(role="assistant", content="", tool_calls=(call,)))
        elif isinstance(item, FunctionCallOutputItem):
            text = _text(item.output, f"{where}.output")
            messages.append(ChatMessage(role="tool", content=text, tool_call_id=item.call_id))
    return messages


def template_messages(instructions: str | None, conversation: list[ChatMessage]) -> list[ChatMessage]:
    """The conversation in the shape every chat template accepts: `instructions` and the leading
    system/developer messages become one system message; a later system/developer message joins the user
    turn around it; consecutive user (or text-only assistant) messages become one turn. (Codex sends two
    developer messages and two user messages to start; Gemma's template takes one system message, first,
    and strictly alternating turns.) The same conversation always gives the same messages."""
    head = [instructions] if instructions else []
    rest = list(conversation)
    while rest and rest[0].role == "system":
        head.append(rest.pop(0).content)
    merged = [ChatMessage(role="system", content="\n\n".join(head))] if head else []
    for message in rest:
        if message.role == "system":
            message = ChatMessage(role="user", content=message.content)
        last = merged[-1] if merged else None
        if last is not None and last.role == message.role == "user":
            merged[-1] = ChatMessage(role="user", content=f"{last.content}\n\n{message.content}")
        elif last is not None and last.role == message.role == "assistant" and not last.tool_calls:
            text = "\n\n".join(part for part in (last.content, message.content) if part)
            merged[-1] = message.model_copy(update={"content": text})
        else:
            merged.append(message)
    return merged


def _tool_fields(parsed: ResponsesRequest) -> tuple[dict, dict[str, str]]:
    """tools, tool_choice and text.format as the engine's request fields, and the namespace of each
    function offered from a namespace. Hosted tools (web_search, file_search, …) and custom tools run
    only at OpenAI: they are accepted and not offered to the model."""
    specs: list[ToolSpec] = []
    namespaces: dict[str, str] = {}
    for index, tool in enumerate(parsed.tools or ()):
        if isinstance(tool, FunctionTool):
            specs.append(_spec(tool, f"tools.{index}.parameters"))
        elif isinstance(tool, NamespaceTool):
            for number, inner in enumerate(tool.tools):
                if isinstance(inner, FunctionTool):
                    specs.append(_spec(inner, f"tools.{index}.tools.{number}.parameters"))
                    namespaces[inner.name] = tool.name
    choice, name = parsed.tool_choice, None
    if choice is None:
        choice = "auto"
    elif isinstance(choice, FunctionChoice):
        choice, name = "required", choice.name
    elif isinstance(choice, AllowedTools):
        allowed = {tool.get("name") for tool in choice.tools if tool.get("type") == "function"}
        specs = [spec for spec in specs if spec.name in allowed]
        choice = choice.mode
    elif not isinstance(choice, str):
        raise ApiError(
            400,
            'tool_choice: this server takes none, auto, required, {"type": "function", "name": …} or '
            "allowed_tools; hosted tools run only at OpenAI",
            param="tool_choice",
        )
    text_format = parsed.text.format if parsed.text else None
    schema = None
    if text_format is not None and text_format.type == "json_object":
        schema = {"type": "object"}
    elif text_format is not None and text_format.type == "json_schema":
        schema = check_schema(text_format.schema_, "text.format.schema")
    fields = {
        "tools": specs,
        "tool_choice": choice,
        "tool_name": name,
        "parallel_tool_calls": parsed.parallel_tool_calls is not False,
        "response_schema": schema,
    }
    return fields, namespaces


def _spec(tool: FunctionTool, where: str) -> ToolSpec:
    parameters = check_schema(tool.parameters or NO_ARGUMENTS, where)
    return ToolSpec(name=tool.name, description=tool.description or "", parameters=parameters)


def _refuse_unsupported(parsed: ResponsesRequest) -> None:
    if parsed.background:
        raise ApiError(400, "background responses are not supported here; leave `background` unset", param="background")
    if parsed.conversation is not None:
        raise ApiError(
            400,
            "conversations are not supported here; chain responses with `previous_response_id`",
            param="conversation",
        )


# --- engine -> response ------------------------------------------------------------------------------


def responses_usage(usage: Usage, kv_enabled: bool) -> dict:
    """`input_tokens` includes the cached ones (`input_tokens_details.cached_tokens`); new prompt tokens
    are stored for reuse (`cache_write_tokens`)."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.prompt_tokens - usage.cached_tokens if kv_enabled else 0,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _message_item(item_id: str, text: str, status: str) -> dict:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "message", "id": item_id, "role": "assistant", "status": status, "content": [part]}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str, namespace: str | None) -> dict:
    item = {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }
    return {**item, "namespace": namespace} if namespace else item


class _Turn:
    """One response in the making: its fixed fields, its session, and what is kept when it ends."""

    def __init__(self, request, parsed: ResponsesRequest, body: dict, model: str, store: ResponseStore):
        self.server = request.app.ctx.server
        self.parsed = parsed
        self.store = store
        self.id = _item_id("resp")
        self.keep = parsed.store is not False
        self.namespaces: dict[str, str] = {}
        text_config = body.get("text") if isinstance(body.get("text"), dict) else {}
        # What the turn samples with: the request's values, else the model's defaults.
        defaults = self.server.engine.info.sampling_defaults
        self.head = {
            "id": self.id,
            "object": "response",
            "created_at": int(time.time()),
            "model": model,
            "instructions": parsed.instructions,
            "max_output_tokens": parsed.max_output_tokens,
            "metadata": parsed.metadata or {},
            "parallel_tool_calls": parsed.parallel_tool_calls is not False,
            "previous_response_id": parsed.previous_response_id,
            "prompt_cache_key": parsed.prompt_cache_key,
            "safety_identifier": parsed.safety_identifier,
            "user": parsed.user,
            "store": self.keep,
            "temperature": defaults.temperature if parsed.temperature is None else parsed.temperature,
            "top_p": defaults.top_p if parsed.top_p is None else parsed.top_p,
            "text": {**text_config, "format": text_config.get("format") or {"type": "text"}},
            "tool_choice": body.get("tool_choice") or "auto",
            "tools": body.get("tools") or [],
            "truncation": "disabled",
            "reasoning": {"effort": None, "summary": None},
            "background": False,
            "service_tier": "default",
        }

    def response(self, status: str, output: list[dict], finished: TurnFinished | None = None, error=None) -> dict:
        """The response object: in progress (no output yet), or final from `finished`."""
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        usage = responses_usage(finished.usage, self.server.engine.kv_enabled) if finished is not None else None
        done = status in ("completed", "incomplete", "failed")
        sampled = finished.sampling if finished is not None else None
        return {
            **self.head,
            **({"temperature": sampled.temperature, "top_p": sampled.top_p} if sampled is not None else {}),
            "status": status,
            "completed_at": int(time.time()) if done else None,
            "error": error,
            "incomplete_details": incomplete,
            "output": output,
            "usage": usage,
        }

    def output(self, finished: TurnFinished) -> list[dict]:
        status = "incomplete" if finished.finish_reason == "length" else "completed"
        items = []
        if finished.text or not finished.tool_calls:
            items.append(_message_item(_item_id("msg"), finished.text, status))
        for call in finished.tool_calls:
            namespace = self.namespaces.get(call.name)
            items.append(_call_item(_item_id("fc"), call.id, call.name, call.arguments, "completed", namespace))
        return items

    async def remember(self, conversation: list[ChatMessage], finished: TurnFinished, response: dict, session_id):
        """With `store`, keep the response for `previous_response_id` and GET, and the chain's transcript as
        its agent session's (`agents ls`, `GET /v1/agents/{id}`). A cancelled turn is not kept."""
        if not self.keep or finished.finish_reason == "cancelled":
            return
        reply = ChatMessage(role="assistant", content=finished.text, tool_calls=finished.tool_calls)
        whole = [*conversation, reply]
        stored = StoredResponse(id=self.id, session_id=session_id, conversation=whole, response=response)
        await asyncio.to_thread(self.store.save, stored)
        if session_id is not None:
            context_tokens = finished.usage.prompt_tokens + finished.usage.completion_tokens
            await asyncio.to_thread(self._record_session, session_id, whole, context_tokens)

    def _record_session(self, session_id: str, conversation: list[ChatMessage], context_tokens: int) -> None:
        engine = self.server.engine
        sessions = SessionStore.of(self.server.settings)
        try:
            recorded = sessions.record_conversation(
                session_id,
                self.parsed.instructions,
                conversation,
                context_tokens,
                engine.model_id,
                engine.info.fingerprint,
            )
        except SessionCorrupt as exc:
            log.warning("response %s: its agent transcript was not updated: %s", self.id, exc)
            return
        if not recorded:
            log.info("response %s: agent %r holds turns of its own; its transcript stays", self.id, session_id)


@bp.post("")
async def create_response(request):
    server = request.app.ctx.server
    body = read_json(request)
    parsed = _parse(body)
    _refuse_unsupported(parsed)
    engine = server.ready_engine()
    model = await server.model_for(parsed.model)
    store = _store(request)
    previous = None
    if parsed.previous_response_id is not None:
        previous = _stored(store, parsed.previous_response_id)
        if previous is None:
            raise ApiError(
                400,
                f"Previous response with id '{parsed.previous_response_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
    turn = _Turn(request, parsed, body, model, store)
    new_messages = input_messages(parsed)
    if not new_messages:
        raise ApiError(400, "input: send the text or the items to respond to", param="input")
    if new_messages[-1].role == "user" and not new_messages[-1].content.strip():
        raise ApiError(400, "input: the message is empty; send some text", param="input")
    conversation = [*(previous.conversation if previous else []), *new_messages]
    fields, turn.namespaces = _tool_fields(parsed)
    session_id = (
        scoped(
            request,
            session_id_from(request.headers, body)
            or (parsed.prompt_cache_key and checked_session_id(parsed.prompt_cache_key, "prompt_cache_key")),
        )
        or (previous.session_id if previous else None)
        or scoped(request, turn.id if turn.keep else None)
    )
    generation = generation_request(
        template_messages(parsed.instructions, conversation),
        parsed.max_output_tokens or DEFAULT_MAX_TOKENS,
        session_id,
        tenant=request.ctx.tenant,
        retention_s=openai_retention_s(parsed.prompt_cache_retention),
        temperature=parsed.temperature,
        top_p=parsed.top_p,
        frequency_penalty=parsed.frequency_penalty,
        presence_penalty=parsed.presence_penalty,
        repetition_penalty=parsed.repetition_penalty,
        **fields,
    )
    # A session's requests run one at a time, in arrival order (the lock is FIFO).
    async with (
        server.locks.hold(session_id),
        TurnStream(engine, generation, server.settings.sse_keepalive_s) as stream_turn,
    ):
        if parsed.stream:
            return await _stream(request, stream_turn, turn, conversation, session_id)
        finished = await stream_turn.finished()
        server.metrics.observe_turn(finished)
        status = "incomplete" if finished.finish_reason == "length" else "completed"
        response = turn.response(status, turn.output(finished), finished)
        await turn.remember(conversation, finished, response, session_id)
        return json_response(response)


async def _stream(request, stream_turn: TurnStream, turn: _Turn, conversation: list[ChatMessage], session_id):
    """response.created, response.in_progress, then per output item: output_item.added, its content
    (content_part.added, output_text.delta…, output_text.done, content_part.done; or
    function_call_arguments.delta…, .done), output_item.done; last response.completed (or
    response.incomplete, or response.failed after an error). Keep-alive comments between."""
    events = _OutputEvents(turn)
    async with sse.EventStream(request) as stream:
        async for event in stream_turn.events():
            if event is None:
                await stream.send(sse.KEEPALIVE_COMMENT)
            elif isinstance(event, TurnStarted):
                await stream.send(*events.begin())
            elif isinstance(event, TurnChunk):
                await stream.send(*events.begin(), *events.text(event.text))
            elif isinstance(event, ToolCallStart):
                await stream.send(*events.begin(), *events.call(event.call_id, event.name))
            elif isinstance(event, ToolCallDelta):
                await stream.send(*events.arguments(event.arguments))
            elif isinstance(event, TurnFinished):
                request.app.ctx.server.metrics.observe_turn(event)
                pending = [*events.begin(), *events.finish(event)]
                status = "incomplete" if event.finish_reason == "length" else "completed"
                response = turn.response(status, events.items, event)
                await turn.remember(conversation, event, response, session_id)
                await stream.send(*pending, events.event(f"response.{status}", response=response))
            elif isinstance(event, TurnFailed):
                if not stream.opened:
                    raise failure(event)
                error = failure(event)
                body = {"code": "server_error" if error.status >= 500 else "invalid_request", "message": error.message}
                failed = turn.response("failed", events.items, error=body)
                await stream.send(*events.begin(), events.event("response.failed", response=failed))


class _OutputEvents:
    """Output items as stream events, in order: the open item is finished before the next one is added.

    `items` holds each item as it stands (the same dicts end up in the final response), so what the
    events built and what response.completed reports always agree."""

    def __init__(self, turn: _Turn):
        self.turn = turn
        self.sequence = 0
        self.started = False
        self.items: list[dict] = []
        self.open: int | None = None  # index of the item being streamed
        self.calls: list[dict] = []  # function_call items in the engine's call order

    def event(self, kind: str, **fields) -> str:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse.event(kind, payload)

    def begin(self) -> list[str]:
        if self.started:
            return []
        self.started = True
        response = self.turn.response("in_progress", [])
        return [
            self.event("response.created", response=response),
            self.event("response.in_progress", response=response),
        ]

    def text(self, delta: str) -> list[str]:
        events = []
        if self.open is None or self.items[self.open]["type"] != "message":
            item = _message_item(_item_id("msg"), "", "in_progress")
            events += [*self.close(), *self._add(item)]
            events.append(self._on_open("response.content_part.added", content_index=0, part=dict(item["content"][0])))
        if delta:
            self.items[self.open]["content"][0]["text"] += delta
            events.append(self._on_open("response.output_text.delta", content_index=0, delta=delta, logprobs=[]))
        return events

    def call(self, call_id: str, name: str) -> list[str]:
        item = _call_item(_item_id("fc"), call_id, name, "", "in_progress", self.turn.namespaces.get(name))
        events = [*self.close(), *self._add(item)]
        self.calls.append(item)
        return events

    def arguments(self, delta: str) -> list[str]:
        if self.open is None or self.items[self.open]["type"] != "function_call" or not delta:
            return []
        self.items[self.open]["arguments"] += delta
        return [self._on_open("response.function_call_arguments.delta", delta=delta)]

    def finish(self, finished: TurnFinished) -> list[str]:
        """Close the output with the turn's final calls and text: a call whose arguments the engine
        settled differently ends with the settled ones; text or calls never streamed are added whole."""
        status = "incomplete" if finished.finish_reason == "length" else "completed"
        if self.open is not None and self.items[self.open]["type"] == "function_call":
            index = len(self.calls) - 1
            if index < len(finished.tool_calls):
                self.items[self.open]["arguments"] = finished.tool_calls[index].arguments
        events = self.close(status)
        has_text = any(item["type"] == "message" for item in self.items)
        if (finished.text and not has_text) or not (self.items or finished.tool_calls):
            events += [*self.text(finished.text), *self.close(status)]
        for call in finished.tool_calls[len(self.calls) :]:
            events += [*self.call(call.id, call.name), *self.arguments(call.arguments), *self.close()]
        for item in self.calls[len(finished.tool_calls) :]:
            item["status"] = "incomplete"  # a call the engine dropped (cut before its name was complete)
        return events

    def close(self, status: str = "completed") -> list[str]:
        if self.open is None:
            return []
        item = self.items[self.open]
        item["status"] = status
        if item["type"] == "message":
            part = item["content"][0]
            events = [
                self._on_open("response.output_text.done", content_index=0, text=part["text"], logprobs=[]),
                self._on_open("response.content_part.done", content_index=0, part=dict(part)),
            ]
        else:
            events = [self._on_open("response.function_call_arguments.done", arguments=item["arguments"])]
        events.append(self.event("response.output_item.done", output_index=self.open, item=item))
        self.open = None
        return events

    def _add(self, item: dict) -> list[str]:
        """Add `item` as the open one; a message is announced with no content (its part follows)."""
        self.items.append(item)
        self.open = len(self.items) - 1
        announced = {**item, "content": []} if item["type"] == "message" else dict(item)
        return [self.event("response.output_item.added", output_index=self.open, item=announced)]

    def _on_open(self, kind: str, **fields) -> str:
        return self.event(kind, item_id=self.items[self.open]["id"], output_index=self.open, **fields)


@bp.get("/<response_id:str>")
async def get_response(request, response_id: str):
    response_id = unquote(response_id)  # stored responses are read without the engine (also while it loads)
    stored = _stored(_store(request), response_id)
    if stored is None:
        raise ApiError(404, f"Response with id '{response_id}' not found.", param="response_id")
    return json_response(stored.response)


@bp.delete("/<response_id:str>")
async def delete_response(request, response_id: str):
    response_id = unquote(response_id)
    store = _store(request)
    try:
        stored = await asyncio.to_thread(store.get, response_id)
    except StoredResponseCorrupt:
        stored = None  # a damaged file is deleted all the same
    if stored is not None and stored.session_id == scoped(request, response_id):
        await _forget_agent_it_started(request, stored)
    if not await asyncio.to_thread(store.delete, response_id):
        raise ApiError(404, f"Response with id '{response_id}' not found.", param="response_id")
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def _forget_agent_it_started(request, stored: StoredResponse) -> None:
    """A response that started a chain named its agent session after itself: the agent (transcript and
    KV cache) goes with it while it holds that response's turns alone. A chain that went on keeps its
    agent: its later responses resume there (`DELETE /v1/agents/{id}` removes it)."""
    server = request.app.ctx.server
    engine = server.ready_engine()  # before anything is deleted: a 503 here is retried whole
    sessions = SessionStore.of(server.settings)
    key = stored.session_id
    async with server.locks.hold(key), held_across_processes(sessions.turn_lock(key)):
        try:
            session = await asyncio.to_thread(sessions.get, key)
        except SessionCorrupt:
            return
        if session is not None and session.messages == stored.conversation:
            await asyncio.to_thread(sessions.delete, key)
            await asyncio.to_thread(engine.forget_session, key)
