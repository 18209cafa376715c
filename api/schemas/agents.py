"""The agent API's request bodies: the server keeps the transcript, the client sends only the new turn."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from api.validation import Seed, StopSequence, Whole
from engine.kv.policy import MAX_RETENTION_S


class AgentMessageRequest(BaseModel):
    """POST /v1/agents/{id}/messages"""

    model_config = ConfigDict(extra="ignore")

    content: str = Field(min_length=1)
    max_tokens: Whole = Field(default=512, ge=1)
    stream: bool = False
    system: str | None = Field(default=None, description="Sets the agent's system prompt (kept with the agent).")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(
        default=None,
        gt=0.0,
        allow_inf_nan=False,
        description="Above 1.0 makes tokens the answer already holds less likely; 1.0 is off.",
    )
    stop: list[StopSequence] | None = None
    seed: Seed | None = None


class NewIdRequest(BaseModel):
    """POST /v1/agents/{id}/fork and /rename"""

    model_config = ConfigDict(extra="ignore")

    new_id: str = Field(
        min_length=1, description="The agent id to fork or rename to: a new one, in the caller's tenant."
    )


class AgentPolicyRequest(BaseModel):
    """PATCH /v1/agents/{id}: what is kept of the agent's caches (its transcript is always kept)."""

    model_config = ConfigDict(extra="ignore")

    pinned: bool = Field(
        default=False, description="Evicted last from memory and never by the disk budget; false: as any agent."
    )
    retention_s: Whole | None = Field(
        default=None,
        ge=1,
        le=MAX_RETENTION_S,
        description="Expire the agent's caches after this many idle seconds; null: keep them while the budgets allow.",
    )


class SwapRequest(BaseModel):
    """POST /admin/swap"""

    model_config = ConfigDict(extra="ignore")

    model_id: str = Field(min_length=1, description="'default', an alias, a .gguf path, an mlx-lm dir or a HF repo id.")
