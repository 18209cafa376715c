"""agent-memory's engine: model loading, generation and KV memory. Knows nothing of HTTP or UIs."""

import os

from engine import blas as _blas

# transformers only supplies tokenizers here; its "PyTorch was not found" notice is noise.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Must happen before any module imports mlx.core: see engine/blas.py.
_blas.preload()
