"""Which MLX backend is installed and which compute dtype it gets, without importing MLX."""

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


def compute_dtype_name(backend: str | None = None) -> str:
    """MLX's CPU kernels are fast only in float32; GPUs keep 4-bit weights."""
    return "float32" if (backend or installed_backend()) == "cpu" else "q4"


def mlx_version() -> str | None:
    try:
        return metadata.version("mlx")
    except metadata.PackageNotFoundError:
        return None


class Backend:
    """What the engine does differently per MLX backend, in one place. This base is the GPUs' (Metal,
    CUDA): MLX and mlx-lm as they come. The CPU's tuning is engine/cpu/'s CpuBackend."""

    name = "gpu"
    # GGUF weights are kept 4-bit (re-quantized for MLX) where the backend computes with them fast.
    gguf_bits: int | None = 4
    # mlx-lm reads a prompt's last token in a forward pass of its own and computes each next token
    # before returning the current one: on a GPU that pass overlaps the host's work (pipelining).
    inline_first_token = False

    def setup_process(self) -> None:
        """Before MLX is imported and before other threads start (engine.setup_process)."""

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


@lru_cache(maxsize=1)
def current_backend() -> Backend:
    if installed_backend() == "cpu":
        from engine.cpu import CpuBackend

        return CpuBackend()
    backend = Backend()
    backend.name = installed_backend()
    return backend
