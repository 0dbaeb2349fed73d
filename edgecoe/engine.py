"""The engine: everything a serving mode needs, built once from (package, profile, config, loader).

One engine, several drivers. The real runtime (threads, futures, ONNX Runtime
sessions), the simulator (a virtual clock and a cost-model loader) and the
bench all build their serving parts here and only drive them:

    manifest + device profile + config + loader
        -> executors          (which workers run on which processor)
        -> footprints, budgets (the only place a budget string becomes bytes)
        -> caches             (one ExpertCache per processor, loading through the loader)
        -> cost model, scheduler, preload
        -> report             (one builder for every mode)

The engine itself holds no threads and no clock of its own: drivers call
``scheduler.add`` / ``pop_batch`` / ``batch_done`` under their own lock and
acquire experts through ``caches``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Generic

from edgecoe.cache import ExpertCache, create_eviction_policy
from edgecoe.cache.cache import H
from edgecoe.config import RuntimeConfig, parse_budget
from edgecoe.errors import InvalidInputError
from edgecoe.loaders import ExpertLoader, LoadedExpert
from edgecoe.memory import total_memory_bytes
from edgecoe.package.manifest import Manifest
from edgecoe.package.routing import ExpertGraph
from edgecoe.profile import DeviceProfile
from edgecoe.results import Report, latency_cdf, latency_summary
from edgecoe.sched import CostModel, SchedulingPolicy, create_scheduler
from edgecoe.sched.prefetch import maybe_prefetch
from edgecoe.sched.presets import Preset, prefetch_enabled
from edgecoe.sched.types import ExecutorInfo, build_executors
from edgecoe.timeline import Timeline

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Milliseconds since the driver's start (wall clock or virtual)."""


def plan_executors(profile: DeviceProfile, config: RuntimeConfig) -> list[ExecutorInfo]:
    """The executors a config runs on a profile's processors (parallel presets run the profiled count)."""
    return build_executors(((p.id, p.kind, p.num_executors) for p in profile.processors),
                           parallel=config.resolved_preset().parallel, num_executors=config.num_executors)


def apply_budget(profile: DeviceProfile, budget: str | int | None, *, total_bytes: int) -> DeviceProfile:
    """The profile with every processor's expert budget set from ``budget``.

    Args:
        budget: bytes, a size ("800MB") or a share of ``total_bytes`` ("25%");
            None keeps the profile's own budgets.
        total_bytes: resident bytes of every expert together (what a share is of).

    Raises:
        InvalidInputError: the budget does not parse or is not positive.
    """
    if budget is None:
        return profile
    budget_bytes = parse_budget(budget, total_bytes=total_bytes)
    for processor in profile.processors:
        profile = profile.with_budget(processor.id, budget_bytes)
    return profile


