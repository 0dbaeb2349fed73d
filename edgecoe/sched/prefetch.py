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
