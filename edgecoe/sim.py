"""Simulated mode: the real schedulers and cache on a virtual clock.

Costs come from a device profile instead of real sessions: a batch of n on a
processor takes K*n + B ms, a switch takes the profiled load latency (from
host memory when a NUMA profile's host tier holds the expert's bytes, else
from disk). Routing samples each expert's declared route fractions. This lets
policies be compared at sizes this machine cannot hold (350 experts, 60 GB).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from edgecoe.cache import ExpertCache, create_eviction_policy
from edgecoe.config import RuntimeConfig, parse_budget
from edgecoe.errors import InvalidInputError
from edgecoe.package.manifest import ArgmaxRoute, FanoutRoute, Manifest, ThresholdRoute
from edgecoe.package.routing import ExpertGraph, entry_expert, static_num_classes
from edgecoe.profiler.schema import DeviceProfile
from edgecoe.results import Report, latency_cdf, latency_summary
from edgecoe.sched import CostModel, ExecutorInfo, Task, create_scheduler
from edgecoe.sched.prefetch import likely_successors, maybe_prefetch
from edgecoe.sched.presets import prefetch_enabled
from edgecoe.sched.types import Batch, build_executors
from edgecoe.timeline import Timeline
from edgecoe.workload import Workload


def sample_next(record_route: object, num_classes: int | None, rng: np.random.Generator) -> list[str]:
    """Draw where one item goes from a route's declared fractions."""
    route = record_route
    if isinstance(route, FanoutRoute):
        return list(route.next)
    if isinstance(route, ThresholdRoute):
        above = 0.5 if route.fraction_above is None else route.fraction_above
        return list(route.above if rng.random() < above else route.below)
    if isinstance(route, ArgmaxRoute):
        declared = dict(route.class_fractions or {})
        classes = sorted(set(range(num_classes or 0)) | set(route.classes) | set(declared))
        rest = [c for c in classes if c not in declared]
        left = max(0.0, 1.0 - sum(declared.values()))
        probs = [declared.get(c, left / len(rest) if rest else 0.0) for c in classes]
        total = sum(probs)
        if total <= 0:
            return list(route.default)
        cls = classes[int(rng.choice(len(classes), p=np.array(probs) / total))]
        return list(route.classes.get(cls, route.default))
    return []


@dataclass
class _HostTier:
    """NUMA host memory holding expert bytes, least recently used out first."""

    budget_bytes: int
    used_bytes: int = 0
    entries: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def touch(self, expert: str, num_bytes: int) -> bool:
        """Record a use; returns whether the bytes were already there."""
        if expert in self.entries:
            self.entries.move_to_end(expert)
            return True
        if num_bytes <= self.budget_bytes:
            while self.used_bytes + num_bytes > self.budget_bytes:
                _, size = self.entries.popitem(last=False)
                self.used_bytes -= size
            self.entries[expert] = num_bytes
            self.used_bytes += num_bytes
        return False


def simulate(
    manifest: Manifest, profile: DeviceProfile, workload: Workload, *, config: RuntimeConfig | None = None,
    seed: int = 0, timeline: Timeline | None = None,
) -> Report:
    """Serve ``workload`` on a virtual clock and report as a real run would.

    Every architecture in the manifest needs a cost entry for every processor
    kind in the profile (K, B, max batch, load latency, footprint).
    With ``eviction="belady"`` the run is made twice: once with LRU to record
    the order experts are used in, then with Belady given that order as the
    known future (exact for FCFS, whose order does not depend on residency).

    Raises:
        InvalidInputError: the profile lacks costs the simulation needs, or an
            expert can never fit a budget.
    """
    from dataclasses import replace

    config = config or RuntimeConfig()
    config.validate()
    future = None
    if config.resolved_preset().eviction == "belady":
        _, future = _simulate(manifest, profile, workload, replace(config, eviction="lru"), seed, None, None)
    return _simulate(manifest, profile, workload, config, seed, future, timeline)[0]