def queue_limits(profile: DeviceProfile, config: RuntimeConfig) -> tuple[int, int]:
    """(requests, input bytes) a runtime lets be in flight: the config's, else from the device's memory.

    NOTE: 5 % of host memory (64 MiB to 1 GiB) for queued inputs: enough for thousands of
    camera frames, and a burst can no longer grow the process past its budgets.
    """
    if config.max_queued_input_bytes is not None:
        return config.max_queued_requests, config.max_queued_input_bytes
    host = profile.device.host_memory_bytes if profile.device is not None else total_memory_bytes()
    return config.max_queued_requests, min(1 << 30, max(64 << 20, host // 20))


@dataclass(frozen=True, slots=True)
class CacheTotals:
    """Counters summed over every processor's cache, at one moment (reports take differences)."""

    misses: int
    hits: int
    evictions: int
    bytes_loaded: int
    prefetches: int
    load_seconds: float = 0.0

    ZERO: ClassVar[CacheTotals]

    def __sub__(self, other: CacheTotals) -> CacheTotals:
        return CacheTotals(self.misses - other.misses, self.hits - other.hits, self.evictions - other.evictions,
                           self.bytes_loaded - other.bytes_loaded, self.prefetches - other.prefetches,
                           self.load_seconds - other.load_seconds)


CacheTotals.ZERO = CacheTotals(0, 0, 0, 0, 0, 0.0)


@dataclass
class Engine(Generic[H]):
    """The serving parts of one (package, profile, config, loader); see the module docstring.

    Invariants: every expert's footprint fits every processor's budget (checked
    at build); ``profile`` carries the budgets the caches were built with.
    """

    manifest: Manifest
    graph: ExpertGraph
    profile: DeviceProfile
    config: RuntimeConfig
    preset: Preset
    loader: ExpertLoader[H]
    executors: list[ExecutorInfo]
    caches: dict[str, ExpertCache[LoadedExpert[H]]]  # processor id -> its expert pool
    cost: CostModel
    scheduler: SchedulingPolicy
    working_bytes_per_executor: dict[str, int]  # processor id -> memory reserved for one executor's batch
    _num_prefetches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- queries ------------------------------------------------------------------
    def footprint(self, expert: str) -> int:
        """Bytes ``expert`` holds once resident."""
        return self.loader.footprint_bytes(expert)

    @property
    def total_footprint_bytes(self) -> int:
        """Resident bytes of every expert together: what a percentage budget is a share of."""
        return sum(self.footprint(n) for n in self.manifest.experts)

    def prefetches_on(self, processor_kind: str) -> bool:
        return prefetch_enabled(self.preset, processor_kind)

    def executors_per_processor(self) -> dict[str, int]:
        return {p.id: sum(1 for e in self.executors if e.processor_id == p.id) for p in self.profile.processors}

    # -- actions ------------------------------------------------------------------
    def preload(self) -> None:
        """Fill each processor's budget with the most likely experts (CoServe start-up); never evicts.

        On NUMA devices the host tier is then filled with the next most likely experts, those
        no processor holds: a switch to them copies from host memory instead of reading storage.
        NOTE: without this the host tier held copies of what the device had just preloaded.
        """
        ranked = sorted(self.manifest.experts, key=lambda n: -self.manifest.experts[n].usage_probability)
        for processor_id, cache in self.caches.items():
            failures = cache.stats.num_load_failures
            cache.preload(ranked)
            if cache.stats.num_load_failures > failures:
                logger.warning("preload on %s: %d expert(s) failed to load", processor_id,
                               cache.stats.num_load_failures - failures)
        host = self.loader.host
        if host is None:
            return
        resident = set().union(*(cache.members() for cache in self.caches.values()))
        staged = 0
        for expert in ranked:
            if expert in resident:
                continue
            size = self.manifest.experts[expert].total_bytes
            if staged + size > host.budget_bytes:
                break
            self.loader.stage(expert)
            staged += size

    def set_future(self, future_uses: list[str]) -> None:
        """Tell every eviction policy the order experts will be used in (look-ahead policies use it)."""
        for cache in self.caches.values():
            cache.policy.set_future(future_uses)

    def prefetch(self, processor_id: str, experts: Iterable[str], *, protect: Container[str]) -> list[str]:
        """Load ``experts`` into free room on a processor, evicting nothing in ``protect``.

        Returns:
            The experts loaded (counted as prefetches, not switches).
        """
        loaded = maybe_prefetch(self.caches[processor_id], experts, protect=protect)
        if loaded:
            with self._lock:
                self._num_prefetches += len(loaded)
        return loaded

    def totals(self) -> CacheTotals:
        caches = list(self.caches.values())
        with self._lock:
            prefetches = self._num_prefetches
        return CacheTotals(sum(c.stats.num_misses for c in caches), sum(c.stats.num_hits for c in caches),
                           sum(c.stats.num_evictions for c in caches), sum(c.stats.bytes_loaded for c in caches),
                           prefetches, sum(c.stats.load_seconds for c in caches))

    def report(
        self, *, num_requests: int, latencies_ms: list[float], wall_s: float, since: CacheTotals,
        errors: dict[str, int], startup_s: float = 0.0, simulated: bool = False,
        quarantined: dict[str, str] | None = None, expert_failures: dict[str, int] | None = None,
    ) -> Report:
        """The run report: requests, latencies, and the caches' counters since ``since``."""
        delta = self.totals() - since
        completed = len(latencies_ms)
        host = self.loader.host
        return Report(
            policy=self.config.policy, package=self.manifest.name, num_requests=num_requests,
            num_completed=completed, num_failed=num_requests - completed, wall_s=wall_s,
            throughput_rps=completed / wall_s if wall_s > 0 else 0.0,
            latency_ms=latency_summary(latencies_ms), latency_cdf_ms=latency_cdf(latencies_ms),
            num_switches=delta.misses - delta.prefetches, num_hits=delta.hits, num_prefetches=delta.prefetches,
            num_evictions=delta.evictions, bytes_loaded=delta.bytes_loaded,
            peak_bytes={**{p: c.stats.peak_bytes for p, c in self.caches.items()},
                        **({"host": host.stats.peak_bytes} if host else {})},
            budget_bytes={**{p: c.budget_bytes for p, c in self.caches.items()},
                          **({"host": host.budget_bytes} if host else {})},
            working_bytes={p: n * self.working_bytes_per_executor[p] for p, n in self.executors_per_processor().items()},
            load_s=0.0 if simulated else delta.load_seconds,
            executors=self.executors_per_processor(), startup_s=startup_s, simulated=simulated,
            profile=self.profile.name, errors=errors, quarantined=quarantined or {},
            expert_failures=expert_failures or {}, slo_ms=self.config.slo_ms,
            goodput_rps=(sum(1 for x in latencies_ms if x <= self.config.slo_ms) / wall_s
                         if self.config.slo_ms is not None and wall_s > 0 else None),
        )


def build_engine(
    manifest: Manifest, profile: DeviceProfile, config: RuntimeConfig, loader: ExpertLoader[H], *,
    graph: ExpertGraph | None = None, clock: Clock | None = None, timeline: Timeline | None = None,
) -> Engine[H]:
    """Build the serving parts; see the module docstring.

    Args:
        manifest: the package's manifest (experts, routes, probabilities).
        profile: processors, budgets and costs; ``config.budget`` overrides the budgets.
        config: policy preset and overrides.
        loader: makes experts resident (sessions, simulated costs, a test double).
        graph: the manifest's expert graph, if already built.
        clock: the driver's clock, for timeline events.
        timeline: where evictions are recorded, if anywhere.

    Raises:
        InvalidInputError: a bad budget, or an expert that can never fit a processor's budget.
    """
    config.validate()
    preset = config.resolved_preset()
    graph = graph or ExpertGraph.from_manifest(manifest)
    executors = plan_executors(profile, config)
    total = sum(loader.footprint_bytes(n) for n in manifest.experts)
    profile = apply_budget(profile, config.budget, total_bytes=total)
    for processor in profile.processors:
        _check_fits(manifest, loader, processor.id, processor.budget_bytes)
    caches: dict[str, ExpertCache[LoadedExpert[H]]] = {}
    experts = manifest.experts
    cost = cost_model(manifest, profile, preset, resident=lambda expert, proc: caches[proc].contains(expert),
                      resident_set=lambda proc: caches[proc].members())
    on_evict = None
    if timeline is not None and clock is not None:
        def on_evict(expert: str) -> None:
            timeline.instant("evict", expert, -1, clock())
    for processor in profile.processors:
        caches[processor.id] = ExpertCache(
            budget_bytes=processor.budget_bytes, loader=_cache_loader(loader, cost, processor.id, processor.kind),
            unloader=loader.unload, size_of=loader.footprint_bytes, on_evict=on_evict,
            policy=create_eviction_policy(
                preset.eviction, usage_probability={n: e.usage_probability for n, e in experts.items()},
                parents=graph.parents, future_uses=[]))
    working = working_bytes_per_executor(manifest, profile, cost)
    scheduler = create_scheduler(preset.scheduler, executors, cost, working_bytes=working.__getitem__,
                                 max_delay_ms=config.max_delay_ms)
    engine = Engine(manifest=manifest, graph=graph, profile=profile, config=config, preset=preset, loader=loader,
                    executors=executors, caches=caches, cost=cost, scheduler=scheduler,
                    working_bytes_per_executor=working)
    if preset.preload:
        engine.preload()
    return engine


def cost_model(manifest: Manifest, profile: DeviceProfile, preset: Preset, *,
               resident: Callable[[str, str], bool] | None = None,
               resident_set: Callable[[str], Container[str]] | None = None) -> CostModel:
    """The cost model a preset schedules with on a profile (residency from the caches, where given)."""
    experts = manifest.experts
    return CostModel(architecture_of={n: e.architecture for n, e in experts.items()},
                     bytes_of={n: e.total_bytes for n, e in experts.items()}, profile=profile,
                     resident=resident, resident_set=resident_set, max_batch_cap=None if preset.batching else 1,
                     expert_max_batch={n: e.batch.max for n, e in experts.items() if e.batch.max is not None})


def working_bytes_per_executor(manifest: Manifest, profile: DeviceProfile, cost: CostModel) -> dict[str, int]:
    """Memory one executor's largest batch needs on each processor: the profile's per-item
    memory times its max batch, for the most demanding architecture of the package.

    It is reserved apart from the expert budget (reported as ``working_bytes``), so batch
    sizes never depend on how full the expert cache is.
    """
    first_of: dict[str, str] = {}
    for name, record in manifest.experts.items():
        first_of.setdefault(record.architecture, name)
    return {p.id: max((cost.max_batch(e, p.kind) * cost.item_bytes(e, p.kind) for e in first_of.values()),
                      default=0)
            for p in profile.processors}


def _cache_loader(loader: ExpertLoader[H], cost: CostModel, processor_id: str,
                  kind: str) -> Callable[[str], tuple[LoadedExpert[H], int]]:
    """The cache's view of the loader for one processor: measured loads refine the cost model."""

    def load(expert: str) -> tuple[LoadedExpert[H], int]:
        loaded = loader.load(expert, processor_id)
        if loaded.measured:
            cost.observe_load(expert, kind, loaded.load_ms)
        return loaded, loaded.num_bytes

    return load


def _check_fits(manifest: Manifest, loader: ExpertLoader[H], processor_id: str, budget_bytes: int) -> None:
    too_big = [(n, loader.footprint_bytes(n)) for n in manifest.experts if loader.footprint_bytes(n) > budget_bytes]
    if too_big:
        name, size = max(too_big, key=lambda t: t[1])
        raise InvalidInputError(
            f"expert {name!r} needs {size} bytes resident but processor {processor_id} has a budget of "
            f"{budget_bytes} bytes ({len(too_big)} expert(s) can never fit); raise the budget")
