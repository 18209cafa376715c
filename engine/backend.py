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
