"""Which MLX backend is installed and which compute dtype it gets (without importing MLX unless a model is given)."""

from __future__ import annotations

import sys
from functools import lru_cache
from importlib import metadata


@lru_cache(maxsize=1)
def installed_backend() -> str:
    """ "metal", "cuda" or "cpu", read from the installed MLX distributions (no MLX import)."""
    if sys.platform == "darwin":
        return "metal"
    for dist, backend in (("mlx-cuda-13", "cuda"), ("mlx-cuda-12", "cuda"), ("mlx-cuda", "cuda")):
        try:
            metadata.version(dist)
            return backend
        except metadata.PackageNotFoundError:
            continue
    return "cpu"


def compute_dtype_name(backend: str | None = None, model=None) -> str:
    """The dtype a model computes in: float32 on the CPU (MLX's CPU kernels are fast only in float32, so
    the loader converts every model), else the loaded `model`'s own floating dtype, e.g. "bfloat16" or
    "float16 (4-bit weights)". Without a model, what a GPU backend does in general."""
    if (backend or installed_backend()) == "cpu":
        return "float32"
    if model is None:
        return "the model's own (a GGUF: float16, 4-bit weights)"
    import mlx.core as mx
    from mlx.utils import tree_flatten

    floating = next(
        (
            str(v.dtype).rpartition(".")[2]
            for _, v in tree_flatten(model.parameters())
            if mx.issubdtype(v.dtype, mx.floating)
        ),
        "float32",
    )
    bits = sorted({m.bits for m in model.modules() if isinstance(getattr(m, "bits", None), int)})
    return f"{floating} ({'/'.join(map(str, bits))}-bit weights)" if bits else floating


def mlx_version() -> str | None:
    try:
        return metadata.version("mlx")
    except metadata.PackageNotFoundError:
        return None


GPU_SWITCH_INTERVAL_S = 0.0002
# The hot tier's default size on the CPU (system memory, which the rest of the machine shares too)
CPU_HOT_BUDGET_BYTES = 4096 << 20
MIN_HOT_BUDGET_BYTES = 512 << 20


