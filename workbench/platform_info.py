"""Backend, dtype and BLAS facts for `version` and `models`, read without importing MLX."""

from __future__ import annotations


def platform_summary() -> dict[str, str]:
    from engine.backend import compute_dtype_name, installed_backend, mlx_version
    from engine.cpu import blas

    state = blas.state()
    blas_text = f"{state.name} ({'fast' if state.fast else 'slow'})"
    if state.path:
        blas_text += f" {state.path}"
    return {
        "mlx": mlx_version() or "not installed",
        "backend": installed_backend(),
        "compute dtype": compute_dtype_name(),
        "blas": blas_text,
    }


def blas_warning() -> str | None:
    from engine.cpu import blas

    state = blas.state()
    return None if state.fast else blas.HOW_TO_GET_OPENBLAS
