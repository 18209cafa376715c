"""A progress bar on stderr for long engine work (hashing, converting, loading a model)."""

from __future__ import annotations

import threading

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

STAGE_LABELS = {"hashing": "Checking model file", "converting": "Converting GGUF", "loading": "Loading model"}


class ModelProgress:
    """Engine progress callback (stage, done, total) drawn as rich bars; silent when stderr is no TTY."""

    def __init__(self, enabled: bool | None = None):
        console = Console(stderr=True)
        self.enabled = console.is_terminal if enabled is None else enabled
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._tasks: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            if not self._tasks:
                self._progress.start()
            if stage not in self._tasks:
                self._tasks[stage] = self._progress.add_task(STAGE_LABELS.get(stage, stage), total=total)
            self._progress.update(self._tasks[stage], completed=done, total=total)

    def close(self) -> None:
        with self._lock:
            if self._tasks:
                self._progress.stop()
                self._tasks.clear()
