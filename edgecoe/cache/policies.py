"""Eviction policies: small objects that rank eviction candidates; the cache does the rest.

A policy never touches the cache's state. ``priority(entry)`` returns a sort
key; the cache evicts the candidate with the *smallest* key first. Policies are
chosen by name through :func:`create_eviction_policy`.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CandidateView:
    """What a policy may know about one evictable resident expert."""

    expert: str
    num_bytes: int
    loaded_seq: int  # when it became resident (monotonic counter)
    last_used_seq: int  # when it was last acquired


class EvictionPolicy(Protocol):
    name: str

    def priority(self, entry: CandidateView, resident: frozenset[str]) -> tuple[float, ...]:
        """Sort key; the smallest is evicted first. ``resident``: experts resident now."""
        ...

    def on_use(self, expert: str) -> None:
        """The cache tells the policy every time an expert is acquired."""
        ...

    def set_future(self, future_uses: Iterable[str]) -> None:
        """The order experts will be used in, where a driver knows it ahead
        (a trace being replayed); policies that do not look ahead ignore it."""
        ...

    def incoming(self, expert: str | None) -> None:
        """The expert room is being made for, just before candidates are ranked (None: an explicit
        eviction). Policies that partition the budget by groups of experts (MoE layers) use it."""
        ...


class _NoLookahead:
    """Mixin for policies that rank by the past only."""

    def set_future(self, future_uses: Iterable[str]) -> None:
        pass

    def incoming(self, expert: str | None) -> None:
        pass


class LruPolicy(_NoLookahead):
    """Least recently used first (the Samba-CoE baseline)."""

    name = "lru"

    def on_use(self, expert: str) -> None:
        pass  # recency is tracked by the cache (last_used_seq)

    def priority(self, entry: CandidateView, resident: frozenset[str]) -> tuple[float, ...]:
        return (entry.last_used_seq,)


class FifoPolicy(_NoLookahead):
    """Oldest load first, however often it is used (Samba-CoE FIFO)."""

    name = "fifo"

    def on_use(self, expert: str) -> None:
        pass

    def priority(self, entry: CandidateView, resident: frozenset[str]) -> tuple[float, ...]:
        return (entry.loaded_seq,)


class CoservePolicy(_NoLookahead):
    """CoServe's two-stage expert management.

    Stage 1: subsequent experts none of whose preliminary experts is resident
    (they cannot run soon), largest first. Stage 2: everything else, lowest
    usage probability first. Ties: least recently used.
    """

    name = "coserve"

    def __init__(self, *, usage_probability: Mapping[str, float], parents: Mapping[str, Iterable[str]]) -> None:
        self.usage_probability = dict(usage_probability)
        self.parents = {k: frozenset(v) for k, v in parents.items()}

    def on_use(self, expert: str) -> None:
        pass

    def priority(self, entry: CandidateView, resident: frozenset[str]) -> tuple[float, ...]:
        parents = self.parents.get(entry.expert, frozenset())
        if parents and not (parents & resident):
            return (0, -entry.num_bytes, entry.last_used_seq)
        return (1, self.usage_probability.get(entry.expert, 0.0), entry.last_used_seq)


class BeladyPolicy:
    """Offline optimum: evict the expert whose next use lies furthest in the future.

    Needs the future order of expert uses (:meth:`set_future`); each acquire
    (``on_use``) consumes that expert's earliest pending use, so "next use"
    stays relative to now. For evaluation: real traces only approximate the
    order in which a scheduler will really use experts.
    """

    name = "belady"

    def __init__(self, future_uses: Iterable[str]) -> None:
        self.set_future(future_uses)

    def set_future(self, future_uses: Iterable[str]) -> None:
        self._positions: dict[str, deque[int]] = defaultdict(deque)  # expert -> future use indices
        for index, expert in enumerate(future_uses):
            self._positions[expert].append(index)
        self._now = 0

    def on_use(self, expert: str) -> None:
        self.advance(expert)

    def incoming(self, expert: str | None) -> None:
        pass

    def advance(self, expert: str) -> None:
        """Record that ``expert`` was used now (its earliest pending use is consumed)."""
        queue = self._positions.get(expert)
        if queue:
            queue.popleft()
        self._now += 1

    def next_use(self, expert: str) -> float:
        queue = self._positions.get(expert)
        return float(queue[0]) if queue else float("inf")

    def priority(self, entry: CandidateView, resident: frozenset[str]) -> tuple[float, ...]:
        return (-self.next_use(entry.expert), entry.last_used_seq)


PolicyFactory = Callable[..., EvictionPolicy]

_REGISTRY: dict[str, PolicyFactory] = {
    "lru": lambda **_: LruPolicy(),
    "fifo": lambda **_: FifoPolicy(),
    "coserve": lambda *, usage_probability, parents, **_: CoservePolicy(
        usage_probability=usage_probability, parents=parents),
    "belady": lambda *, future_uses, **_: BeladyPolicy(future_uses),
}

EVICTION_POLICIES = tuple(_REGISTRY)


def create_eviction_policy(name: str, **context: object) -> EvictionPolicy:
    """Build an eviction policy by name.

    Args:
        name: one of :data:`EVICTION_POLICIES`.
        context: what policies may need: ``usage_probability`` and ``parents``
            (coserve), ``future_uses`` (belady). Extra keys are ignored.

    Raises:
        ValueError: unknown name (the message lists the valid ones), or a
            needed context key is missing.
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown eviction policy {name!r}; valid: {', '.join(EVICTION_POLICIES)}")
    try:
        return factory(**context)
    except TypeError as exc:
        raise ValueError(f"eviction policy {name!r} needs more context: {exc}") from exc