def _simulate(
    manifest: Manifest, profile: DeviceProfile, workload: Workload, config: RuntimeConfig, seed: int,
    future_uses: list[str] | None, timeline: Timeline | None,
) -> tuple[Report, list[str]]:
    preset = config.resolved_preset()
    graph = ExpertGraph.from_manifest(manifest)
    missing = sorted({(e.architecture, p.kind) for e in manifest.experts.values() for p in profile.processors
                      if profile.cost(e.architecture, p.kind) is None})
    if missing:
        raise InvalidInputError(f"profile {profile.name} has no costs for (architecture, processor): {missing[:5]}")

    def footprint(expert: str) -> int:
        cost = profile.cost(manifest.experts[expert].architecture, profile.processors[0].kind)
        assert cost is not None
        return cost.footprint_bytes or manifest.experts[expert].total_bytes

    total_footprint = sum(footprint(n) for n in manifest.experts)
    budgets = {p.id: (parse_budget(config.budget, total_bytes=total_footprint) if config.budget is not None
                      else p.budget_bytes) for p in profile.processors}
    executors = build_executors(((p.id, p.kind, p.num_executors) for p in profile.processors),
                                parallel=preset.parallel, num_executors=config.num_executors)
    caches: dict[str, ExpertCache] = {}
    cost = CostModel(architecture_of={n: e.architecture for n, e in manifest.experts.items()},
                     bytes_of={n: e.total_bytes for n, e in manifest.experts.items()}, profile=profile,
                     resident=lambda expert, proc: caches[proc].contains(expert),
                     resident_set=lambda proc: caches[proc].members(),
                     max_batch_cap=None if preset.batching else 1)
    for processor in profile.processors:
        too_big = [n for n in manifest.experts if footprint(n) > budgets[processor.id]]
        if too_big:
            raise InvalidInputError(f"expert {too_big[0]!r} needs {footprint(too_big[0])} bytes but processor "
                                    f"{processor.id} has a budget of {budgets[processor.id]} bytes")
        caches[processor.id] = ExpertCache(
            budget_bytes=budgets[processor.id], loader=lambda e: (None, footprint(e)), unloader=lambda e, h: None,
            size_of=footprint, on_evict=None if timeline is None else (
                lambda expert: timeline.instant("evict", expert, -1, now)),
            policy=create_eviction_policy(
                preset.eviction,
                usage_probability={n: e.usage_probability for n, e in manifest.experts.items()},
                parents=graph.parents, future_uses=[]))
    scheduler = create_scheduler(preset.scheduler, executors, cost,
                                 free_bytes=lambda proc: caches[proc].free_bytes, expert_bytes=footprint,
                                 max_delay_ms=config.max_delay_ms)
    host = _HostTier(profile.host_budget_bytes) if profile.memory == "numa" and profile.host_budget_bytes else None
    kinds = {p.id: p.kind for p in profile.processors}

    def load_ms(expert: str, processor_id: str) -> float:
        arch_cost = profile.cost(manifest.experts[expert].architecture, kinds[processor_id])
        assert arch_cost is not None
        if host is not None and host.touch(expert, manifest.experts[expert].total_bytes) \
                and arch_cost.host_load_ms is not None:
            return arch_cost.host_load_ms
        return arch_cost.load_ms

    if preset.preload:
        ranked = sorted(manifest.experts, key=lambda n: -manifest.experts[n].usage_probability)
        for cache in caches.values():
            for expert in cache.preload(ranked):
                if host is not None:
                    host.touch(expert, manifest.experts[expert].total_bytes)

    baseline = {"misses": sum(c.stats.num_misses for c in caches.values()),
                "hits": sum(c.stats.num_hits for c in caches.values()),
                "evictions": sum(c.stats.num_evictions for c in caches.values()),
                "bytes": sum(c.stats.bytes_loaded for c in caches.values())}
    rng = np.random.default_rng(seed)
    num_classes = {n: static_num_classes(e) for n, e in manifest.experts.items()}
    # Routing is drawn up front, per request, so runs with the same seed make
    # the same routing decisions whatever the policy.
    plans: dict[str, dict[str, list[str]]] = {}  # request -> expert -> experts it goes on to
    for request in workload.requests:
        try:
            first = entry_expert(manifest.entry, request.metadata)
        except ValueError:
            continue
        plan: dict[str, list[str]] = {}
        frontier = [first]
        while frontier:
            expert = frontier.pop(0)
            plan[expert] = sample_next(manifest.experts[expert].route, num_classes[expert], rng)
            frontier.extend(plan[expert])
        plans[request.id] = plan
    uses: list[str] = []  # experts in the order batches acquired them
    for cache in caches.values():
        set_future = getattr(cache.policy, "set_future", None)
        if set_future is not None:
            set_future(future_uses or [])
    seq = itertools.count()
    events: list[tuple[float, int, str, object]] = []  # (time, seq, kind, data)
    for request in workload.requests:
        heapq.heappush(events, (request.arrival_ms, next(seq), "arrive", request))
    busy: dict[int, Batch | None] = {e.index: None for e in executors}
    pending: dict[int, Batch] = {}  # executor -> popped batch waiting for room
    ready_at: dict[tuple[str, str], float] = {}  # (processor, expert) -> when a prefetch completes
    prefetch_free_at = 0.0
    submitted: dict[str, float] = {}
    outstanding: dict[str, int] = {}
    latencies: list[float] = []
    failed = 0
    stats = {"prefetches": 0}
    now = 0.0

    def start(executor: ExecutorInfo, batch: Batch) -> bool:
        nonlocal prefetch_free_at
        cache = caches[executor.processor_id]
        was_resident = cache.contains(batch.expert)
        got = cache.acquire(batch.expert, wait=False)
        if got is None:
            return False
        uses.append(batch.expert)
        run_ms = cost.exec_ms(batch.expert, executor.kind, len(batch.tasks))
        if not was_resident:
            wait_ms = load_ms(batch.expert, executor.processor_id)
        else:
            wait_ms = max(0.0, ready_at.get((executor.processor_id, batch.expert), 0.0) - now)
        duration = wait_ms + run_ms
        if timeline is not None:
            if wait_ms > 0:
                timeline.span("load", batch.expert, executor.index, now, wait_ms)
            timeline.span(f"batch[{len(batch.tasks)}]", batch.expert, executor.index, now + wait_ms, run_ms)
        busy[executor.index] = batch
        heapq.heappush(events, (now + duration, next(seq), "finish", executor))
        if prefetch_enabled(preset, executor.kind):
            protect = frozenset(scheduler.queued_experts()) | {b.expert for b in busy.values() if b}
            for loaded in maybe_prefetch(cache, likely_successors(manifest.experts[batch.expert]), protect=protect):
                prefetch_free_at = max(prefetch_free_at, now) + load_ms(loaded, executor.processor_id)
                ready_at[(executor.processor_id, loaded)] = prefetch_free_at
                stats["prefetches"] += 1
        return True

    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "arrive":
            request = data
            try:
                first = entry_expert(manifest.entry, request.metadata)  # type: ignore[attr-defined]
            except ValueError:
                failed += 1
                continue
            rid = request.id  # type: ignore[attr-defined]
            submitted[rid] = now
            outstanding[rid] = 1
            scheduler.add(Task(rid, first, now, next(seq)), now)
        else:
            executor = data
            batch = busy[executor.index]  # type: ignore[union-attr]
            assert batch is not None
            busy[executor.index] = None  # type: ignore[union-attr]
            caches[executor.processor_id].release(batch.expert)  # type: ignore[union-attr]
            scheduler.batch_done(executor.index, now)  # type: ignore[union-attr]
            for task in batch.tasks:
                targets = plans[task.request_id][task.expert]
                outstanding[task.request_id] += len(targets) - 1
                for target in targets:
                    scheduler.add(Task(task.request_id, target, now, next(seq)), now)
                if outstanding[task.request_id] == 0:
                    latencies.append(now - submitted.pop(task.request_id))
                    del outstanding[task.request_id]
        for executor in executors:
            if busy[executor.index] is not None:
                continue
            batch = pending.pop(executor.index, None) or scheduler.pop_batch(executor.index, now)
            if batch is not None and not start(executor, batch):
                pending[executor.index] = batch  # no room until a running batch releases its pin
    makespan_s = now / 1e3
    completed = len(latencies)
    misses = sum(c.stats.num_misses for c in caches.values()) - baseline["misses"]
    return Report(
        policy=config.policy, package=manifest.name, num_requests=len(workload), num_completed=completed,
        num_failed=len(workload) - completed, wall_s=makespan_s,
        throughput_rps=completed / makespan_s if makespan_s > 0 else 0.0, latency_ms=latency_summary(latencies), latency_cdf_ms=latency_cdf(latencies),
        num_switches=misses - stats["prefetches"],
        num_hits=sum(c.stats.num_hits for c in caches.values()) - baseline["hits"],
        num_prefetches=stats["prefetches"],
        num_evictions=sum(c.stats.num_evictions for c in caches.values()) - baseline["evictions"],
        bytes_loaded=sum(c.stats.bytes_loaded for c in caches.values()) - baseline["bytes"],
        peak_bytes={p: c.stats.peak_bytes for p, c in caches.items()}, budget_bytes=dict(budgets),
        executors={p.id: sum(1 for e in executors if e.processor_id == p.id) for p in profile.processors},
        startup_s=0.0, simulated=True, profile=profile.name,
        errors={"no entry expert for metadata": failed} if failed else {},
    ), uses

