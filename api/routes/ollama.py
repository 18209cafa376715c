"""Ollama's API, for Ollama front-ends: POST /api/chat and /api/generate (NDJSON streams unless
`"stream": false`), and GET /api/version, /api/tags, /api/ps and POST /api/show about the served model.

The same engine, KV cache and sessions as the other APIs: a session id (X-Session-ID) makes a conversation
one agent that resumes from its cache.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from sanic import Blueprint
from sanic.response import json as json_response

from api.access_log import note_for
from api.bridge import TurnStream, failure
from api.errors import ApiError
from api.generation import check_prompt_fits, check_schema, generation_request, text_only_error
from api.ndjson import JsonLinesStream
from api.ollama_format import done_fields, error_body, timestamp
from api.ollama_models import listed_local, listed_model, running_model, shown_model, weight_files
from api.routes.openai import DEFAULT_MAX_TOKENS
from api.schemas.ollama import (
    RANDOM_SEED,
    OllamaChatRequest,
    OllamaGenerateRequest,
    OllamaMessage,
    OllamaOptions,
    OllamaShowRequest,
)
from api.sessions import scoped, session_id_from
from api.validation import parse, read_json
from engine.events import TurnChunk, TurnFailed, TurnFinished
from engine.requests import NO_ARGUMENTS, ChatMessage, ToolCall, ToolSpec

bp = Blueprint("ollama", url_prefix="/api")

# The Ollama release whose API this subset follows (clients refuse servers older than what they need:
# VS Code Copilot asks for 0.6.4 or later).
OLLAMA_API_VERSION = "0.9.0"
# Ollama clients name models "name:tag", and a bare name means its ":latest".
DEFAULT_TAG = ":latest"

# One line of an answer in progress: the text (and, for /api/chat, the tool calls) it adds.
Piece = Callable[[str, list[dict]], dict]


def chat_piece(text: str, tool_calls: list[dict]) -> dict:
    message = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"message": message}


def generate_piece(text: str, tool_calls: list[dict]) -> dict:
    return {"response": text}


def engine_messages(messages: list[OllamaMessage]) -> list[ChatMessage]:
    """Ollama's turns as chat messages. A "tool" message names the call it answers by id, by tool name or by
    its place among the results after the assistant's calls."""
    converted = []
    unanswered: list[ToolCall] = []  # the last assistant turn's calls that have no result yet
    for index, message in enumerate(messages):
        if message.images:
            raise text_only_error("image", f"messages.{index}.images")
        text = message.content or ""
        if message.role == "tool":
            answered = _answered_call(unanswered, message)
            call_id = message.tool_call_id or (answered.id if answered else f"call_{index}")
            name = message.tool_name or (answered.name if answered else None)
            converted.append(ChatMessage(role="tool", content=text, tool_call_id=call_id, name=name))
            continue
        calls = tuple(
            ToolCall(id=call.id or f"call_{index}_{number}", name=call.function.name, arguments=_json(call))
            for number, call in enumerate(message.tool_calls or ())
        )
        if message.role == "assistant":
            unanswered = list(calls)
        converted.append(ChatMessage(role=message.role, content=text, tool_calls=calls))
    return converted


def _json(call) -> str:
    arguments = call.function.arguments
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _answered_call(unanswered: list[ToolCall], message: OllamaMessage) -> ToolCall | None:
    """The call `message` answers, taken off `unanswered`; None when no call is left to answer."""
    for call in unanswered:
        if call.id == message.tool_call_id or (message.tool_call_id is None and call.name == message.tool_name):
            unanswered.remove(call)
            return call
    return unanswered.pop(0) if unanswered and message.tool_call_id is None else None


def _options(options: OllamaOptions | None, request_format) -> dict:
    """Options and `format` as the engine's request fields."""
    options = options or OllamaOptions()
    limit = options.num_predict
    if request_format == "json":
        schema = {"type": "object"}
    elif isinstance(request_format, dict):
        schema = check_schema(request_format, "format")
    else:
        schema = None
    return {
        # -1 and -2 (Ollama's "no limit", "fill the context") get the default; the context caps every answer
        "max_tokens": limit if limit is not None and limit > 0 else DEFAULT_MAX_TOKENS,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "top_k": options.top_k,
        "seed": None if options.seed == RANDOM_SEED else options.seed,
        "stop": [options.stop] if isinstance(options.stop, str) else options.stop,
        "repetition_penalty": options.repeat_penalty,
        "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty,
        "response_schema": schema,
    }


def _tools(parsed: OllamaChatRequest) -> list[ToolSpec]:
    return [
        ToolSpec(
            name=tool.function.name,
            description=tool.function.description or "",
            parameters=check_schema(tool.function.parameters or NO_ARGUMENTS, f"tools.{index}.function.parameters"),
        )
        for index, tool in enumerate(parsed.tools or ())
    ]


def _tool_calls(finished: TurnFinished) -> list[dict]:
    return [
        {"id": call.id, "function": {"index": index, "name": call.name, "arguments": _arguments(call.arguments)}}
        for index, call in enumerate(finished.tool_calls)
    ]


