"""Building the engine's GenerationRequest from any API's parsed body; bad values become 400s."""

from __future__ import annotations

from pydantic import ValidationError

from api.errors import ApiError, from_validation_error
from engine.requests import ChatMessage, GenerationRequest, SamplingParams, ToolSpec


def generation_request(
    messages: list[ChatMessage],
    max_tokens: int,
    session_id: str | None,
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    repetition_penalty: float | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    seed: int | None = None,
    stop: list[str] | None = None,
    tools: list[ToolSpec] | None = None,
    tool_choice: str = "auto",
    tool_name: str | None = None,
    parallel_tool_calls: bool = True,
    response_schema: dict | None = None,
    tenant: str = "",
    keep_s: int | None = None,
    retention_s: int | None = None,
) -> GenerationRequest:
    try:
        return GenerationRequest(
            messages=messages,
            max_tokens=max_tokens,
            tenant=tenant,
            # Values left unset (None) are the serving model's defaults, filled in when the turn starts.
            sampling=SamplingParams(
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                repetition_penalty=repetition_penalty,
                presence_penalty=presence_penalty,
                frequency_penalty=frequency_penalty,
                seed=seed,
            ),
            stop=stop or [],
            session_id=session_id,
            tools=tools or [],
            tool_choice=tool_choice,
            tool_name=tool_name,
            parallel_tool_calls=parallel_tool_calls,
            response_schema=response_schema,
            keep_s=keep_s,
            retention_s=retention_s,
        )
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def check_prompt_fits(engine, request: GenerationRequest) -> int:
    """The request's prompt tokens, or a 400 at once when they leave no room in the model's context (the
    engine would say so too, but only once the request reaches the front of its queue). Renders the
    prompt: call it off the event loop; the engine's own render then reuses the tokens."""
    prompt_tokens = engine.count_tokens(request)
    context_length = engine.info.context_length
    if prompt_tokens >= context_length:
        raise ApiError(400, f"prompt is too long: {prompt_tokens} tokens > {context_length - 1} maximum")
    return prompt_tokens


def text_only_error(kind: str, where: str) -> ApiError:
    return ApiError(400, f"{where}: {kind} input is not supported; this server's models read text only", param=where)


def check_schema(schema, where: str) -> dict:
    """A JSON schema the grammar can use: an object (a boolean or missing schema is a client mistake)."""
    if not isinstance(schema, dict):
        raise ApiError(400, f"{where}: a JSON schema object is required", param=where)
    return schema
