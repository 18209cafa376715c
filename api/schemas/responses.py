"""OpenAI Responses request bodies. Unknown fields are accepted and ignored (clients add new ones often)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, WithJsonSchema

from api.validation import Whole
from engine.requests import TOOL_NAME_PATTERN


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    """A piece of a message or of a tool's output; only text parts can be read by the models served here."""

    # The document names only the parts read; the others are parsed to be refused by name.
    type: Annotated[
        Literal["input_text", "output_text", "refusal", "input_image", "input_file", "input_audio"],
        WithJsonSchema({"type": "string", "enum": ["input_text", "output_text", "refusal"]}),
    ]
    text: str | None = None
    refusal: str | None = None


class MessageItem(_Open):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(_Open):
    """A call the model made earlier, sent back by the client."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = "{}"
    namespace: str | None = None


class FunctionCallOutputItem(_Open):
    """A call's result."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]


class ReasoningItem(_Open):
    """The model's reasoning from an earlier turn: not sent back to it (the models served here have none)."""

    type: Literal["reasoning"]


def _item_type(value: Any) -> str | None:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ITEM_TYPES else None


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(
        _item_type,
        custom_error_type="item_type",
        custom_error_message="the item type must be message, function_call, function_call_output or reasoning",
    ),
]
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


class FunctionTool(_Open):
    type: Literal["function"]
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class HostedTool(_Open):
    """A tool that runs at OpenAI (web_search, file_search, …) or a custom tool: accepted, not offered."""

    type: str


def _tool_type(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ("function", "namespace") else "hosted"


class NamespaceTool(_Open):
    """A named group of function tools (Codex sends one); its functions are offered like any other."""

    type: Literal["namespace"]
    name: str
    description: str | None = None
    tools: list[
        Annotated[
            Annotated[FunctionTool, Tag("function")] | Annotated[HostedTool, Tag("hosted")],
            Discriminator(lambda value: "function" if _tool_type(value) == "function" else "hosted"),
        ]
    ] = Field(default_factory=list)


Tool = Annotated[
    Annotated[FunctionTool, Tag("function")]
    | Annotated[NamespaceTool, Tag("namespace")]
    | Annotated[HostedTool, Tag("hosted")],
    Discriminator(_tool_type),
]


class FunctionChoice(_Open):
    type: Literal["function"]
    name: str


class AllowedTools(_Open):
    """`{"type": "allowed_tools", "mode": "auto" | "required", "tools": [{"type": "function", "name"}, …]}`"""

    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


class TextFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_Open):
    format: TextFormat | None = None
    verbosity: str | None = None


def _input_is_required(schema: dict) -> None:
    # Parsed as optional so that a missing or empty `input` is refused with a hint; documented as it is taken.
    items = next(member for member in schema["properties"]["input"]["anyOf"] if member.get("type") == "array")
    schema["properties"]["input"] = {"anyOf": [{"type": "string", "minLength": 1}, {**items, "minItems": 1}]}
    schema["required"] = [*schema.get("required", []), "input"]


class ResponsesRequest(_Open):
    """POST /v1/responses"""

    model_config = ConfigDict(extra="allow", json_schema_extra=_input_is_required)

    model: str = Field(min_length=1)
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    max_output_tokens: Whole | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    # An extension (as in vLLM and mlx-lm's server): above 1.0 makes tokens the answer holds less likely.
    repetition_penalty: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    stream: bool = False
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | AllowedTools | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None  # api/cache_hints.py
    user: str | None = None
    safety_identifier: str | None = None
    # Parsed to be refused when true (answers come in the request): documented as false or absent.
    background: Annotated[bool | None, WithJsonSchema({"enum": [False, None]})] = None
    # Parsed to be refused by name (responses chain by `previous_response_id`): documented as absent.
    conversation: Annotated[str | dict[str, Any] | None, WithJsonSchema({"type": "null"})] = None
    # Accepted and ignored: the models served here do not reason, and the context is never truncated.
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    truncation: str | None = None
