"""agent-memory's headless server (Sanic). Knows nothing of MLX: it talks to the engine's queues."""
