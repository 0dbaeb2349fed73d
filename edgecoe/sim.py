"""Simulated mode: the engine (real schedulers and caches) on a virtual clock.

The simulator builds the same engine as the runtime, with a
:class:`~edgecoe.loaders.simulated.CostModelLoader` in place of ONNX Runtime
sessions, and keeps only what a virtual clock needs: an event queue of
arrivals and batch completions. A batch of n on a processor takes K*n + B ms;
a switch takes what the loader says the load costs (the profiled latency,
from host memory when a NUMA host tier holds the bytes), queued behind other
loads on the links it crosses (storage; host to device on NUMA): one load
channel per link, shared by demand loads and prefetches. Routing samples each
expert's declared route fractions. This lets policies be compared at sizes
this machine cannot hold (350 experts, 60 GB).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import replace

import numpy as np

from edgecoe.config import RuntimeConfig
from edgecoe.engine import Engine, build_engine
from edgecoe.errors import RoutingError
from edgecoe.loaders.simulated import CostModelLoader
from edgecoe.package.manifest import (
    ArgmaxRoute,
    FanoutRoute,
    Manifest,
    Route,
    ThresholdRoute,
)
from edgecoe.package.routing import entry_expert, static_num_classes
from edgecoe.profile import DeviceProfile
from edgecoe.results import Report
from edgecoe.sched import ExecutorInfo, Task
from edgecoe.sched.prefetch import likely_successors
from edgecoe.sched.types import Batch
from edgecoe.timeline import Timeline
from edgecoe.workload import TraceRequest, Workload


def sample_next(route: Route, num_classes: int | None, rng: np.random.Generator) -> list[str]:
    """Draw where one item goes from a route's declared fractions."""
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
    config = config or RuntimeConfig()
    config.validate()
    future: list[str] = []
    if config.resolved_preset().eviction == "belady":
        future = _Simulation(manifest, profile, replace(config, eviction="lru"), seed, None).run(workload)[1]
    return _Simulation(manifest, profile, config, seed, timeline, future=future).run(workload)[0]


_Event = tuple[float, int, str, TraceRequest | ExecutorInfo]  # (time, seq, "arrive"|"finish", subject)