class Backend:
    """What the engine does differently per MLX backend, in one place. This base is the GPUs' (Metal,
    CUDA): MLX and mlx-lm as they come. The CPU's tuning is engine/cpu/'s CpuBackend."""

    name = "gpu"
    # GGUF weights are kept 4-bit (re-quantized for MLX) where the backend computes with them fast.
    gguf_bits: int | None = 4
    # mlx-lm reads a prompt's last token in a forward pass of its own and computes each next token
    # before returning the current one: on a GPU that pass overlaps the host's work (pipelining).
    inline_first_token = False
    # Prompt tokens per forward pass (mlx-lm's default): long enough to keep a GPU busy.
    prefill_step_size = 2048
    # The paths of engine/mlx_lm_ext/ that work around MLX's CUDA backend (CudaBackend; rounded chunks
    # are off everywhere: on an H100 they gained nothing, docs/benchmarks.md)
    padded_prefill_keys = False
    decode_rows = False
    rounded_chunks = False
    # Kernels are built the first time a shape meets them: a model's first turns run at load
    # (engine/warm_up.py), not in its first client's time.
    warm_up_at_load = True

    def default_live_agents(self, settings) -> int:
        """Idle agents whose caches stay live when SEMANTIC_KV_HOT_LIVE_AGENTS is unset: a batch's worth.
        Compacting an agent into shared blocks, and joining them again at its next turn, is hundreds of
        small array operations on the engine thread while the batch waits (tens of ms per agent on a
        GPU, where many agents finish and resume together); a card's memory has room for them live."""
        return settings.mlx_max_batch_size

    def setup_process(self) -> None:
        """Before MLX is imported and before other threads start (engine.setup_process)."""
        # The engine thread holds the GIL while MLX waits for the GPU; a thread that reads its events
        # (a server's loop, a client) then waits the whole switch interval (5 ms by default) for it,
        # and the GPU idles while the two hand it back and forth (docs/benchmarks.md has the figures).
        sys.setswitchinterval(GPU_SWITCH_INTERVAL_S)

    def blas_name(self) -> str:
        return "accelerate" if sys.platform == "darwin" else "cublas"

    def prepare_model(self, model, config: dict):
        """The loaded model as this backend computes with it."""
        return model

    def engine_thread(self, settings):
        """A context the engine thread runs inside, around all its MLX work."""
        import contextlib

        return contextlib.nullcontext()

    def after_install(self, loaded, settings) -> None:
        """The engine thread just started serving `loaded` (a LoadedModel)."""

    def default_hot_budget_bytes(self, model) -> int:
        """The hot tier's size when SEMANTIC_MLX_CACHE_BUDGET_MB is unset: half of the device memory the
        model's weights leave, so that agents stay resident as far as the card allows while the other
        half is left to activations, queued disk writes and MLX's buffer cache."""
        import mlx.core as mx
        from mlx.utils import tree_flatten

        info = mx.device_info()
        # Metal's working-set limit, else CUDA's card size
        memory = info.get("max_recommended_working_set_size") or info.get("total_memory") or info.get("memory_size")
        if not isinstance(memory, int) or memory <= 0:
            return CPU_HOT_BUDGET_BYTES
        weights = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
        return max(MIN_HOT_BUDGET_BYTES, (memory - weights) // 2)


def attention_paths(settings):
    """The paths batch generators take: SEMANTIC_MLX_PADDED_PREFILL_KEYS, SEMANTIC_MLX_DECODE_ROWS and
    SEMANTIC_MLX_ROUNDED_CHUNKS, else the backend's choices."""
    from engine.mlx_lm_ext import AttentionPaths

    backend = current_backend()
    return AttentionPaths(
        padded_prefill_keys=_setting_or(settings.mlx_padded_prefill_keys, backend.padded_prefill_keys),
        decode_rows=_setting_or(settings.mlx_decode_rows, backend.decode_rows),
        rounded_chunks=_setting_or(settings.mlx_rounded_chunks, backend.rounded_chunks),
    )


def _setting_or(value: bool | None, default: bool) -> bool:
    return default if value is None else value


def hot_live_agents(settings) -> int:
    """Idle agents kept live in the hot tier: SEMANTIC_KV_HOT_LIVE_AGENTS, else the backend's default."""
    if settings.kv_hot_live_agents is not None:
        return settings.kv_hot_live_agents
    return current_backend().default_live_agents(settings)


def hot_budget_bytes(settings, model) -> int:
    """The hot tier's byte budget: SEMANTIC_MLX_CACHE_BUDGET_MB, else the backend's default for `model`."""
    if settings.mlx_cache_budget_mb is not None:
        return settings.mlx_cache_budget_mb << 20
    return current_backend().default_hot_budget_bytes(model)


def prefill_step_size(settings) -> int:
    """Prompt tokens per prefill step: SEMANTIC_MLX_PREFILL_STEP_SIZE, else the backend's own."""
    return settings.mlx_prefill_step_size or current_backend().prefill_step_size


class CudaBackend(Backend):
    """NVIDIA GPUs: MLX's CUDA backend plans cuDNN attention per exact shape, and its fused kernels for
    one query take no array mask (Metal's take one and plan nothing per length)."""

    name = "cuda"
    # Short prompt chunks read their keys up to a whole number of cache steps, so that attention
    # plans built per key length are reused (engine/mlx_lm_ext/prefill_keys.py).
    padded_prefill_keys = True
    # A left-padded batch's decode steps attend row by row, each row taking the fused kernel that an
    # array mask rules out (engine/mlx_lm_ext/decode_rows.py).
    decode_rows = True


@lru_cache(maxsize=1)
def current_backend() -> Backend:
    name = installed_backend()
    if name == "cpu":
        from engine.cpu import CpuBackend

        return CpuBackend()
    if name == "cuda":
        return CudaBackend()
    backend = Backend()
    backend.name = name
    return backend
