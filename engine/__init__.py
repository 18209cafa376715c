"""agent-memory's engine: model loading, generation and KV memory. Knows nothing of HTTP or UIs."""

import os

from engine import blas as _blas
from engine import runtime as _runtime

# transformers only supplies tokenizers here; its "PyTorch was not found" notice is noise.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Before any thread starts (OpenBLAS's included): see engine/runtime.py.
_runtime.keep_freed_memory()
# Must happen before any module imports mlx.core: see engine/blas.py.
_blas.preload()
# Registered after OpenBLAS's own exit hook, so it runs first (atexit is last-in, first-out).
_runtime.install_exit_hooks()
