"""Workbench tests: the `agent-memory` CLI in subprocesses and the TUI (pilot runs and snapshots)."""
