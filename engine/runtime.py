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


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # the largest glibc accepts on 64-bit
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> None:
    """Let glibc keep freed buffers up to 32 MB for reuse instead of handing them back to the kernel.

    MLX frees its buffer cache between prefill chunks (mlx-lm calls `mx.clear_cache()`), so every
    chunk and every batch of KV caches would otherwise touch fresh pages; in a VM a page fault can cost
    ~10 µs, which made fresh memory ~20x slower to write than reused memory. Only glibc (Linux) has
    mallopt; elsewhere this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
