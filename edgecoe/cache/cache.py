"""ExpertCache: the mechanism that keeps experts resident within a byte budget.

The cache owns the budget, the entries, their pins and states; an
:class:`~edgecoe.cache.policies.EvictionPolicy` only ranks candidates. Loading
and unloading are injected callables, so the runtime passes ONNX Runtime
session creation and the simulator passes a virtual-clock fake.

Entry states::

    (absent) --acquire miss--> LOADING --load ok--> RESIDENT --evict--> (absent)
                                  |                    ^ |
                                  +--load failed--> (absent)   pins count users

Invariants (checked by :meth:`check`): ``used_bytes`` is the sum of entry
bytes; it never exceeds ``budget_bytes`` once a load's measured size is known
unless ``overshoot`` is recorded; only RESIDENT entries with zero pins are
evicted; an expert loads at most once at a time (other acquirers wait).
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

from edgecoe.cache.policies import CandidateView, EvictionPolicy
from edgecoe.errors import CacheLoadError

H = TypeVar("H")

Loader = Callable[[str], tuple[H, int]]
"""Makes an expert resident; returns (handle, measured footprint in bytes)."""
Unloader = Callable[[str, H], None]
"""Releases an expert's handle (and gives its memory back)."""


class EntryState(enum.Enum):
    LOADING = "loading"
    RESIDENT = "resident"


@dataclass(slots=True)
class Entry(Generic[H]):
    expert: str
    num_bytes: int
    state: EntryState
    loaded_seq: int
    last_used_seq: int
    pins: int = 0
    handle: H | None = None


@dataclass(frozen=True, slots=True)
class Acquired(Generic[H]):
    """A pinned, resident expert. Call :meth:`ExpertCache.release` when done."""

    expert: str
    handle: H
    hit: bool  # True if it was already resident (or being loaded by someone else)


@dataclass(frozen=True, slots=True)
class EvictResult:
    evicted: list[str]
    freed_bytes: int
    enough: bool  # whether the requested room is now free


@dataclass
class CacheStats:
    num_hits: int = 0
    num_misses: int = 0  # acquisitions that had to load: "switches"
    num_evictions: int = 0
    num_load_failures: int = 0
    bytes_loaded: int = 0
    peak_bytes: int = 0
    load_seconds: float = 0.0
    unload_seconds: float = 0.0
    events: list[tuple[str, str]] = field(default_factory=list)  # (load|evict, expert), if recording


