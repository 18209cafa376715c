"""agent-memory's engine: model loading, generation and KV memory. Knows nothing of HTTP or UIs."""

from engine import blas as _blas

# Must happen before any module imports mlx.core: see engine/blas.py.
_blas.preload()