class _Simulation:
    """One run: the engine, a virtual clock and its events."""

    def __init__(self, manifest: Manifest, profile: DeviceProfile, config: RuntimeConfig, seed: int,
                 timeline: Timeline | None, *, future: list[str] | None = None) -> None:
        self.manifest = manifest
        self.now = 0.0
        self.timeline = timeline
        self.loader = CostModelLoader(manifest, profile)
        self.engine: Engine[None] = build_engine(manifest, profile, config, self.loader,
                                                 clock=lambda: self.now, timeline=timeline)
        self.engine.set_future(future or [])
        self.rng = np.random.default_rng(seed)
        self.seq = itertools.count()
        self.events: list[_Event] = []
        self.busy: dict[int, Batch | None] = {e.index: None for e in self.engine.executors}
        self.pending: dict[int, Batch] = {}  # executor -> popped batch waiting for room
        self.ready_at: dict[tuple[str, str], float] = {}  # (processor, expert) -> when a prefetch completes
        self.link_free_at: dict[str, float] = {}  # shared link -> when its queued transfers end
        self.link_busy_ms: dict[str, float] = {}  # shared link -> time it carried loads during the run
        self.uses: list[str] = []  # experts in the order batches acquired them

    def _plans(self, workload: Workload) -> dict[str, dict[str, list[str]]]:
        """Routing drawn up front, per request, so runs with the same seed make
        the same routing decisions whatever the policy."""
        num_classes = {n: static_num_classes(e) for n, e in self.manifest.experts.items()}
        plans: dict[str, dict[str, list[str]]] = {}  # request -> expert -> experts it goes on to
        for request in workload.requests:
            try:
                first = entry_expert(self.manifest.entry, request.metadata)
            except RoutingError:
                continue
            plan: dict[str, list[str]] = {}
            frontier = [first]
            while frontier:
                expert = frontier.pop(0)
                plan[expert] = sample_next(self.manifest.experts[expert].route, num_classes[expert], self.rng)
                frontier.extend(plan[expert])
            plans[request.id] = plan
        return plans

    def run(self, workload: Workload) -> tuple[Report, list[str]]:
        engine = self.engine
        since = engine.totals()
        plans = self._plans(workload)
        for request in workload.requests:
            heapq.heappush(self.events, (request.arrival_ms, next(self.seq), "arrive", request))
        submitted: dict[str, float] = {}
        outstanding: dict[str, int] = {}
        latencies: list[float] = []
        failed = 0
        while self.events:
            self.now, _, _kind, subject = heapq.heappop(self.events)
            if isinstance(subject, TraceRequest):
                try:
                    first = entry_expert(self.manifest.entry, subject.metadata)
                except RoutingError:
                    failed += 1
                    continue
                submitted[subject.id] = self.now
                outstanding[subject.id] = 1
                engine.scheduler.add(Task(subject.id, first, self.now, next(self.seq)), self.now)
            else:
                batch = self.busy[subject.index]
                assert batch is not None
                self.busy[subject.index] = None
                engine.caches[subject.processor_id].release(batch.expert)
                engine.scheduler.batch_done(subject.index, self.now)
                for task in batch.tasks:
                    targets = plans[task.request_id][task.expert]
                    outstanding[task.request_id] += len(targets) - 1
                    for target in targets:
                        engine.scheduler.add(Task(task.request_id, target, self.now, next(self.seq)), self.now)
                    if outstanding[task.request_id] == 0:
                        latencies.append(self.now - submitted.pop(task.request_id))
                        del outstanding[task.request_id]
            for executor in engine.executors:
                if self.busy[executor.index] is not None:
                    continue
                next_batch = self.pending.pop(executor.index, None) or engine.scheduler.pop_batch(executor.index,
                                                                                                  self.now)
                if next_batch is not None and not self._start(executor, next_batch):
                    self.pending[executor.index] = next_batch  # no room until a running batch releases its pin
        report = engine.report(num_requests=len(workload), latencies_ms=latencies, wall_s=self.now / 1e3,
                               since=since, simulated=True,
                               errors={"no entry expert for metadata": failed} if failed else {})
        report.link_busy_s = {link: round(ms / 1e3, 3) for link, ms in sorted(self.link_busy_ms.items())}
        return report, self.uses

    def _start(self, executor: ExecutorInfo, batch: Batch) -> bool:
        """Start ``batch`` on ``executor`` if its expert can be made resident now."""
        engine = self.engine
        cache = engine.caches[executor.processor_id]
        got = cache.acquire(batch.expert, wait=False)
        if got is None:
            return False
        self.uses.append(batch.expert)
        run_ms = engine.cost.exec_ms(batch.expert, executor.kind, len(batch.tasks))
        if not got.hit:
            wait_ms = self._transfer(executor.processor_id, batch.expert) - self.now
        else:
            wait_ms = max(0.0, self.ready_at.get((executor.processor_id, batch.expert), 0.0) - self.now)
        if self.timeline is not None:
            if wait_ms > 0:
                self.timeline.span("load", batch.expert, executor.index, self.now, wait_ms)
            self.timeline.span(f"batch[{len(batch.tasks)}]", batch.expert, executor.index, self.now + wait_ms,
                               run_ms)
        self.busy[executor.index] = batch
        heapq.heappush(self.events, (self.now + (wait_ms + run_ms), next(self.seq), "finish", executor))
        if engine.prefetches_on(executor.kind):
            protect = frozenset(engine.scheduler.queued_experts()) | {b.expert for b in self.busy.values() if b}
            successors = likely_successors(self.manifest.experts[batch.expert])
            for loaded in engine.prefetch(executor.processor_id, successors, protect=protect):
                # NOTE: the stages come from the loader's ledger: a later prefetch may already
                # have evicted this one.
                self.ready_at[(executor.processor_id, loaded)] = self._transfer(executor.processor_id, loaded)
        return True

    def _transfer(self, processor_id: str, expert: str) -> float:
        """Queue the latest load of ``expert`` on the links it crosses; returns when it completes."""
        at = self.now
        for link, ms in self.loader.last_stages[(processor_id, expert)]:
            at = max(at, self.link_free_at.get(link, 0.0)) + ms
            self.link_free_at[link] = at
            self.link_busy_ms[link] = self.link_busy_ms.get(link, 0.0) + ms
        return at
