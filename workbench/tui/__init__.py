"""`agent-memory tui`: a Textual workbench for chatting with many agents and seeing inside their KV memory."""
