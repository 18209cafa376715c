"""Use a fast BLAS under MLX's CPU backend.

The `mlx-cpu` wheel links netlib's reference BLAS, which is slow. Loading Debian's OpenBLAS
with RTLD_GLOBAL *before* `mlx.core` is imported makes MLX's `cblas_sgemm` resolve to it
(docs/architecture.md has the figures), because the dynamic linker searches the global scope before a library's own
dependencies. So this module must run before anything imports MLX; `engine/__init__.py` does it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import sys
import threading
from dataclasses import dataclass

# Debian/Ubuntu's pthread build first; the generic soname covers other distributions.
OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)
HOW_TO_GET_OPENBLAS = (
    "MLX's CPU backend is using the slow reference BLAS; install OpenBLAS for a ~30x speed-up: "
    "sudo apt-get install libopenblas0-pthread (or run `make setup`)."
)


@dataclass(frozen=True)
class BlasState:
    name: str  # "openblas", "reference", "accelerate", "cublas" or "none"
    path: str | None
    fast: bool


_state: BlasState | None = None
_library = None  # the OpenBLAS loaded by preload
_computing_threads = 0  # threads running MLX now (engine threads), under _computing_lock
_computing_lock = threading.Lock()


def _needs_fast_blas() -> bool:
    """Only Linux with the CPU wheel uses the bundled reference BLAS."""
    if not sys.platform.startswith("linux"):
        return False
    from engine.backend import installed_backend

    return installed_backend() == "cpu"


def preload() -> BlasState:
    """Load OpenBLAS into the global symbol scope if it helps; idempotent."""
    global _state
    if _state is not None:
        return _state
    if sys.platform == "darwin":
        _state = BlasState("accelerate", None, True)
        return _state
    if not _needs_fast_blas():
        _state = BlasState("cublas", None, True)
        return _state
    if os.environ.get("AGENT_MEMORY_NO_OPENBLAS"):
        _state = BlasState("reference", None, False)
        return _state
    if "mlx.core" in sys.modules:
        # Too late to interpose: report what MLX actually bound to.
        _state = BlasState("reference", None, False)
        return _state
    for path in OPENBLAS_CANDIDATES:
        if os.path.exists(path):
            try:
                library = ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
            except OSError:
                continue
            _stop_workers_at_exit(library)
            global _library
            _library = library
            _state = BlasState("openblas", path, True)
            return _state
    _state = BlasState("reference", None, False)
    return _state


def _stop_workers_at_exit(library) -> None:
    """Stop OpenBLAS's worker threads before C++ static destructors run at exit.

    When MLX ran on a thread other than the main one, OpenBLAS's pool and MLX's teardown race at
    process exit and abort ("terminate called without an active exception") or segfault.
    """
    shutdown = getattr(library, "blas_thread_shutdown_", None)
    if shutdown is not None:
        atexit.register(shutdown)


@contextlib.contextmanager
def computing_thread():
    """Count the current thread, while in the block, as one that runs MLX (an engine thread)."""
    global _computing_threads
    with _computing_lock:
        _computing_threads += 1
    try:
        yield
    finally:
        with _computing_lock:
            _computing_threads -= 1


def park_workers() -> None:
    """Stop the worker threads of the OpenBLAS that preload loaded, if any; its next call starts them
    again (cheap either way). Call it from a computing thread whose MLX work is done; it does nothing
    while another computing thread runs (it could be inside a BLAS call).

    After each call OpenBLAS's workers spin (sched_yield) for a while, waiting for the next one, so
    CPU work that starts right after a forward pass on other threads shares the cores with them.
    """
    shutdown = getattr(_library, "blas_thread_shutdown_", None)
    with _computing_lock:
        if shutdown is not None and _computing_threads <= 1:
            shutdown()


def state() -> BlasState:
    return preload()
