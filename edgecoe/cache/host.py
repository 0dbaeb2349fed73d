"""The host-memory tier of a NUMA device: expert model bytes kept in RAM.

On a discrete-GPU box, making an expert resident on the GPU from host memory
is several times faster than from disk (DESIGN.md §1: 63-86 % vs 91-99 % of
latency). The host tier keeps model bytes within its own budget, least
recently used out first. On UMA there is no such tier: host and device share
one budget, and the OS page cache plays this part.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class HostStats:
    num_hits: int = 0
    num_misses: int = 0
    num_evictions: int = 0
    peak_bytes: int = 0


class HostStore:
    """Model bytes by expert, within ``budget_bytes``; thread-safe.

    Invariant: ``used_bytes`` is the sum of stored sizes and never exceeds the budget.
    """

    def __init__(self, budget_bytes: int, *, read: Callable[[Path], bytes] | None = None) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"{budget_bytes=} must be > 0")
        self.budget_bytes = budget_bytes
        self._read = read or (lambda path: path.read_bytes())
        self._entries: OrderedDict[str, bytes] = OrderedDict()  # expert -> model bytes, LRU first
        self.used_bytes = 0
        self._lock = threading.Lock()
        self.stats = HostStats()

    def get(self, expert: str, path: Path) -> bytes:
        """The expert's bytes, read from ``path`` (and kept, if they fit) on a miss."""
        with self._lock:
            data = self._entries.get(expert)
            if data is not None:
                self._entries.move_to_end(expert)
                self.stats.num_hits += 1
                return data
        data = self._read(path)  # outside the lock: disk reads are slow
        with self._lock:
            self.stats.num_misses += 1
            if expert in self._entries or len(data) > self.budget_bytes:
                return data
            while self.used_bytes + len(data) > self.budget_bytes:
                _, old = self._entries.popitem(last=False)
                self.used_bytes -= len(old)
                self.stats.num_evictions += 1
            self._entries[expert] = data
            self.used_bytes += len(data)
            self.stats.peak_bytes = max(self.stats.peak_bytes, self.used_bytes)
        return data

    def contains(self, expert: str) -> bool:
        with self._lock:
            return expert in self._entries
