"""Process-level care for MLX: what must happen before the interpreter shuts down."""

from __future__ import annotations

import atexit
import sys

_installed = False


def _clear_main_thread_mlx_state() -> None:
    """Empty the main thread's MLX compile cache while Python can still free what it holds.

    mlx 0.32 otherwise frees cached compiled functions from a thread-local destructor after the
    interpreter has finalized, and the process segfaults on exit (mlx issues #4327, #4347).
    """
    core = sys.modules.get("mlx.core")
    if core is not None:
        core.clear_streams()


def install_exit_hooks() -> None:
    global _installed
    if not _installed:
        atexit.register(_clear_main_thread_mlx_state)
        _installed = True
