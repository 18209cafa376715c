"""One agent's turn at a time across processes: an advisory `flock` per session on a file of its own.

Two servers (or a server and `agent-memory chat`) may share one data dir. Each reads a transcript, runs
a turn and writes it back; without a lock the second write drops the first turn. The transcript file
itself cannot carry the lock, since every save replaces it by a rename. Lock files are empty and stay
when their agent is deleted: removing one while another process waits on it would let two holders in.

Instances with data dirs of their own that share a Redis also claim the turn there
(engine/kv/shared_turns.py): the lock is taken when both are.

Within a process the lock is re-entrant (a holder may record its turn, which locks again); callers that
need one turn at a time within a process already serialize there (the server's per-session asyncio
locks, the TUI's one reply at a time).
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

POLL_S = 0.05

_held: dict[Path, list] = {}  # lock path -> [open file, depth, shared claim] for the locks this process holds
_guard = threading.Lock()


class TurnLock:
    def __init__(self, path: Path, shared=None, session_id: str = ""):
        """The lock on `path`; with `shared` (engine/kv/shared.py's SharedTier), also the claim on
        `session_id`'s turn across instances."""
        self.path = path
        self.shared = shared
        self.session_id = session_id

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; never blocks."""
        with _guard:
            held = _held.get(self.path)
            if held is not None:
                held[1] += 1
                return True
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+b")  # noqa: SIM115 - kept open while held
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return False
            claim = None
            if self.shared is not None:
                from engine.kv.shared_turns import claim_turn

                claim = claim_turn(self.shared, self.session_id)
                if claim is None:  # another instance runs a turn of this agent
                    handle.close()
                    return False
            _held[self.path] = [handle, 1, claim]
            return True

    def release(self) -> None:
        with _guard:
            held = _held[self.path]
            held[1] -= 1
            if held[1] == 0:
                del _held[self.path]
                if held[2] is not None:
                    held[2].release()
                held[0].close()  # closing the file gives up the flock

    @contextlib.contextmanager
    def held(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Block until the lock is ours; `on_wait` is called once if another process has it."""
        if not self.try_acquire():
            if on_wait is not None:
                on_wait()
            while not self.try_acquire():
                time.sleep(POLL_S)
        try:
            yield
        finally:
            self.release()
