"""Loading a model the engine can serve: checked against the settings, with the chat template compiled,
on the engine thread at start or beside the serving model on a thread of its own for a swap."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading

from engine.errors import EngineError, ModelLoadError, RequestError
from engine.gguf_import import Progress
from engine.loader import LoadedModel, load
from engine.requests import ChatMessage, GenerationRequest
from engine.settings import Settings

log = logging.getLogger(__name__)


def load_checked(model_id: str, settings: Settings, progress: Progress | None = None) -> LoadedModel:
    """Load a model and check it against the settings; every failure is a ModelLoadError."""
    from mlx_lm.models.cache import make_prompt_cache

    from engine.prompt import render_prompt

    try:
        loaded = load(model_id, settings.models_path, progress)
    except EngineError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure must reach the caller
        log.exception("model load failed")
        raise ModelLoadError(f"loading {model_id!r} failed: {exc}") from None
    if settings.kv_bits and any(type(cache).__name__ == "RotatingKVCache" for cache in make_prompt_cache(loaded.model)):
        raise ModelLoadError(
            f"SEMANTIC_KV_BITS is not supported for {loaded.info.model_type}: its sliding-window "
            "layers cannot be quantized by mlx-lm; unset SEMANTIC_KV_BITS"
        )
    if settings.kv_bits:
        _check_quantized_kv(loaded, settings)
    # The chat template is compiled at its first use: at load, not in the first turn's time
    # to first token. A template that rejects this conversation will say why on a real one.
    with contextlib.suppress(RequestError):
        render_prompt(loaded, GenerationRequest(messages=[ChatMessage(role="user", content="Hello.")]))
    return loaded


def _check_quantized_kv(loaded: LoadedModel, settings: Settings) -> None:
    """Run a few tokens through mlx-lm's quantized KV cache, so that a backend without kernels for it
    fails at load rather than in every turn (MLX 0.32's CUDA backend has no 8-bit quantized_matmul for
    the default model's attention)."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    bits, group_size = settings.kv_bits, settings.kv_group_size
    caches = [cache.to_quantized(group_size=group_size, bits=bits) for cache in make_prompt_cache(loaded.model)]
    try:
        for _ in range(2):  # the second pass attends to quantized keys and values
            mx.eval(loaded.model(mx.zeros((1, 16), dtype=mx.int32), cache=caches))
    except Exception as exc:  # noqa: BLE001 - MLX reports a missing kernel as RuntimeError or ValueError
        raise ModelLoadError(
            f"SEMANTIC_KV_BITS={bits} does not run for {loaded.info.model_type} on the "
            f"{loaded.info.backend} backend ({str(exc).splitlines()[0]}); unset SEMANTIC_KV_BITS"
        ) from None


class SwapLoader:
    """A thread that loads models beside the serving one (for swaps), on its own MLX stream.

    Like the engine thread it parks instead of exiting (MLX 0.32 crashes when such a thread exits).
    """

    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, name="agent-memory-loader", daemon=True).start()

    def load(self, model_id: str, settings: Settings, progress: Progress | None) -> LoadedModel:
        done, box = threading.Event(), {}
        self._jobs.put((model_id, settings, progress, done, box))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["loaded"]

    def _run(self) -> None:
        import mlx.core as mx

        stream = mx.new_stream(mx.default_device())
        with mx.stream(stream):
            while True:
                model_id, settings, progress, done, box = self._jobs.get()
                try:
                    box["loaded"] = load_checked(model_id, settings, progress)
                    mx.synchronize(stream)
                except EngineError as exc:
                    box["error"] = exc
                finally:
                    done.set()
