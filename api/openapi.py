"""The OpenAPI 3.1 document, generated from the same pydantic models that validate the requests."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

from pydantic.json_schema import models_json_schema

from api.schemas.agents import AgentMessageRequest, AgentPolicyRequest, NewIdRequest, SwapRequest
from api.schemas.anthropic import CountTokensRequest, MessagesRequest
from api.schemas.ollama import OllamaChatRequest, OllamaGenerateRequest, OllamaShowRequest
from api.schemas.openai import ChatCompletionRequest
from api.schemas.responses import ResponsesRequest

REQUEST_MODELS = [
    MessagesRequest,
    CountTokensRequest,
    ChatCompletionRequest,
    ResponsesRequest,
    OllamaChatRequest,
    OllamaGenerateRequest,
    OllamaShowRequest,
    AgentMessageRequest,
    AgentPolicyRequest,
    NewIdRequest,
    SwapRequest,
]

# (method, path, tag, summary, request model, streams)
ROUTES = [
    ("post", "/v1/messages", "Anthropic", "Create a message (Anthropic Messages)", MessagesRequest, True),
    ("post", "/v1/messages/count_tokens", "Anthropic", "Count a request's input tokens", CountTokensRequest, False),
    ("post", "/v1/chat/completions", "OpenAI", "Create a chat completion", ChatCompletionRequest, True),
    ("post", "/v1/responses", "OpenAI", "Create a response (OpenAI Responses)", ResponsesRequest, True),
    ("get", "/v1/responses/{response_id}", "OpenAI", "A stored response", None, False),
    ("delete", "/v1/responses/{response_id}", "OpenAI", "Delete a stored response", None, False),
    ("get", "/v1/models", "Models", "List models (Anthropic shape with an anthropic-version header)", None, False),
    ("get", "/v1/models/{model_id}", "Models", "One model", None, False),
    ("post", "/api/chat", "Ollama", "Chat (Ollama; NDJSON unless stream is false)", OllamaChatRequest, True),
    ("post", "/api/generate", "Ollama", "Answer a prompt (Ollama)", OllamaGenerateRequest, True),
    ("post", "/api/show", "Ollama", "The model's details and capabilities (Ollama)", OllamaShowRequest, False),
    ("get", "/api/tags", "Ollama", "List models (Ollama)", None, False),
    ("get", "/api/ps", "Ollama", "Loaded models (Ollama): none while the model loads", None, False),
    ("get", "/api/version", "Ollama", "The Ollama API version this server follows", None, False),
    ("get", "/v1/agents", "Agents", "List agents: turns, tokens, cache tier, bytes, last use", None, False),
    ("get", "/v1/agents/{agent_id}", "Agents", "One agent: transcript and KV blocks", None, False),
    ("patch", "/v1/agents/{agent_id}", "Agents", "Pin an agent or set its retention", AgentPolicyRequest, False),
    ("delete", "/v1/agents/{agent_id}", "Agents", "Delete an agent's transcript and caches", None, False),
    ("post", "/v1/agents/{agent_id}/messages", "Agents", "Send an agent its next turn", AgentMessageRequest, True),
    ("post", "/v1/agents/{agent_id}/fork", "Agents", "Fork an agent: its transcript and KV cache", NewIdRequest, False),
    ("post", "/v1/agents/{agent_id}/rename", "Agents", "Rename an agent, its KV cache kept", NewIdRequest, False),
    ("get", "/v1/agents/{agent_id}/export", "Agents", "An agent as one file: transcript and KV cache", None, False),
    ("post", "/v1/agents/import", "Agents", "Import an agent file (the body; ?as=ID names it)", None, False),
    ("get", "/health", "Server", "Readiness: 200 when serving, 503 while loading or swapping", None, False),
    ("get", "/metrics", "Server", "Prometheus metrics", None, False),
    ("get", "/admin/models", "Admin", "The models a swap may name (X-Admin-Key)", None, False),
    ("post", "/admin/swap", "Admin", "Swap the served model (X-Admin-Key)", SwapRequest, False),
]
OPEN_PATHS = {"/health"}  # with SEMANTIC_API_KEY set every other route needs the key (api/app.py)
# Answered while the model loads
ENGINELESS_PATHS = {"/metrics", "/v1/responses/{response_id}", "/api/ps", "/api/version", "/admin/models"}
CREATED_PATHS = {"/v1/agents/{agent_id}/fork", "/v1/agents/import"}  # answer 201 with what they made
AGENT_FILE = {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}  # engine/kv/agent_file.py


def package_version() -> str:
    try:
        return version("agent-memory")
    except PackageNotFoundError:
        return "0.0.0"


@cache
def openapi_document(app_version: str) -> dict:
    _, schemas = models_json_schema(
        [(model, "validation") for model in REQUEST_MODELS], ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, dict] = {}
    for method, path, tag, summary, model, streams in ROUTES:
        operation: dict = {
            "tags": [tag],
            "summary": summary,
            "operationId": f"{method}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "responses": _responses(method, path, model, streams),
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in ("model_id", "agent_id", "response_id")
            if "{" + name + "}" in path
        ]
        if parameters:
            operation["parameters"] = parameters
        if path == "/v1/agents/import":
            operation["requestBody"] = {"required": True, "content": AGENT_FILE}
            operation["parameters"] = [{"name": "as", "in": "query", "required": False, "schema": {"type": "string"}}]
        if model is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
            }
        if path in OPEN_PATHS:
            operation["security"] = []
        elif path.startswith("/admin"):
            operation["security"] = [{"AdminKey": []}]
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "agent-memory", "version": app_version},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
                "AdminKey": {"type": "apiKey", "in": "header", "name": "X-Admin-Key"},
            },
        },
        "security": [{"ApiKey": []}, {"Bearer": []}],
    }


def _responses(method: str, path: str, model, streams: bool) -> dict:
    """The statuses a route answers; 414 and 431 (an over-long head) may come from any route."""
    responses = {"201" if path in CREATED_PATHS else "200": _ok(path, streams)}
    if model is not None or "{agent_id}" in path or path in CREATED_PATHS:
        responses["400"] = _error("Invalid request: a bad body, or a session id that is too long or not UTF-8")
    if path.startswith("/admin"):
        responses["401"] = _error("X-Admin-Key missing")
        responses["403"] = _error("X-Admin-Key wrong, or admin routes disabled (no SEMANTIC_ADMIN_KEY)")
    elif path not in OPEN_PATHS:
        responses["401"] = _error("API key missing or wrong (when SEMANTIC_API_KEY is set)")
    if "{" in path or (model is not None and "model" in model.model_fields):
        responses["404"] = _error("No such item, or a model name not served (SEMANTIC_STRICT_MODEL_NAMES)")
    if "{agent_id}" in path or path in CREATED_PATHS:
        responses["409"] = _error(
            "The new id is taken (a fork, an import), an agent file made for another model, or an agent's "
            "stored transcript or cache that cannot be read or exported"
        )
    if model is not None or path in CREATED_PATHS:
        responses["413"] = _error("Body larger than SEMANTIC_MAX_REQUEST_MB (an agent file: SEMANTIC_MAX_IMPORT_MB)")
    if streams:
        responses["429"] = _error("Queue full (SEMANTIC_MAX_QUEUE); retry after Retry-After seconds")
    if path not in ENGINELESS_PATHS:
        responses["503"] = _error("Model loading, swapping or failed; retry after Retry-After seconds")
    return responses


# One event of a stream, as a client's SSE parser sees it (the field names of the SSE format; `data` is
# the called API's JSON chunk as text).
SERVER_SENT_EVENT = {
    "type": "object",
    "description": "Each server-sent event of the stream",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}},
    "required": ["data"],
}

# Ollama's streams: one JSON object a line (api/ndjson.py)
NDJSON = "application/x-ndjson"
JSON_LINES = {"type": "string", "description": 'JSON objects, one a line; the last has "done": true'}


def _error(description: str) -> dict:
    return {"description": f"{description}. JSON in the called API's shape.", "content": {"application/json": {}}}


def _ok(path: str, streams: bool) -> dict:
    if path == "/metrics":
        return {
            "description": "Prometheus text format 0.0.4",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    if path.endswith("/export"):
        return {"description": "The agent file", "content": AGENT_FILE}
    content = {"application/json": {"schema": {"type": "object"}}}
    if streams and path.startswith("/api/"):
        content[NDJSON] = {"schema": JSON_LINES}
    elif streams:
        content["text/event-stream"] = {"schema": SERVER_SENT_EVENT}
    return {"description": "Created" if path in CREATED_PATHS else "OK", "content": content}
