"""Settings for a benchmark run: the user's, in a throw-away data dir unless one was named."""

from __future__ import annotations

import atexit
import shutil
import tempfile

from engine.settings import Settings, load_settings


def bench_settings(data_dir: str | None, **overrides) -> Settings:
    """`load_settings(**overrides)` in `data_dir`; without one (and without SEMANTIC_DATA_DIR), in a new
    temporary directory removed when the benchmark exits, so a benchmark never fills the user's
    ~/.agent_memory nor leaves a converted model and its caches behind."""
    if data_dir:
        settings = load_settings(**overrides, data_dir=data_dir)
    else:
        settings = load_settings(**overrides)
        if str(settings.data_dir) == "~/.agent_memory":
            scratch = tempfile.mkdtemp(prefix="agent-memory-bench-")
            atexit.register(shutil.rmtree, scratch, ignore_errors=True)
            settings = load_settings(**overrides, data_dir=scratch)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    return settings