def _arguments(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:  # a call cut short by num_predict: its arguments are incomplete
        return {}
    return value if isinstance(value, dict) else {}


def _served_model(server, name: str) -> str:
    """The served model's name; with strict model names, `name` must be it (":latest" or not)."""
    bare = name.removesuffix(DEFAULT_TAG)
    return server.served_model(bare if bare in server.model_names() else name)


async def _model_for(server, name: str) -> str:
    """As _served_model, loading the model `name` names first where the server loads on demand."""
    bare = name.removesuffix(DEFAULT_TAG)
    return await server.model_for(bare if bare in server.model_names() or name.endswith(DEFAULT_TAG) else name)


def _loaded(model: str, piece: Piece) -> dict:
    """Ollama's answer to a request with nothing to generate: the model is loaded (it always is)."""
    return {"model": model, "created_at": timestamp(), **piece("", []), "done": True, "done_reason": "load"}


@bp.post("/chat")
async def chat(request):
    server = request.app.ctx.server
    body = read_json(request)
    parsed = parse(OllamaChatRequest, body)
    server.ready_engine()
    model = await _model_for(server, parsed.model)
    if not parsed.messages:
        return json_response(_loaded(model, chat_piece))
    generation = _generation(request, body, parsed, engine_messages(parsed.messages), tools=_tools(parsed))
    return await _answer(request, generation, model, parsed.stream, chat_piece)


@bp.post("/generate")
async def generate(request):
    server = request.app.ctx.server
    body = read_json(request)
    parsed = parse(OllamaGenerateRequest, body)
    server.ready_engine()
    _refuse_raw_prompts(parsed)
    if parsed.images:
        raise text_only_error("image", "images")
    model = await _model_for(server, parsed.model)
    if not parsed.prompt and not parsed.system:
        return json_response(_loaded(model, generate_piece))
    messages = [ChatMessage(role="system", content=parsed.system)] if parsed.system else []
    if parsed.prompt:
        messages.append(ChatMessage(role="user", content=parsed.prompt))
    generation = _generation(request, body, parsed, messages)
    return await _answer(request, generation, model, parsed.stream, generate_piece)


def _generation(request, body: dict, parsed, messages: list[ChatMessage], **extra):
    """The engine request of a chat or generate request: its session (from the headers or body, scoped
    to the caller), its options and format."""
    return generation_request(
        messages,
        session_id=scoped(request, session_id_from(request.headers, body)),
        tenant=request.ctx.tenant,
        **extra,
        **_options(parsed.options, parsed.format),
    )


def _refuse_raw_prompts(parsed: OllamaGenerateRequest) -> None:
    if parsed.raw:
        raise ApiError(
            400, "raw: prompts are always rendered with the model's chat template; send raw false", param="raw"
        )
    if parsed.template:
        raise ApiError(
            400, "template: the model's own chat template is always used; leave template out", param="template"
        )
    if parsed.suffix:
        raise ApiError(400, "suffix: fill-in-the-middle is not supported; leave suffix out", param="suffix")


async def _answer(request, generation, model: str, stream: bool, piece: Piece):
    server = request.app.ctx.server
    engine = server.engine
    note_for(request).session_id = generation.session_id
    await asyncio.to_thread(check_prompt_fits, engine, generation)  # too long: a 400 now, not after the queue
    # A session's requests run one at a time, in arrival order (the lock is FIFO).
    async with (
        server.locks.hold(generation.session_id),
        TurnStream(engine, generation, server.settings.sse_keepalive_s) as turn,
    ):
        if stream:
            return await _stream(request, turn, model, piece)
        finished = await turn.finished()
        server.metrics.observe_turn(finished)
        head = {"model": model, "created_at": timestamp()}
        return json_response({**head, **piece(finished.text, _tool_calls(finished)), **_last(request, finished)})


def _last(request, finished: TurnFinished) -> dict:
    return done_fields(finished, request.ctx.started)


async def _stream(request, turn: TurnStream, model: str, piece: Piece):
    """A line per piece of text ("done": false); the calls, whole, in a line of their own; the last line with
    "done": true and the figures. An error after the first line is a line {"error": …}."""
    async with JsonLinesStream(request) as stream:
        async for event in turn.events():
            head = {"model": model, "created_at": timestamp()}
            if isinstance(event, TurnChunk):
                await stream.send_line({**head, **piece(event.text, []), "done": False})
            elif isinstance(event, TurnFinished):
                request.app.ctx.server.metrics.observe_turn(event)
                if event.tool_calls:
                    await stream.send_line({**head, **piece("", _tool_calls(event)), "done": False})
                await stream.send_line({**head, **piece("", []), **_last(request, event)})
            elif isinstance(event, TurnFailed):
                if not stream.opened:
                    raise failure(event)
                await stream.send_line(error_body(failure(event)))


@bp.get("/version")
async def version(request):
    return json_response({"version": OLLAMA_API_VERSION})


@bp.get("/tags")
async def tags(request):
    """The served model, then those a request would load (with SEMANTIC_LOAD_ON_DEMAND)."""
    server = request.app.ctx.server
    engine = server.ready_engine()
    info = engine.info
    files = await asyncio.to_thread(weight_files, info.path)
    others = [listed_local(model) for model in await server.other_models()]
    return json_response({"models": [listed_model(engine.model_id, info, files), *others]})


@bp.get("/ps")
async def running(request):
    """The loaded model; none while it loads (or failed to)."""
    engine = request.app.ctx.server.engine
    if engine.state not in ("ready", "swapping"):
        return json_response({"models": []})
    info = engine.info
    files = await asyncio.to_thread(weight_files, info.path)
    return json_response({"models": [running_model(engine.model_id, info, files)]})


@bp.post("/show")
async def show(request):
    server = request.app.ctx.server
    parsed = parse(OllamaShowRequest, read_json(request))
    engine = server.ready_engine()
    name = _served_model(server, parsed.model)
    info = engine.info
    files = await asyncio.to_thread(weight_files, info.path)
    template = getattr(engine.tokenizer, "chat_template", None)
    return json_response(shown_model(name, info, template if isinstance(template, str) else "", files))
