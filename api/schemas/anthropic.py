"""Anthropic Messages request bodies. Unknown fields are accepted and ignored (clients add new ones often)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.validation import StopSequence, Whole
from engine.requests import TOOL_NAME_PATTERN


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextBlock(_Open):
    type: Literal["text"]
    text: str


class ImageBlock(_Open):
    type: Literal["image"]
    source: dict[str, Any]


class DocumentBlock(_Open):
    type: Literal["document"]
    source: dict[str, Any]


class ToolUseBlock(_Open):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(_Open):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] | None = None
    is_error: bool | None = None


class ThinkingBlock(_Open):
    type: Literal["thinking", "redacted_thinking"]


ContentBlock = Annotated[
    TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock,
    Field(discriminator="type"),
]


class Message(_Open):
    # "system" inside `messages`: Claude Code's mid-conversation system turns (beta mid-conversation-system-…)
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class Tool(_Open):
    # Client tools only ("custom" or no type): server tools (web search, code execution) run at Anthropic.
    type: Literal["custom"] | None = None
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(_Open):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class OutputFormat(_Open):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Open):
    format: OutputFormat | None = None


class Metadata(_Open):
    user_id: str | None = None


class _Conversation(_Open):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(_Conversation):
    """POST /v1/messages"""

    max_tokens: Whole = Field(ge=1)
    stop_sequences: list[StopSequence] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: Whole | None = Field(default=None, ge=0)
    # An extension (as in vLLM and mlx-lm's server): above 1.0 makes tokens the answer holds less likely.
    repetition_penalty: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    stream: bool = False
    metadata: Metadata | None = None


class CountTokensRequest(_Conversation):
    """POST /v1/messages/count_tokens"""
