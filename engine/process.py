"""Process set-up for a program that runs the engine: an explicit call from each entry point (the CLI's
commands that load a model, the benches, the tests), so that merely importing `engine` (a client, `tui
--connect`) changes nothing in the process."""

from __future__ import annotations

import atexit
import os
import sys

_done = False


def setup_process() -> None:
    """Prepare this process for MLX: call it before anything imports `mlx.core` (the CPU backend loads a
    fast BLAS in its place then) and before other threads start. Idempotent."""
    global _done
    if _done:
        return
    _done = True
    from engine.backend import current_backend

    # transformers only supplies tokenizers here; its "PyTorch was not found" notice is noise.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    current_backend().setup_process()
    # Registered after the backend's own exit hooks (OpenBLAS's), so it runs first: atexit is last-in, first-out.
    atexit.register(_clear_main_thread_mlx_state)


def _clear_main_thread_mlx_state() -> None:
    """Empty the main thread's MLX compile cache while Python can still free what it holds.

    mlx 0.32 otherwise frees cached compiled functions from a thread-local destructor after the
    interpreter has finalized, and the process segfaults on exit (mlx issues #4327, #4347).
    """
    core = sys.modules.get("mlx.core")
    if core is not None:
        core.clear_streams()
