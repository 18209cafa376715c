"""What a caller asks the engine for: validated once here, with pydantic."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.kv.policy import MAX_RETENTION_S
from engine.session_ids import has_surrogate

# Names the APIs allow for functions: the same rule for OpenAI and Anthropic tools.
TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_.-]{1,128}$"
# The arguments schema of a tool that takes none
NO_ARGUMENTS = {"type": "object", "properties": {}}


class ToolCall(BaseModel):
    """A call the model made: `arguments` is the JSON text of its arguments object."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: str


class ToolSpec(BaseModel):
    """A function the model may call; `parameters` is the JSON schema of its arguments."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: dict(NO_ARGUMENTS))


class ChatMessage(BaseModel):
    """One turn. An assistant turn may carry tool calls; a "tool" turn is one call's result."""

    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None  # the tool a "tool" turn answers (else found from the call with its id)
    is_error: bool = False  # a "tool" turn that reports a failed call

    @field_validator("content")
    @classmethod
    def _is_text(cls, content: str) -> str:
        # A byte that is not UTF-8 (a terminal's, a file's) arrives as a lone surrogate: no tokenizer takes it
        if has_surrogate(content):
            raise ValueError("the text holds bytes that are not UTF-8 (a lone surrogate)")
        return content


class SamplingParams(BaseModel):
    """mlx-lm's sampler settings and repetition penalties; temperature 0 is greedy. A value left as None is
    the serving model's default, else the engine's (engine.sampling.ENGINE_DEFAULTS): the engine fills
    them in when the turn starts (`over`), so what a caller sets always wins, field by field."""

    model_config = ConfigDict(frozen=True)

    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    # Penalties on tokens the answer already holds (its last `penalty_context_tokens`): mlx-lm's logits
    # processors. repetition_penalty divides a positive logit (multiplies a negative one), 1.0 is off;
    # presence_penalty subtracts once per token present, frequency_penalty once per occurrence (OpenAI's).
    repetition_penalty: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    penalty_context_tokens: int | None = Field(default=None, ge=1, le=65536)
    seed: int | None = Field(default=None, ge=0, lt=2**64)  # MLX's random keys are 64-bit
    # Never end the turn on an end-of-turn token (benchmarks that need a fixed number of tokens).
    ignore_eos: bool = False

    def over(self, defaults: SamplingParams) -> SamplingParams:
        """These settings with each one left unset taken from `defaults`."""
        unset = {name: getattr(defaults, name) for name in SAMPLING_VALUES if getattr(self, name) is None}
        return self.model_copy(update=unset) if unset else self

    def values(self) -> dict[str, float | int | None]:
        """The sampling values by name (seed and ignore_eos left out): what a user is shown."""
        return {name: getattr(self, name) for name in SAMPLING_VALUES}


# The fields a model or the engine may give a default for.
SAMPLING_VALUES = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "penalty_context_tokens",
)


class GenerationRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(default=512, ge=1)
    sampling: SamplingParams = SamplingParams()
    stop: list[str] = Field(default_factory=list)
    session_id: str | None = None
    # Whose caches it may use and leave (the API's key holder; "" for the one tenant there is without
    # named keys): prefix blocks are shared only among requests of one tenant.
    tenant: str = ""
    request_id: str = Field(default_factory=lambda: f"req_{uuid.uuid4().hex[:16]}")
    tools: list[ToolSpec] = Field(default_factory=list)
    # "auto": the model may call a tool; "required": it must (`tool_name`: that one); "none": tools hidden.
    tool_choice: Literal["auto", "none", "required"] = "auto"
    tool_name: str | None = None
    parallel_tool_calls: bool = True
    # A JSON schema the answer text must match (structured output); {"type": "object"} for any object.
    response_schema: dict[str, Any] | None = None
    # A client's cache hints for its session (engine/kv/policy.py): keep its caches at least this long from
    # now (Anthropic cache_control's ttl); expire them after this much idle time (OpenAI
    # prompt_cache_retention)
    keep_s: int | None = Field(default=None, ge=1)
    retention_s: int | None = Field(default=None, ge=1, le=MAX_RETENTION_S)

    @property
    def offers_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def constrained(self) -> bool:
        """Sampling follows a grammar: a forced tool call or a response schema."""
        return (self.offers_tools and self.tool_choice == "required") or self.response_schema is not None

    @field_validator("messages")
    @classmethod
    def _last_message_has_text(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role == "user" and not messages[-1].content.strip():
            raise ValueError("the message is empty; type something to send")
        return messages

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> GenerationRequest:
        names = [tool.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        if self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice requires a tool call but no tools were given")
        if self.tool_name is not None and self.tool_name not in names:
            raise ValueError(f"tool_choice names {self.tool_name!r}, which is not among the tools")
        return self

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, stop: list[str]) -> list[str]:
        if any(not s for s in stop):
            raise ValueError("stop sequences must not be empty strings")
        return stop
