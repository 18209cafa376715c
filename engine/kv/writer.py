"""The one thread that changes a KV tier, so the disk never delays a response.

    engine thread                              writer thread (low priority)
    release: submit(WriteJob) ─────────┐
    forget:  run(forget_session) ──────┼──►  jobs in the order submitted: write (then the shared tier's
                                       │     push, engine/kv/shared.py), forget, stats, ...
    stats:   run(stats) ──► Future ◄───┘     a task's Future is done once every job before it is
             the caller waits on it, not the engine thread

A task submitted with `run` sees every write submitted before it, so `stats` counts the last turn and
`forget_session` cannot be undone by a write still queued for that session. The engine thread only
submits; whoever asked waits on the Future, so streams keep going while the disk queue drains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from engine.kv.tier import KVTier, WriteJob

log = logging.getLogger(__name__)

T = TypeVar("T")


class WarmWriter:
    def __init__(self, tier: KVTier, mirror: Callable[[WriteJob, KVTier], None] | None = None):
        self._tier = tier
        self._mirror = mirror  # also given each written job (the shared tier's push), after the tier
        self._jobs: queue.Queue[tuple[Callable, Future | None] | None] = queue.Queue()
        self._closed = False
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="agent-memory-kv-writer", daemon=True)
        self._thread.start()

    def submit(self, job: WriteJob) -> None:
        """Write `job` behind the response; a failure is logged and counted, never raised. Its parts may
        still be computing on the device (encode_for_disk): they are copied out here, not by the caller."""
        self._put(lambda tier: self._write(tier, job.on_host()), None)

    def _write(self, tier: KVTier, job: WriteJob) -> None:
        tier.write(job)
        if self._mirror is not None:
            self._mirror(job, tier)

    def run(self, task: Callable[[KVTier], T]) -> Future[T]:
        """`task(tier)` on the writer thread after every job submitted before it; its result or error
        in the Future."""
        future: Future[T] = Future()
        self._put(task, future)
        return future

    def flush(self) -> None:
        """Wait until every job submitted so far is done (not on the engine thread while serving)."""
        self.run(lambda tier: None).result()

    def close(self) -> None:
        """Finish the queued jobs, then close the tier on the writer thread and stop it."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        self._thread.join(timeout=60)

    def _put(self, task: Callable, future: Future | None) -> None:
        if self._closed:
            raise RuntimeError("the KV writer is closed")
        self._jobs.put((task, future))

    def _run(self) -> None:
        _lower_this_threads_priority()
        while True:
            item = self._jobs.get()
            if item is None:
                self._tier.close()
                return
            task, future = item
            if future is not None:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(task(self._tier))
                    except Exception as exc:  # noqa: BLE001 - the caller gets it from the Future
                        future.set_exception(exc)
                continue
            try:
                task(self._tier)
            except (OSError, sqlite3.Error) as exc:
                self.failures += 1
                log.warning("could not write the warm KV tier (%s); serving continues hot-only", exc)
            except Exception:  # noqa: BLE001 - a bad write must not kill the writer
                self.failures += 1
                log.exception("warm KV write failed")


def _lower_this_threads_priority() -> None:
    """Writes happen behind the response: the next turn's prefill should not share the CPU with them.

    On Linux a thread has its own nice value (setpriority on its thread id); elsewhere this does nothing.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
