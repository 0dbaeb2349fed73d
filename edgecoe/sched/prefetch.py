"""Dependency-aware prefetch: load a running expert's likely successors into free room.

Policy only: which experts to prefetch and what must be protected. The
runtime's background thread carries it out through the cache.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from edgecoe.cache import CacheLoadError, ExpertCache
from edgecoe.package.manifest import ExpertRecord
from edgecoe.package.routing import edge_fractions


def likely_successors(record: ExpertRecord, *, limit: int = 2) -> list[str]:
    """The experts this one's items most likely go on to, most likely first."""
    shares = edge_fractions(record, None)
    ranked = sorted(shares, key=lambda name: (-shares[name], name))
    return [name for name in ranked if shares[name] > 0][:limit]


def maybe_prefetch(cache: ExpertCache, experts: Iterable[str], *, protect: Container[str]) -> list[str]:
    """Make ``experts`` resident where that evicts nothing in ``protect``.

    ``protect`` holds every expert a queued or running batch needs: a prefetch
    may only displace experts nobody is waiting for. The cache asks it at
    eviction time, so a live view (the runtime's) also covers tasks queued
    after the prefetch was decided. Never waits for room.

    Returns:
        The experts actually loaded.
    """
    loaded = []
    for expert in experts:
        if cache.contains(expert):
            continue
        try:
            got = cache.acquire(expert, protect=protect, wait=False)
        except (CacheLoadError, ValueError):
            continue  # a failing prefetch is not a failure: the demand load reports it
        if got is not None:
            cache.release(expert)
            loaded.append(expert)
    return loaded


class NeededCounts:
    """How many queued or running tasks need each expert; ``in`` is live.

    Handed to the cache as a prefetch's protect set: the cache asks it at
    eviction time, so a task queued after the prefetch was decided is covered
    too. The owner updates it under its own lock; a single ``in`` (one dict
    ``get``) needs no lock of its own.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}  # expert -> tasks queued or running for it

    def add(self, expert: str) -> None:
        self._counts[expert] = self._counts.get(expert, 0) + 1

    def done(self, expert: str) -> None:
        """One task for ``expert`` ended. Raises KeyError if none was counted."""
        left = self._counts[expert] - 1
        if left:
            self._counts[expert] = left
        else:
            del self._counts[expert]

    def __contains__(self, expert: object) -> bool:
        return isinstance(expert, str) and self._counts.get(expert, 0) > 0

    def __bool__(self) -> bool:
        return bool(self._counts)
