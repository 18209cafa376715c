"""agent-memory's workbench: the Typer CLI and the Textual TUI. Knows nothing of MLX."""

__version__ = "0.1.0"
