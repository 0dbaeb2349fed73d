"""The loader thread: brings routed experts into the cache while the caller computes.

Mechanism only. A schedule (:mod:`edgecoe.moe.schedules`) decides which experts
to fetch; the model submits them here and goes on computing; this thread loads
them through the same :class:`~edgecoe.cache.ExpertCache` demand loads use.
The cache never loads one expert twice: a demand acquire of an expert this
thread is loading waits for that load instead of starting its own.

A new submission replaces whatever is still queued (a newer prediction
supersedes an older one), so the queue is bounded by one prediction's size.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Container, Sequence
from dataclasses import dataclass

from edgecoe.cache import CacheLoadError, ExpertCache


@dataclass
class PrefetchStats:
    num_submitted: int = 0
    num_loaded: int = 0  # loads this thread made
    num_skipped: int = 0  # already resident, or no room without evicting a protected expert
    num_superseded: int = 0  # dropped from the queue by a newer submission


class Prefetcher:
    """One background thread loading experts into ``cache``; thread-safe.

    Args:
        cache: the expert cache (its budget, pins and policy apply to prefetches too).
        max_queued: most experts one submission may queue (the rest are dropped).
    """

    def __init__(self, cache: ExpertCache, *, max_queued: int = 256) -> None:  # type: ignore[type-arg]
        self.cache = cache
        self.max_queued = max_queued
        self.stats = PrefetchStats()
        self._queue: deque[str] = deque()
        self._protect: Container[str] = frozenset()
        self._busy = False
        self._closed = False
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name="edgecoe-moe-prefetch", daemon=True)
        self._thread.start()

    def submit(self, experts: Sequence[str], *, protect: Container[str] = frozenset()) -> None:
        """Load ``experts`` in this order, evicting nothing in ``protect``; replaces what is queued."""
        with self._changed:
            self.stats.num_superseded += len(self._queue)
            self._queue = deque(experts[:self.max_queued])
            self._protect = protect
            self.stats.num_submitted += len(self._queue)
            self._changed.notify_all()

    def cancel(self) -> None:
        """Drop whatever is still queued (a load in progress finishes)."""
        with self._changed:
            self.stats.num_superseded += len(self._queue)
            self._queue.clear()

    def discard(self, experts: Container[str]) -> None:
        """Take ``experts`` out of the queue (dropped after running: fetching them now would bring back
        an expert nothing needs)."""
        with self._changed:
            kept = deque(e for e in self._queue if e not in experts)
            self.stats.num_superseded += len(self._queue) - len(kept)
            self._queue = kept

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until the queue is empty and no load is in progress; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def close(self) -> None:
        """Stop the thread after the load in progress (queued experts are dropped)."""
        with self._changed:
            self._closed = True
            self._queue.clear()
            self._changed.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closed)
                if self._closed:
                    return
                expert = self._queue.popleft()
                protect = self._protect
                self._busy = True
            try:
                self._fetch(expert, protect)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()

    def _fetch(self, expert: str, protect: Container[str]) -> None:
        if self.cache.contains(expert):
            self.stats.num_skipped += 1
            return
        try:
            got = self.cache.acquire(expert, protect=protect, wait=False)
        except (CacheLoadError, ValueError):
            got = None  # a failed prefetch is not a failure: the demand load reports it
        if got is None:
            self.stats.num_skipped += 1
            return
        self.cache.release(expert)
        if not got.hit:
            self.stats.num_loaded += 1
