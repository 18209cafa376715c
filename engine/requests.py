"""What a caller asks the engine for: validated once here, with pydantic."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class SamplingParams(BaseModel):
    """mlx-lm's sampler settings; temperature 0 is greedy."""

    model_config = ConfigDict(frozen=True)

    temperature: float = Field(default=0.7, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int | None = None
    # Never end the turn on an end-of-turn token (benchmarks that need a fixed number of tokens).
    ignore_eos: bool = False


class GenerationRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(default=512, ge=1)
    sampling: SamplingParams = SamplingParams()
    stop: list[str] = Field(default_factory=list)
    session_id: str | None = None
    request_id: str = Field(default_factory=lambda: f"req_{uuid.uuid4().hex[:16]}")

    @field_validator("messages")
    @classmethod
    def _last_message_has_text(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role == "user" and not messages[-1].content.strip():
            raise ValueError("the message is empty; type something to send")
        return messages

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, stop: list[str]) -> list[str]:
        if any(not s for s in stop):
            raise ValueError("stop sequences must not be empty strings")
        return stop
