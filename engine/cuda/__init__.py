"""MLX's CUDA backend: prefill attention that needs no cuDNN graph per shape (attention.py). The
engine reaches it through CudaBackend, its one seam (engine/backend.py)."""

from __future__ import annotations

import contextlib

from engine.backend import Backend, prefill_step_size


class CudaBackend(Backend):
    name = "cuda"

    def prepare_model(self, model, config: dict):
        from engine.cuda import attention

        attention.install(model)
        return model

    @contextlib.contextmanager
    def engine_thread(self, settings):
        from engine.cuda import attention

        attention.enable_on_this_thread(prefill_step_size(settings) if settings.mlx_gpu_attention == "auto" else None)
        yield
