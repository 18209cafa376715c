"""MLX's CPU backend, tuned: a fast BLAS loaded under MLX (blas.py), glibc's heap kept warm (heap.py),
attention's softmax in numpy (attention.py), float16 caches restored into float32 arrays (restore.py,
upcast.py). The engine reaches all of it through CpuBackend, its one seam (engine/backend.py)."""

from __future__ import annotations

import contextlib

from engine.backend import CPU_HOT_BUDGET_BYTES, Backend, hot_budget_bytes


class CpuBackend(Backend):
    name = "cpu"
    # MLX's CPU kernels are fast only in float32 (docs/models.md): GGUF weights are dequantized.
    gguf_bits = None
    # On the CPU `mx.async_eval` computes inline: mlx-lm's pipelining would make every token wait for
    # the next one's forward pass, so the chunk that reads a prompt's last token yields its first token.
    inline_first_token = True
    # A chunk's activations stay in the CPU's caches (docs/models.md).
    prefill_step_size = 512
    # A forward pass at load made no measurable difference to a fresh process's first turns here, and a
    # CPU prefill of a whole step is not free.
    warm_up_at_load = False

    def setup_process(self) -> None:
        from engine.cpu import blas, heap

        heap.keep_freed_memory()  # before any thread starts (OpenBLAS's included)
        blas.preload()  # before anything imports mlx.core

    def default_hot_budget_bytes(self, model) -> int:
        return CPU_HOT_BUDGET_BYTES

    def default_live_agents(self, settings) -> int:
        # System memory is the whole machine's: idle agents share their prefix blocks in it
        return 1

    def blas_name(self) -> str:
        from engine.cpu import blas

        return blas.state().name

    def prepare_model(self, model, config: dict):
        import mlx.core as mx
        from mlx_lm.utils import dequantize_model

        from engine.cpu import attention

        if "quantization" in config:
            model = dequantize_model(model)
        model.set_dtype(mx.float32)
        mx.eval(model.parameters())
        attention.install(model)
        return model

    @contextlib.contextmanager
    def engine_thread(self, settings):
        from engine.cpu import attention, blas

        attention.enable_on_this_thread(settings.mlx_cpu_attention == "numpy")
        with blas.computing_thread():
            yield

    def after_install(self, loaded, settings) -> None:
        from engine.cpu import heap

        # Memory for the first caches restored from disk paged in now, at load, rather than by the
        # restore (engine/cpu/heap.py): at most one full-context cache, within the hot budget.
        if settings.kv_memory:
            info = loaded.info
            full_context = info.context_length * info.kv_bytes_per_token
            budget = hot_budget_bytes(settings, loaded.model)
            heap.page_in_heap(min(settings.kv_page_in_mb << 20, full_context, budget))
