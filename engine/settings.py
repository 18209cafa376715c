"""All configuration in one place: env vars with the SEMANTIC_ prefix, a `.env` file, then CLI flags."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_ID = "default"
TENANT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Settings whose values are never repeated in an error message
SECRETS = ("api_key", "api_keys", "admin_key")


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
    mlx_padded_prefill_keys: bool | None = Field(
        default=None,
        description="Short prompt chunks read their keys up to whole 256-token steps under a mask, so attention "
        "plans built per key length are reused (engine/mlx_lm_ext/prefill_keys.py). Unset: the backend's "
        "choice (on with CUDA, off on Metal and the CPU).",
    )
    mlx_decode_rows: bool | None = Field(
        default=None,
        description="Decode steps of a left-padded batch attend each row over its own keys, in one batch kernel "
        "(engine/mlx_lm_ext/ragged_decode.py) or a fused call per row, instead of a masked attention "
        "(engine/mlx_lm_ext/decode_rows.py). Unset: the backend's choice (on with CUDA, off on Metal and the CPU).",
    )
    mlx_rounded_chunks: bool | None = Field(
        default=None,
        description="Prompt chunks are padded up to a few lengths (multiples of an eighth of their power of two, "
        "at least 32), so the kernels and plans MLX's CUDA backend builds per shape are reused across turns "
        "(engine/mlx_lm_ext/chunk_lengths.py). Unset: the backend's choice (off everywhere for now).",
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
        description="CPU backend: attention softmax in numpy (vectorised exp, faster) or in MLX's own kernel.",
    )
    agent_cache_dir: Path | None = Field(default=None, description="Warm KV tier on disk; default <data_dir>/caches.")
    agent_max_agents_in_memory: int = Field(
        default=32, ge=1, description="Agents resident in the hot tier (the byte budget usually binds first)."
    )
    agent_disk_budget_mb: int = Field(default=20480, ge=1, description="Warm KV tier budget on disk (MB).")
    agent_max_mb: int | None = Field(
        default=None,
        ge=1,
        description="Most KV one agent keeps in the hot tier (MB); past it, it resumes from disk instead of "
        "evicting others. Unset: no limit.",
    )
    kv_block_tokens: int = Field(default=256, ge=16, le=8192, description="Tokens per KV block.")
    kv_disk_dtype: Literal["float16", "float32", "int8"] = Field(
        default="float16",
        description="KV on disk: float16 (half the bytes, exact resume), float32, or int8 (8-bit, lossy).",
    )
    kv_hot_live_agents: int | None = Field(
        default=None,
        ge=0,
        description="Most recent idle agents kept as live caches (fastest resume); older ones share blocks. "
        "Unset: the backend's own (1 on the CPU, SEMANTIC_MLX_MAX_BATCH_SIZE on a GPU).",
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
    shared_tier_url: str | None = Field(
        default=None,
        description="redis://HOST:PORT/DB: KV caches and transcripts shared by every instance that names the "
        "same Redis (or Valkey), behind each one's own tiers (unset: local tiers only; docs/deployment.md).",
    )
    api_key: str | None = Field(default=None, description="Key clients must send to the API.")
    api_keys: str | None = Field(
        default=None,
        description='Named tenants and their keys, "alice:KEY1,bob:KEY2": each tenant sees, resumes and shares '
        "only its own agents and cached prefixes (instead of SEMANTIC_API_KEY).",
    )
    admin_key: str | None = Field(default=None, description="Key for /admin routes (unset: admin routes are off).")
    max_request_mb: int = Field(default=32, ge=1, le=4096, description="Largest request body the server reads (MB).")
    max_import_mb: int = Field(
        default=4096, ge=1, le=1_048_576, description="Largest agent file POST /v1/agents/import reads (MB)."
    )
    load_on_demand: bool = Field(
        default=False,
        description="Load the model a request names when it is available here (a packaged or prepared model, "
        "a local path, a hub repo already downloaded) instead of answering with the served one: one model "
        "resident at a time, swapped as /admin/swap does.",
    )
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

    @field_validator("api_keys")
    @classmethod
    def _tenant_keys_parse(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_tenant_keys(value)
        return value

    @model_validator(mode="after")
    def _one_kind_of_key(self) -> Settings:
        if self.api_key and self.api_keys:
            raise ValueError("set SEMANTIC_API_KEY (one tenant) or SEMANTIC_API_KEYS (named tenants), not both")
        return self

    @property
    def tenant_keys(self) -> dict[str, str]:
        """Tenant name by key (SEMANTIC_API_KEYS); empty without named tenants."""
        return parse_tenant_keys(self.api_keys) if self.api_keys else {}

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
    if not first["loc"]:  # a rule across settings: its message names them
        return f"invalid settings: {first['msg'].removeprefix('Value error, ')}"
    field = str(first["loc"][0])
    variable = f"SEMANTIC_{field.upper()}"
    info = Settings.model_fields.get(field)
    allowed = f" ({info.description})" if info is not None and info.description else ""
    value = "" if field in SECRETS else f"={first.get('input')!r}"
    return f"invalid {variable}{value}: {first['msg']}{allowed}"


@lru_cache(maxsize=4)  # read for every request
def parse_tenant_keys(text: str) -> dict[str, str]:
    """`"alice:KEY1,bob:KEY2"` as {key: tenant name}; ValueError (never quoting a key) when malformed."""
    keys: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, colon, key = item.strip().partition(":")
        if not colon or not key.strip() or not TENANT_NAME.fullmatch(name.strip()):
            raise ValueError(
                'each entry is NAME:KEY, separated by commas; NAME is 1-64 letters, digits, "_", "-" or ".", '
                "KEY is not empty"
            )
        name, key = name.strip(), key.strip()
        if name in keys.values():
            raise ValueError(f"tenant {name!r} is named twice")
        if key in keys:
            raise ValueError(f"tenants {keys[key]!r} and {name!r} have the same key")
        keys[key] = name
    if not keys:
        raise ValueError("no NAME:KEY entry")
    return keys
