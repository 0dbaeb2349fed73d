"""The host-memory tier of a NUMA device: expert model bytes kept in RAM.

On a discrete-GPU box, making an expert resident on the GPU from host memory
is several times faster than from disk (CoServe measured loads at 63-86 % of
a request's latency from host memory against 91-99 % from SSD). The host tier
keeps model bytes within its own budget, least recently used out first. On
UMA there is no such tier: host and device share one budget, and the OS page
cache plays this part.

One mechanism serves both modes: the session loader keeps the real bytes
(:meth:`HostStore.get`, keyed by model file); the simulated loader keeps only
their sizes (:meth:`HostStore.touch`, keyed by expert), so a simulated NUMA
run evicts exactly as a real one.
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
    """Model bytes (or, simulated, their sizes) by expert, within ``budget_bytes``; thread-safe.

    Invariant: ``used_bytes`` is the sum of stored sizes and never exceeds the budget.
    """

    def __init__(self, budget_bytes: int, *, read: Callable[[Path], bytes] | None = None) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"{budget_bytes=} must be > 0")
        self.budget_bytes = budget_bytes
        self._read = read or (lambda path: path.read_bytes())
        self._entries: OrderedDict[str, tuple[bytes | None, int]] = OrderedDict()  # expert -> (data, size), LRU first
        self.used_bytes = 0
        self._lock = threading.Lock()
        self.stats = HostStats()

    def get(self, expert: str, path: Path) -> bytes:
        """The expert's bytes, read from ``path`` (and kept, if they fit) on a miss."""
        with self._lock:
            data = self._hit_locked(expert)
            if data is not None:
                return data
        data = self._read(path)  # outside the lock: disk reads are slow
        with self._lock:
            self._insert_locked(expert, data, len(data))
        return data

    def touch(self, expert: str, num_bytes: int) -> bool:
        """Record a use of ``num_bytes`` without holding them (simulation).

        Returns:
            Whether the expert's bytes were already in host memory.
        """
        with self._lock:
            if expert in self._entries:
                self._hit_locked(expert)
                return True
            self._insert_locked(expert, None, num_bytes)
            return False

    def contains(self, expert: str) -> bool:
        with self._lock:
            return expert in self._entries

    def _hit_locked(self, expert: str) -> bytes | None:
        entry = self._entries.get(expert)
        if entry is None:
            return None
        self._entries.move_to_end(expert)
        self.stats.num_hits += 1
        return entry[0]

    def _insert_locked(self, expert: str, data: bytes | None, num_bytes: int) -> None:
        self.stats.num_misses += 1
        if expert in self._entries or num_bytes > self.budget_bytes:
            return  # read twice concurrently, or larger than the tier: served, not kept
        while self.used_bytes + num_bytes > self.budget_bytes:
            _, (_, size) = self._entries.popitem(last=False)
            self.used_bytes -= size
            self.stats.num_evictions += 1
        self._entries[expert] = (data, num_bytes)
        self.used_bytes += num_bytes
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.used_bytes)