class ExpertCache(Generic[H]):
    """Keeps experts resident within ``budget_bytes``; thread-safe.

    Args:
        budget_bytes: bytes the resident experts may use together.
        loader / unloader: make resident / release one expert.
        policy: ranks eviction candidates.
        size_of: expected footprint of an expert before it is loaded (from the
            profile or the file size); used to make room ahead of the load.
        record_events: keep an ordered list of loads and evictions (tests, traces).
        on_evict: called (under the cache lock: keep it cheap) with each evicted expert.
    """

    def __init__(
        self, *, budget_bytes: int, loader: Loader[H], unloader: Unloader[H], policy: EvictionPolicy,
        size_of: Callable[[str], int], record_events: bool = False,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"{budget_bytes=} must be > 0")
        self.budget_bytes = budget_bytes
        self._loader = loader
        self._unloader = unloader
        self.policy = policy
        self._size_of = size_of
        self._record = record_events
        self._on_evict = on_evict
        self._entries: dict[str, Entry[H]] = {}  # expert -> entry (LOADING or RESIDENT)
        self._used_bytes = 0
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.stats = CacheStats()

    # -- queries -------------------------------------------------------------
    @property
    def used_bytes(self) -> int:
        return self._used_bytes

    @property
    def free_bytes(self) -> int:
        return self.budget_bytes - self._used_bytes

    def resident(self) -> frozenset[str]:
        """Experts resident now (loading ones excluded)."""
        with self._lock:
            return self._resident_locked()

    def _resident_locked(self) -> frozenset[str]:
        return frozenset(n for n, e in self._entries.items() if e.state is EntryState.RESIDENT)

    def members(self) -> frozenset[str]:
        """Experts resident or being loaded (what :meth:`contains` answers for), as one snapshot."""
        with self._lock:
            return frozenset(self._entries)

    def contains(self, expert: str) -> bool:
        """Resident or being loaded."""
        with self._lock:
            return expert in self._entries

    def __contains__(self, expert: object) -> bool:
        """``expert in cache``: :meth:`contains`, so the cache is a live view of what is resident."""
        return isinstance(expert, str) and self.contains(expert)

    def pins(self, expert: str) -> int:
        with self._lock:
            entry = self._entries.get(expert)
            return entry.pins if entry else 0

    # -- acquire / release ---------------------------------------------------
    def acquire(self, expert: str, *, protect: Container[str] = frozenset(), wait: bool = True) -> Acquired[H] | None:
        """Pin ``expert``, loading it first if needed.

        Args:
            protect: experts that must not be evicted to make room (e.g.
                those queued batches need). Any container: it is asked at
                eviction time, so a live view sees the needs of that moment.
            wait: if room cannot be made now because other experts are
                pinned, return None instead of waiting for them.

        Returns:
            The pinned expert, or None when room cannot be made (everything
            evictable is pinned or protected) and ``wait`` is False.

        Raises:
            CacheLoadError: the loader failed (accounting restored first).
            ValueError: the expert can never fit the budget.
        """
        needed = self._size_of(expert)
        if needed > self.budget_bytes:
            raise ValueError(f"expert {expert!r} needs {needed} bytes > cache budget_bytes={self.budget_bytes}")
        with self._changed:
            while True:
                entry = self._entries.get(expert)
                if entry is not None and entry.state is EntryState.RESIDENT:
                    self.policy.on_use(expert)
                    entry.pins += 1
                    entry.last_used_seq = next(self._seq)
                    self.stats.num_hits += 1
                    return Acquired(expert, cast(H, entry.handle), hit=True)
                if entry is not None:  # LOADING elsewhere: wait for it, never load twice
                    self._changed.wait()
                    continue
                result = self._evict_locked(needed - self.free_bytes, protect, keep=expert)
                if result.enough:
                    break
                if not wait:
                    return None
                self._changed.wait()
            seq = next(self._seq)
            self.policy.on_use(expert)
            self._entries[expert] = Entry(expert, needed, EntryState.LOADING, seq, seq, pins=1)
            self._used_bytes += needed
            self.stats.peak_bytes = max(self.stats.peak_bytes, self._used_bytes)
        started = time.perf_counter()
        try:
            handle, measured = self._loader(expert)
        except Exception as exc:
            with self._changed:
                self._entries.pop(expert, None)
                self._used_bytes -= needed
                self.stats.num_load_failures += 1
                self._changed.notify_all()
            raise CacheLoadError(f"loading expert {expert!r} failed: {exc}") from exc
        elapsed = time.perf_counter() - started
        with self._changed:
            entry = self._entries[expert]
            entry.state = EntryState.RESIDENT
            entry.handle = handle
            self._used_bytes += measured - entry.num_bytes
            entry.num_bytes = measured
            if self._used_bytes > self.budget_bytes:  # measured more than expected: make room now
                self._evict_locked(self._used_bytes - self.budget_bytes, protect, keep=expert)
            self.stats.num_misses += 1
            self.stats.bytes_loaded += measured
            self.stats.load_seconds += elapsed
            self.stats.peak_bytes = max(self.stats.peak_bytes, self._used_bytes)
            if self._record:
                self.stats.events.append(("load", expert))
            self._changed.notify_all()
        return Acquired(expert, handle, hit=False)

    def release(self, expert: str) -> None:
        """Unpin once. Raises ValueError if the expert is not pinned."""
        with self._changed:
            entry = self._entries.get(expert)
            if entry is None or entry.pins <= 0:
                raise ValueError(f"release of {expert!r} without a matching acquire")
            entry.pins -= 1
            self._changed.notify_all()

    # -- eviction --------------------------------------------------------------
    def evict(self, num_bytes: int, *, protect: Container[str] = frozenset()) -> EvictResult:
        """Free at least ``num_bytes`` (beyond what is free now) if possible."""
        with self._changed:
            return self._evict_locked(num_bytes, protect)

    def _evict_locked(self, num_bytes: int, protect: Container[str], keep: str | None = None) -> EvictResult:
        if num_bytes <= 0:
            return EvictResult([], 0, True)
        resident = self._resident_locked()
        candidates = [
            CandidateView(e.expert, e.num_bytes, e.loaded_seq, e.last_used_seq)
            for e in self._entries.values()
            if e.state is EntryState.RESIDENT and e.pins == 0 and e.expert != keep and e.expert not in protect
        ]
        if sum(c.num_bytes for c in candidates) < num_bytes:
            return EvictResult([], 0, False)  # evict nothing rather than something useless
        self.policy.incoming(keep)
        candidates.sort(key=lambda c: self.policy.priority(c, resident))
        evicted: list[str] = []
        freed = 0
        for candidate in candidates:
            if freed >= num_bytes:
                break
            entry = self._entries.pop(candidate.expert)
            self._used_bytes -= entry.num_bytes
            freed += entry.num_bytes
            evicted.append(candidate.expert)
            self.stats.num_evictions += 1
            if self._record:
                self.stats.events.append(("evict", candidate.expert))
            if self._on_evict is not None:
                self._on_evict(candidate.expert)
            started = time.perf_counter()
            # NOTE: unloading under the lock keeps accounting and memory in step;
            # it is cheap (dropping a session), unlike loading.
            self._unloader(candidate.expert, cast(H, entry.handle))
            self.stats.unload_seconds += time.perf_counter() - started
        return EvictResult(evicted, freed, freed >= num_bytes)

    def drop(self, experts: Iterable[str]) -> list[str]:
        """Unload those of ``experts`` that are resident and unpinned (a schedule's explicit release).

        Returns:
            The experts unloaded.
        """
        dropped = []
        with self._changed:
            for name in experts:
                entry = self._entries.get(name)
                if entry is None or entry.state is not EntryState.RESIDENT or entry.pins:
                    continue
                del self._entries[name]
                self._used_bytes -= entry.num_bytes
                self.stats.num_evictions += 1
                if self._record:
                    self.stats.events.append(("evict", name))
                if self._on_evict is not None:
                    self._on_evict(name)
                self._unloader(name, cast(H, entry.handle))
                dropped.append(name)
            if dropped:
                self._changed.notify_all()
        return dropped

    def preload(self, experts: Iterable[str]) -> list[str]:
        """Load ``experts`` in this order wherever they fit in free room; never evicts.

        A load that fails is skipped (and counted in ``stats``): start-up goes on
        without that expert, and a later demand load reports the failure.

        Returns:
            The experts made resident.
        """
        loaded = []
        for expert in experts:
            if self._size_of(expert) > self.free_bytes:
                continue
            try:
                self.acquire(expert, wait=False)
            except CacheLoadError:
                continue
            self.release(expert)
            loaded.append(expert)
        return loaded

    def clear(self) -> None:
        """Unload every unpinned resident expert."""
        with self._changed:
            for name in [n for n, e in self._entries.items() if e.state is EntryState.RESIDENT and e.pins == 0]:
                entry = self._entries.pop(name)
                self._used_bytes -= entry.num_bytes
                self._unloader(name, cast(H, entry.handle))
            self._changed.notify_all()

    def check(self) -> None:
        """Assert the accounting invariants (tests and debug builds)."""
        with self._lock:
            total = sum(e.num_bytes for e in self._entries.values())
            assert total == self._used_bytes, f"{total=} != used_bytes={self._used_bytes}"
            assert all(e.pins >= 0 for e in self._entries.values())
