"""Expert loaders: how an expert becomes resident on a processor, injected into the engine.

The engine's caches own budgets, pins and eviction order; a loader only makes
one expert resident and releases it again. Three kinds drive the same engine:

- :class:`~edgecoe.loaders.session.SessionLoader` creates ONNX Runtime
  sessions (with the optimized-model cache and a NUMA host tier);
- :class:`~edgecoe.loaders.simulated.CostModelLoader` loads nothing and
  reports what a load would cost per the device profile (the simulator);
- tests pass their own (one that fails on cue, one that records calls).

A loader of weight tensors (MoE experts copied into resident buffers) fits
the same protocol: its handle is the buffer, its footprint the buffer's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from edgecoe.cache.host import HostStore

H = TypeVar("H")
H_co = TypeVar("H_co", covariant=True)


@dataclass(frozen=True, slots=True)
class LoadedExpert(Generic[H]):
    """An expert made resident on one processor.

    Attributes:
        handle: what runs it (an ``InferenceSession``; None when simulated).
        num_bytes: memory it holds while resident (what the cache budgets).
        load_ms: how long making it resident took (or would take, simulated).
        measured: ``load_ms`` is a wall-clock measurement (refines the cost
            model) rather than the profile's estimate.
        source: where its bytes came from: ``disk``, ``host`` (NUMA host
            tier) or ``model`` (simulated from the profile).
    """

    handle: H
    num_bytes: int
    load_ms: float
    measured: bool
    source: str = "disk"


class ExpertLoader(Protocol[H]):
    """Makes experts resident; the engine calls it through its caches.

    Implementations are thread-safe: executors and the prefetcher load
    different experts concurrently (the cache never loads one expert twice
    at once).
    """

    @property
    def host(self) -> HostStore | None:
        """The NUMA host-memory tier in front of the device, if any (reported per run)."""
        ...

    def footprint_bytes(self, expert: str) -> int:
        """Bytes ``expert`` will hold once resident (budgets are kept against this)."""
        ...

    def load(self, expert: str, processor_id: str) -> LoadedExpert[H]:
        """Make ``expert`` resident on ``processor_id``.

        Raises:
            EdgecoeError: (any subclass) the expert cannot be loaded; the
                cache restores its accounting and reports a CacheLoadError.
        """
        ...

    def unload(self, expert: str, loaded: LoadedExpert[H]) -> None:
        """Release what :meth:`load` made resident (called under the cache's lock: keep it cheap)."""
        ...

    def stage(self, expert: str) -> None:
        """Bring ``expert``'s bytes into the host tier without making it resident (NUMA start-up).

        Only called when :attr:`host` is not None.
        """
        ...


class WrappedLoader(Generic[H]):
    """A loader that delegates to another: subclass it to observe or change some calls
    (count loads, inject faults, wrap handles) and keep the rest as they are."""

    def __init__(self, inner: ExpertLoader[H]) -> None:
        self.inner = inner

    @property
    def host(self) -> HostStore | None:
        return self.inner.host

    def footprint_bytes(self, expert: str) -> int:
        return self.inner.footprint_bytes(expert)

    def load(self, expert: str, processor_id: str) -> LoadedExpert[H]:
        return self.inner.load(expert, processor_id)

    def unload(self, expert: str, loaded: LoadedExpert[H]) -> None:
        self.inner.unload(expert, loaded)

    def stage(self, expert: str) -> None:
        self.inner.stage(expert)


__all__ = ["ExpertLoader", "LoadedExpert", "WrappedLoader"]
