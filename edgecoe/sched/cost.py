"""Cost estimates the schedulers plan with: execution K*n + B, load latency, batch limits.

Starts from the device profile (per architecture x processor kind) or, for
architectures it lacks, from size-based defaults; refined online from
observed batches and loads with an exponentially weighted average, so a
stale or missing profile corrects itself within a few batches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass

from edgecoe.profile import ArchitectureCost, DeviceProfile

# Fallback estimates per MB of weights, measured on a 2-core x86 CPU with the
# demo's CNNs (benchmarks/demo_costs.py): ~0.15 ms/item/MB to run, ~1.2 ms/MB to load.
_DEFAULT_K_MS_PER_MB = 0.15
_DEFAULT_LOAD_MS_PER_MB = 1.2
_DEFAULT_B_MS = 0.5
_DEFAULT_MAX_BATCH = 8
_EWMA = 0.2  # weight of a new observation


def default_architecture_cost(file_bytes: int, footprint_bytes: int) -> ArchitectureCost:
    """Size-based estimates for an architecture no profile covers (the same
    defaults the cost model starts from), with a known footprint."""
    mb = max(file_bytes, 1) / 1e6
    return ArchitectureCost(k_ms=_DEFAULT_K_MS_PER_MB * mb, b_ms=_DEFAULT_B_MS, max_batch=_DEFAULT_MAX_BATCH,
                            load_ms=_DEFAULT_LOAD_MS_PER_MB * mb, footprint_bytes=footprint_bytes)


@dataclass(slots=True)
class _ArchCost:
    k_ms: float
    b_ms: float
    max_batch: int
    load_ms_per_mb: float
    item_bytes: int


class CostModel:
    """Thread-safe estimates, keyed by (architecture, processor kind)."""

    def __init__(
        self, *, architecture_of: Mapping[str, str], bytes_of: Mapping[str, int],
        profile: DeviceProfile | None = None, resident: Callable[[str, str], bool] | None = None,
        max_batch_cap: int | None = None, resident_set: Callable[[str], Container[str]] | None = None,
        expert_max_batch: Mapping[str, int] | None = None,
    ) -> None:
        """
        Args:
            architecture_of: expert -> architecture tag.
            bytes_of: expert -> weight bytes (file size), for default estimates.
            profile: measured or published costs, where it has them.
            resident: (expert, processor_id) -> whether resident there now.
            max_batch_cap: an upper bound on every batch (policy presets use 1).
            resident_set: processor_id -> a snapshot of the experts resident
                there (one lock instead of one per expert, for schedulers
                that scan every queued group).
            expert_max_batch: expert -> the largest batch its model takes (a fixed batch
                dimension), whatever the profile measured for its architecture.
        """
        self.architecture_of = dict(architecture_of)
        self.bytes_of = dict(bytes_of)
        self.profile = profile
        self._resident = resident or (lambda expert, processor: False)
        self._resident_set = resident_set
        self.max_batch_cap = max_batch_cap
        self.expert_max_batch = dict(expert_max_batch or {})
        self._costs: dict[tuple[str, str], _ArchCost] = {}
        self._lock = threading.Lock()

    def _arch(self, expert: str, kind: str) -> _ArchCost:
        arch = self.architecture_of[expert]
        key = (arch, kind)
        cost = self._costs.get(key)
        if cost is None:
            mb = max(self.bytes_of.get(expert, 0), 1) / 1e6
            measured = self.profile.cost(arch, kind) if self.profile else None
            if measured is not None:
                cost = _ArchCost(measured.k_ms, measured.b_ms, measured.max_batch,
                                 measured.load_ms / mb, measured.item_bytes)
            else:
                cost = _ArchCost(_DEFAULT_K_MS_PER_MB * mb, _DEFAULT_B_MS, _DEFAULT_MAX_BATCH,
                                 _DEFAULT_LOAD_MS_PER_MB, 0)
            self._costs[key] = cost
        return cost

    def exec_ms(self, expert: str, kind: str, num_items: int) -> float:
        cost = self._arch(expert, kind)
        return cost.b_ms + cost.k_ms * num_items

    def item_ms(self, expert: str, kind: str) -> float:
        return self._arch(expert, kind).k_ms

    def batch_overhead_ms(self, expert: str, kind: str) -> float:
        return self._arch(expert, kind).b_ms

    def load_ms(self, expert: str, kind: str) -> float:
        return self._arch(expert, kind).load_ms_per_mb * max(self.bytes_of.get(expert, 0), 1) / 1e6

    def max_batch(self, expert: str, kind: str) -> int:
        limit = min(self._arch(expert, kind).max_batch, self.expert_max_batch.get(expert, 1 << 30))
        return min(limit, self.max_batch_cap) if self.max_batch_cap else limit

    def item_bytes(self, expert: str, kind: str) -> int:
        return self._arch(expert, kind).item_bytes

    def is_resident(self, expert: str, processor_id: str) -> bool:
        return self._resident(expert, processor_id)

    def residents(self, processor_id: str) -> Container[str]:
        """The experts resident on a processor now, for many ``in`` tests in a row."""
        if self._resident_set is not None:
            return self._resident_set(processor_id)
        return _ResidentView(self._resident, processor_id)

    # -- online refinement -----------------------------------------------------
    def observe_exec(self, expert: str, kind: str, num_items: int, ms: float) -> None:
        """Fold in one measured batch: splits the error between K and B by batch size."""
        with self._lock:
            cost = self._arch(expert, kind)
            predicted = cost.b_ms + cost.k_ms * num_items
            error = ms - predicted
            # Attribute the error per item (K) mostly for large batches, to B for single items.
            share_k = num_items / (num_items + 1)
            cost.k_ms = max(0.0, cost.k_ms + _EWMA * error * share_k / num_items)
            cost.b_ms = max(0.0, cost.b_ms + _EWMA * error * (1 - share_k))

    def observe_load(self, expert: str, kind: str, ms: float) -> None:
        with self._lock:
            cost = self._arch(expert, kind)
            mb = max(self.bytes_of.get(expert, 0), 1) / 1e6
            cost.load_ms_per_mb += _EWMA * (ms / mb - cost.load_ms_per_mb)


class _ResidentView:
    """``in`` through the per-expert callback, when no snapshot is available."""

    __slots__ = ("_processor", "_test")

    def __init__(self, test: Callable[[str, str], bool], processor_id: str) -> None:
        self._test = test
        self._processor = processor_id

    def __contains__(self, expert: object) -> bool:
        return self._test(expert, self._processor)  # type: ignore[arg-type]
