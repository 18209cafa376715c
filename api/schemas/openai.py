"""OpenAI Chat Completions request bodies. Unknown fields are accepted and ignored."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from api.validation import Seed, StopSequence, Whole
from engine.requests import TOOL_NAME_PATTERN


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    # The document names only the parts read; the others are parsed to be refused by name.
    type: Annotated[
        Literal["text", "image_url", "input_audio", "file", "refusal"],
        WithJsonSchema({"type": "string", "enum": ["text", "refusal"]}),
    ]
    text: str | None = None
    refusal: str | None = None


class FunctionCall(_Open):
    name: str
    arguments: str = "{}"


class ToolCallIn(_Open):
    """An earlier call, as the client sends the assistant's turn back."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Open):
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Open):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: FunctionName


class JsonSchemaFormat(_Open):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


def _schema_comes_with_json_schema(schema: dict) -> None:
    # Parsed as one model so that a missing schema is refused with a hint; documented as it is taken.
    schema["if"] = {"properties": {"type": {"const": "json_schema"}}, "required": ["type"]}
    schema["then"] = {
        "properties": {
            "json_schema": {"type": "object", "required": ["schema"], "properties": {"schema": {"type": "object"}}}
        },
        "required": ["json_schema"],
    }


class ResponseFormat(_Open):
    model_config = ConfigDict(extra="allow", json_schema_extra=_schema_comes_with_json_schema)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Open):
    include_usage: bool = False


class ChatCompletionRequest(_Open):
    """POST /v1/chat/completions"""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    max_tokens: Whole | None = Field(default=None, ge=1)
    max_completion_tokens: Whole | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    # An extension (as in vLLM and mlx-lm's server): above 1.0 makes tokens the answer holds less likely.
    repetition_penalty: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    stop: StopSequence | list[StopSequence] | None = None
    seed: Seed | None = None
    n: Whole | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    safety_identifier: str | None = None
    # Names the session when no session id is sent; its retention expires the session's caches (api/cache_hints.py)
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
