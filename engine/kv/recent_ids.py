"""The ids most recently marked, the oldest forgotten past a bound: what lets a turn that finds nothing
of its own say why (its cache was evicted, or expired) without keeping every id ever seen."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable


class RecentIds:
    """Thread-safe: one thread may mark while another asks."""

    def __init__(self, limit: int = 1024):
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()  # most recent last
        self._lock = threading.Lock()

    def add(self, ids: Iterable[str]) -> None:
        with self._lock:
            for marked in ids:
                self._ids.pop(marked, None)
                self._ids[marked] = None
            while len(self._ids) > self.limit:
                self._ids.popitem(last=False)

    def discard(self, marked: str) -> None:
        with self._lock:
            self._ids.pop(marked, None)

    def __contains__(self, marked: str) -> bool:
        with self._lock:
            return marked in self._ids

    def take(self, marked: str) -> bool:
        """Whether it is marked; the mark goes."""
        with self._lock:
            if marked not in self._ids:
                return False
            del self._ids[marked]
            return True
