"""Ollama request bodies (/api/chat, /api/generate, /api/show). Unknown fields are accepted and ignored, and
so are Ollama's load-time options (num_gpu, num_thread, …), which mean nothing to an engine whose model
stays loaded."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from api.validation import StopSequence, Whole
from engine.requests import TOOL_NAME_PATTERN

# Ollama's seed -1 asks for a random one (its default), as does leaving it out.
RANDOM_SEED = -1


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


def _generates_something(value: int) -> int:
    if value == 0:
        raise ValueError("0 tokens generates nothing; send at least 1, or -1 for the server's default")
    return value


# Ollama writes "no limit" as -1 and "fill the context" as -2; both get the server's default cap here.
NumPredict = Annotated[
    Whole,
    Field(ge=-2),
    AfterValidator(_generates_something),
    WithJsonSchema({"anyOf": [{"type": "integer", "enum": [-2, -1]}, {"type": "integer", "minimum": 1}]}),
]
# Parsed to be refused by name (the models read text only): documented as empty or absent.
NoImages = Annotated[list[Any] | None, WithJsonSchema({"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}]})]
# "json" (any JSON object), a JSON schema the answer must match, or "" / absent for free text.
Format = Literal["", "json"] | dict[str, Any] | None
# How long Ollama keeps a model loaded ("5m", 300): accepted, and meaningless here (the model stays loaded).
KeepAlive = float | str | None


class OllamaOptions(_Open):
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: Whole | None = Field(default=None, ge=0)
    seed: Annotated[Whole, Field(ge=RANDOM_SEED, lt=2**64)] | None = None
    stop: StopSequence | list[StopSequence] | None = None
    num_predict: NumPredict | None = None
    repeat_penalty: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    # Accepted and ignored: every request may use the model's whole context.
    num_ctx: Whole | None = Field(default=None, ge=1)


class OllamaFunctionCall(_Open):
    name: str
    # An object, as Ollama sends it; JSON text (the OpenAI way) is taken too.
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class OllamaToolCall(_Open):
    """An earlier call, as the client sends the assistant's turn back."""

    id: str | None = None
    function: OllamaFunctionCall


class OllamaMessage(_Open):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    images: NoImages = None
    tool_calls: list[OllamaToolCall] | None = None
    # The call a "tool" message answers: by id when the client kept it, else by tool name, else in order.
    tool_call_id: str | None = None
    tool_name: str | None = None
    # An earlier answer's reasoning: the models served here write none, and it is not sent back to them.
    thinking: str | None = None


class OllamaFunction(_Open):
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class OllamaTool(_Open):
    type: Literal["function"] = "function"
    function: OllamaFunction


class OllamaChatRequest(_Open):
    """POST /api/chat"""

    model: str = Field(min_length=1)
    # None or empty: only "load the model" (it is loaded), answered at once, as Ollama does.
    messages: list[OllamaMessage] | None = None
    tools: list[OllamaTool] | None = None
    format: Format = None
    options: OllamaOptions | None = None
    stream: bool = True
    keep_alive: KeepAlive = None
    # Accepted and ignored: the models served here do not reason.
    think: bool | str | None = None


class OllamaGenerateRequest(_Open):
    """POST /api/generate"""

    model: str = Field(min_length=1)
    # With no system prompt either, only "load the model", answered at once.
    prompt: str | None = None
    system: str | None = None
    format: Format = None
    options: OllamaOptions | None = None
    stream: bool = True
    keep_alive: KeepAlive = None
    think: bool | str | None = None
    images: NoImages = None
    # Ignored: a conversation continues through its session (X-Session-ID) and its KV cache instead.
    context: list[Whole] | None = None
    # Parsed to be refused by name: the chat template is always applied, and there is no fill-in-the-middle.
    raw: Annotated[bool | None, WithJsonSchema({"enum": [False, None]})] = None
    template: Annotated[str | None, WithJsonSchema({"enum": ["", None]})] = None
    suffix: Annotated[str | None, WithJsonSchema({"enum": ["", None]})] = None


class OllamaShowRequest(_Open):
    """POST /api/show"""

    model: str = Field(min_length=1)
    verbose: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _older_name(cls, data: Any) -> Any:
        """Older Ollama clients name the model `name`."""
        if isinstance(data, dict) and "model" not in data and "name" in data:
            return {**data, "model": data["name"]}
        return data
