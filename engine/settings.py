"""All configuration in one place: env vars with the SEMANTIC_ prefix, a `.env` file, then CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_ID = "default"


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the variable and what is allowed."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SEMANTIC_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Field(
        default=Path("~/.agent_memory"),
        description="Sessions, converted models and (by default) KV caches live here.",
    )
    mlx_model_id: str = Field(
        default=DEFAULT_MODEL_ID,
        description="'default' (embedded SmolLM2-135M-Instruct), a .gguf path, an mlx-lm directory "
        "or a Hugging Face repo id.",
    )
    mlx_cache_budget_mb: int | None = Field(
        default=None,
        ge=1,
        description="Hot KV cache budget (MB). Unset: 4096 on the CPU; on a GPU, half the device memory "
        "the model's weights leave free.",
    )
    mlx_max_batch_size: int = Field(default=8, ge=1, le=256, description="Requests decoded at once.")
    max_queue: int = Field(
        default=64, ge=0, le=100000, description="Requests that may wait behind the running batch; more get 429."
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, le=3600, description="Seconds running requests get to finish on SIGTERM/SIGINT."
    )
    mlx_prefill_step_size: int | None = Field(
        default=None,
        ge=16,
        le=65536,
        description="Prompt tokens processed per step, shared by the prompts being prefilled (at least 64 each); "
        "unset: the backend's own (512 on the CPU, 2048 on GPUs).",
    )
    mlx_cpu_attention: Literal["numpy", "mlx"] = Field(
        default="numpy",
        description="CPU backend: attention softmax in numpy (vectorised exp, ~4x faster) or in MLX's own kernel.",
    )
    agent_cache_dir: Path | None = Field(default=None, description="Warm KV tier on disk; default <data_dir>/caches.")
    agent_max_agents_in_memory: int = Field(
        default=32, ge=1, description="Agents resident in the hot tier (the byte budget usually binds first)."
    )
    agent_disk_budget_mb: int = Field(default=20480, ge=1, description="Warm KV tier budget on disk (MB).")
    kv_block_tokens: int = Field(default=256, ge=16, le=8192, description="Tokens per KV block.")
    kv_disk_dtype: Literal["float16", "float32", "int8"] = Field(
        default="float16",
        description="KV on disk: float16 (half the bytes, exact resume), float32, or int8 (8-bit, lossy).",
    )
    kv_hot_live_agents: int = Field(
        default=1,
        ge=0,
        description="Most recent idle agents kept as live caches (fastest resume); older ones share blocks.",
    )
    kv_bits: Literal[4, 8] | None = Field(
        default=None, description="Quantize the KV cache to 4 or 8 bits (mlx-lm's QuantizedKVCache); unset: off."
    )
    kv_group_size: Literal[32, 64, 128] = Field(default=64, description="Group size of the quantized KV cache.")
    kv_memory: bool = Field(default=True, description="Reuse KV caches across turns (false: always recompute).")
    kv_page_in_mb: int = Field(
        default=512,
        ge=0,
        description="CPU backend on Linux: memory paged in at model load for the first KV caches restored from "
        "disk (at most one full-context cache; 0: off).",
    )
    api_key: str | None = Field(default=None, description="Key clients must send to the API.")
    admin_key: str | None = Field(default=None, description="Key for /admin routes (unset: admin routes are off).")
    max_request_mb: int = Field(default=32, ge=1, le=4096, description="Largest request body the server reads (MB).")
    strict_model_names: bool = Field(
        default=False, description="Answer 404 for a `model` the server does not serve (default: serve any name)."
    )
    drop_volatile_lines: bool = Field(
        default=True,
        description="Drop system-prompt lines that clients change on every request (Claude Code's "
        "x-anthropic-billing-header), so they do not defeat the KV cache; see api/volatile.py.",
    )
    sse_keepalive_s: float = Field(
        default=10.0, gt=0, le=60, description="Quiet seconds before a stream sends a keep-alive (ping) event."
    )
    cors_origins: str = Field(
        default="", description="Comma-separated origins allowed by CORS ('*' for any); empty: CORS off."
    )

    @field_validator("mlx_model_id")
    @classmethod
    def _model_id_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @property
    def kv_disk_encoding(self) -> str:
        """How KV is stored on disk: quantized KV (SEMANTIC_KV_BITS) as it is, else SEMANTIC_KV_DISK_DTYPE."""
        return f"kv{self.kv_bits}" if self.kv_bits else self.kv_disk_dtype

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser()

    @property
    def cache_path(self) -> Path:
        return (self.agent_cache_dir or self.data_path / "caches").expanduser()

    @property
    def models_path(self) -> Path:
        return self.data_path / "models"

    @property
    def sessions_path(self) -> Path:
        return self.data_path / "sessions"


def load_settings(**overrides) -> Settings:
    """Settings from env/.env with CLI overrides (None means "not given"); raises SettingsError."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "?"
    variable = f"SEMANTIC_{field.upper()}"
    info = Settings.model_fields.get(field)
    allowed = f" ({info.description})" if info is not None and info.description else ""
    return f"invalid {variable}={first.get('input')!r}: {first['msg']}{allowed}"
