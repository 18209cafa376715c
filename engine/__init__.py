"""agent-memory's engine: model loading, generation and KV memory. Knows nothing of HTTP or UIs.

Programs that run it call `engine.setup_process()` first (engine/process.py)."""

from engine.process import setup_process

__all__ = ["setup_process"]
