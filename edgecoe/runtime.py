"""The runtime: executors (threads), per-processor expert caches, scheduling, routing.

Data flows one way: ``submit`` validates a request and queues a task for its
preliminary expert; an executor takes the batch its scheduling policy hands
it, makes the expert resident through its processor's :class:`ExpertCache`,
runs the batch, and routes each item on (a new task re-enters scheduling) or
completes its request's future. ``InferenceSession.run`` releases the GIL, so
executor threads run in parallel.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgecoe.cache import CacheLoadError, ExpertCache, create_eviction_policy
from edgecoe.timeline import Timeline
from edgecoe.cache.host import HostStore
from edgecoe.config import RuntimeConfig, parse_budget
from edgecoe.errors import InvalidInputError
from edgecoe.health import ExpertHealth
from edgecoe.memory import available_memory_bytes, measure_footprint, release_freed_memory, trim_heap
from edgecoe.optcache import OptimizedModelCache, default_cache_dir
from edgecoe.package import Package, load_package
from edgecoe.package.routing import RoutingError, edge_fractions, entry_expert, next_experts
from edgecoe.profiler.schema import DeviceProfile, ProcessorProfile
from edgecoe.providers import ProviderChoice, choose_providers, create_session
from edgecoe.results import CloseOutcome, Report, RequestCancelled, RequestError, Result, latency_cdf, latency_summary
from edgecoe.sched import CostModel, ExecutorInfo, Task, create_scheduler
from edgecoe.sched.prefetch import likely_successors, maybe_prefetch
from edgecoe.sched.presets import prefetch_enabled
from edgecoe.sched.types import Batch, build_executors
from edgecoe.workload import Workload, materialize

logger = logging.getLogger(__name__)


def default_profile() -> DeviceProfile:
    """A profile for this machine when none is given: one CPU processor, UMA.

    Budget: 40 % of available memory; executors: 2 (one loads while the other runs).
    """
    available = available_memory_bytes()
    return DeviceProfile(
        name="default-cpu", memory="uma",
        processors=[ProcessorProfile(id="cpu", budget_bytes=max(1, int(available * 0.4)), num_executors=2)],
        sources={"*": "defaults: no profile given"},
    )


@dataclass
class _Request:
    """A request in flight."""

    id: str
    inputs: dict[str, np.ndarray]
    future: Future[Result]
    submitted_ms: float
    pending: int = 1  # tasks not finished yet (fan-out adds some)
    path: list[str] = field(default_factory=list)
    leaves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    last_outputs: dict[str, np.ndarray] = field(default_factory=dict)
    failed: bool = False


@dataclass(slots=True)
class _Payload:
    request: _Request
    inputs: dict[str, np.ndarray]


class _NeededView:
    """Live ``in`` test over the experts queued or running tasks need.

    Handed to the cache as the prefetch's protect set: the cache asks it at
    eviction time, so a task queued after the prefetch was decided is covered
    too. Reads a dict the runtime updates under its lock; a single ``get``
    needs no lock of its own.
    """

    __slots__ = ("_counts",)

    def __init__(self, counts: dict[str, int]) -> None:
        self._counts = counts

    def __contains__(self, expert: object) -> bool:
        return self._counts.get(expert, 0) > 0  # type: ignore[call-overload]


class Runtime:
    """Serves one package. Use :func:`edgecoe.load` to make one; close it (or use ``with``).

    Thread-safe: ``submit`` may be called from any thread.
    """

    def __init__(self, package: Package, *, config: RuntimeConfig | None = None,
                 profile: DeviceProfile | None = None, timeline: Timeline | None = None) -> None:
        self.config = config or RuntimeConfig()
        self.config.validate()
        self.timeline = timeline  # loads, evictions and batches per executor, when recording
        self.package = package
        self.preset = self.config.resolved_preset()
        self.profile = profile or default_profile()
        self._start = time.perf_counter()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._closing = False
        self._seq = itertools.count()
        self._requests: dict[str, _Request] = {}
        self._latencies_ms: list[float] = []
        self._num_completed = 0
        self._num_failed = 0
        self._errors: dict[str, int] = {}
        self._num_prefetches = 0
        self._needed: dict[str, int] = {}  # expert -> tasks queued or running for it
        self._needed_view = _NeededView(self._needed)
        self.health = ExpertHealth(threshold=self.config.quarantine_after, quarantine_s=self.config.quarantine_s)
        self._trimmed_at_evictions = 0
        self._last_trim = 0.0

        self._optcache = (OptimizedModelCache(Path(self.config.cache_dir) if self.config.cache_dir
                                              else default_cache_dir()) if self.config.optimized_cache else None)
        manifest = package.manifest
        self._input_specs = {s.name: s for s in manifest.inputs}
        self._choices: dict[str, ProviderChoice] = {
            p.id: choose_providers(p, allow_cpu_fallback=self.config.allow_cpu_fallback)
            for p in self.profile.processors}
        self.executors = build_executors(((p.id, p.kind, p.num_executors) for p in self.profile.processors),
                                         parallel=self.preset.parallel, num_executors=self.config.num_executors)
        self._threads_per_executor = {
            p.id: (p.intra_op_threads or self.config.threads_per_executor(
                sum(1 for e in self.executors if e.processor_id == p.id)))
            for p in self.profile.processors}

        bytes_of = {n: e.total_bytes for n, e in manifest.experts.items()}
        self.cost = CostModel(
            architecture_of={n: e.architecture for n, e in manifest.experts.items()}, bytes_of=bytes_of,
            profile=self.profile, resident=lambda expert, proc: self.caches[proc].contains(expert),
            resident_set=lambda proc: self.caches[proc].members(),
            max_batch_cap=None if self.preset.batching else 1)
        # NUMA: a host-memory tier of model bytes in front of the device sessions.
        self.host = (HostStore(self.profile.host_budget_bytes)
                     if self.profile.memory == "numa" and self.profile.host_budget_bytes else None)
        self._footprints = self._measure_footprints()
        self.profile = self._apply_budget(self.profile)
        self.caches: dict[str, ExpertCache] = {}
        for processor in self.profile.processors:
            self._check_fits(processor)
            self.caches[processor.id] = ExpertCache(
                budget_bytes=processor.budget_bytes, loader=self._loader(processor.id),
                unloader=self._unload, size_of=self.footprint, policy=self._eviction_policy(),
                on_evict=None if timeline is None else
                (lambda expert: timeline.instant("evict", expert, -1, self.now_ms())))
        self.scheduler = create_scheduler(
            self.preset.scheduler, self.executors, self.cost,
            free_bytes=lambda proc: self.caches[proc].free_bytes, expert_bytes=self.footprint,
            max_delay_ms=self.config.max_delay_ms)
        if self.preset.preload:
            self._preload()
        self.startup_s = time.perf_counter() - self._start
        self._threads = [threading.Thread(target=self._executor_loop, args=(e,), daemon=True,
                                          name=f"edgecoe-executor-{e.index}") for e in self.executors]
        self._prefetch_hints: list[tuple[str, list[str]]] = []
        self._prefetch_thread: threading.Thread | None = None
        self._prefetch_on = {p.id: prefetch_enabled(self.preset, p.kind) for p in self.profile.processors}
        if any(self._prefetch_on.values()):
            self._prefetch_thread = threading.Thread(target=self._prefetch_loop, daemon=True, name="edgecoe-prefetch")
            self._prefetch_thread.start()
        for thread in self._threads:
            thread.start()

    # -- setup -------------------------------------------------------------------
    @property
    def total_footprint_bytes(self) -> int:
        """Resident bytes of every expert together: what a percentage budget is a share of."""
        return sum(self.footprint(n) for n in self.package.experts)

    def _apply_budget(self, profile: DeviceProfile) -> DeviceProfile:
        if self.config.budget is None:
            return profile
        budget = parse_budget(self.config.budget, total_bytes=self.total_footprint_bytes)
        for processor in profile.processors:
            profile = profile.with_budget(processor.id, budget)
        return profile

    def _eviction_policy(self):  # type: ignore[no-untyped-def]
        manifest = self.package.manifest
        return create_eviction_policy(
            self.preset.eviction,
            usage_probability={n: e.usage_probability for n, e in manifest.experts.items()},
            parents=self.package.graph.parents, future_uses=[])

    def _model_path(self, expert: str) -> tuple[Path, bool]:
        record = self.package.experts[expert]
        optimized = self.config.use_optimized and record.optimized is not None
        return self.package.model_path(expert, optimized=optimized), optimized

    def _cached_create(self, expert: str, processor_id: str):  # type: ignore[no-untyped-def]
        """(model, sha256, providers, create) for loading ``expert`` through the
        optimized-model cache, or None where the cache does not apply.

        NOTE: CPU only: a level-"all" graph for CUDA or CoreML has not been run
        on such a machine here; those load the package's portable copies.
        """
        record = self.package.experts[expert]
        providers = self._choices[processor_id].providers
        names = [p if isinstance(p, str) else p[0] for p in providers]
        if self._optcache is None or names != ["CPUExecutionProvider"] or record.external_data:
            return None
        path, optimized = self._model_path(expert)
        threads = self._threads_per_executor[processor_id]
        sha = (record.optimized if optimized and record.optimized else record.model).sha256

        def create(source: Path | bytes, level: str, save: Path | None):  # type: ignore[no-untyped-def]
            return create_session(source, providers=providers, optimization=level,  # type: ignore[arg-type]
                                  save_optimized_to=save, intra_op_threads=threads)

        return path, sha, names, create

    def warm_optimized_cache(self) -> int:
        """Build every missing optimized-model cache entry now (benchmarks: every
        policy then starts from the same, warm, cache). Returns how many were built."""
        built = 0
        for expert in self.package.experts:
            for processor_id in self.caches:
                args = self._cached_create(expert, processor_id)
                if args is not None:
                    built += self._optcache.ensure(*args)  # type: ignore[union-attr]
        return built

    def _create(self, expert: str, processor_id: str):  # type: ignore[no-untyped-def]
        cached = self._cached_create(expert, processor_id)
        if cached is not None:
            cache = self._optcache
            assert cache is not None
            model, sha, names, create = cached
            if self.host is None:
                return cache.session(model, sha, names, create)
            # NUMA: the host tier holds the optimized entry's bytes (disk -> host -> device).
            cache.ensure(model, sha, names, create)
            entry = cache.entry_path(model, sha, names)
            if entry.exists():
                return create(self.host.get(expert, entry), "none", None)  # type: ignore[arg-type]
        path, optimized = self._model_path(expert)
        providers = self._choices[processor_id].providers
        threads = self._threads_per_executor[processor_id]
        source: Path | bytes = path
        if self.host is not None and not self.package.experts[expert].external_data:
            source = self.host.get(expert, path)  # NUMA: disk -> host memory -> device
        return create_session(source, providers=providers,  # type: ignore[arg-type]
                              optimization="none" if optimized else "all", intra_op_threads=threads)

    def _measure_footprints(self) -> dict[str, int]:
        """Resident memory per architecture, measured by loading one expert of each.

        NOTE: measured here, before executors start, because process-wide
        memory deltas are only meaningful when nothing else allocates.
        Falls back to file bytes when the measurement is below them (shared
        pages) or fails.
        """
        footprints: dict[str, int] = {}
        first_of: dict[str, str] = {}
        for name, record in self.package.experts.items():
            first_of.setdefault(record.architecture, name)
        processor = self.profile.processors[0].id
        for arch, expert in first_of.items():
            cost = self.profile.cost(arch, self.profile.processors[0].kind)
            if cost is not None and cost.footprint_bytes:
                footprints[arch] = cost.footprint_bytes
                continue
            footprints[arch] = self._measure_one(expert, processor)
        return footprints

    def _measure_one(self, expert: str, processor: str) -> int:
        """PSS growth per live session of one expert (never below its file size)."""
        measured = measure_footprint(lambda: self._create(expert, processor))
        file_bytes = self.package.experts[expert].total_bytes
        return file_bytes if measured is None else max(measured, file_bytes)

    def footprint(self, expert: str) -> int:
        """Bytes an expert occupies once resident (measured per architecture)."""
        return self._footprints[self.package.experts[expert].architecture]

    def _check_fits(self, processor: ProcessorProfile) -> None:
        too_big = [(n, self.footprint(n)) for n in self.package.experts if self.footprint(n) > processor.budget_bytes]
        if too_big:
            name, size = max(too_big, key=lambda t: t[1])
            raise InvalidInputError(
                f"expert {name!r} needs {size} bytes resident but processor {processor.id} has a budget of "
                f"{processor.budget_bytes} bytes ({len(too_big)} expert(s) can never fit); raise the budget")

    def _loader(self, processor_id: str) -> Callable[[str], tuple[object, int]]:
        kind = processor_id.split(":")[0]

        def load(expert: str) -> tuple[object, int]:
            started = time.perf_counter()
            session = self._create(expert, processor_id)
            self.cost.observe_load(expert, kind, (time.perf_counter() - started) * 1e3)
            return session, self.footprint(expert)

        return load

    @staticmethod
    def _unload(expert: str, handle: object) -> None:
        del handle  # dropping the last reference frees the session

    def _preload(self) -> None:
        """Fill each processor's budget with the most likely experts (CoServe start-up)."""
        ranked = sorted(self.package.experts, key=lambda n: -self.package.experts[n].usage_probability)
        for processor_id, cache in self.caches.items():
            failures = cache.stats.num_load_failures
            cache.preload(ranked)
            if cache.stats.num_load_failures > failures:
                logger.warning("preload on %s: %d expert(s) failed to load", processor_id,
                               cache.stats.num_load_failures - failures)

    # -- public API ----------------------------------------------------------------
    def now_ms(self) -> float:
        return (time.perf_counter() - self._start) * 1e3

    def submit(self, inputs: Mapping[str, np.ndarray], metadata: Mapping[str, object] | None = None, *,
               request_id: str | None = None) -> Future[Result]:
        """Queue one request (one item per input, no batch axis).

        Returns:
            A future resolving to a :class:`Result`, or raising :class:`RequestError`.

        Raises:
            InvalidInputError: inputs or metadata do not fit the package (nothing is queued).
            RuntimeError: the runtime is closed.
        """
        arrays = self._validate_inputs(inputs)
        self._validate_metadata(metadata or {})
        try:
            first = entry_expert(self.package.manifest.entry, metadata or {})
        except RoutingError as exc:
            raise InvalidInputError(str(exc)) from None
        future: Future[Result] = Future()
        with self._work:
            if self._closing:
                raise RuntimeError("runtime is closed")
            seq = next(self._seq)
            rid = request_id or f"req-{seq}"
            if rid in self._requests:
                raise InvalidInputError(f"request id {rid!r} is already in flight")
            now = self.now_ms()
            request = _Request(rid, arrays, future, now)
            self._requests[rid] = request
            self._enqueue_locked(Task(rid, first, now, seq, _Payload(request, arrays)), now)
            self._work.notify_all()
        return future

    def _validate_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = sorted(set(self._input_specs) - set(inputs))
        extra = sorted(set(inputs) - set(self._input_specs))
        if missing or extra:
            raise InvalidInputError(f"request inputs {sorted(inputs)}: missing {missing}, unexpected {extra}")
        out = {}
        for name, spec in self._input_specs.items():
            array = np.asarray(inputs[name])
            if array.dtype != np.dtype(spec.dtype):
                raise InvalidInputError(f"input {name!r} has dtype {array.dtype}, expected {spec.dtype}")
            if len(array.shape) != len(spec.shape) or any(
                    isinstance(d, int) and d != s for d, s in zip(spec.shape, array.shape)):
                raise InvalidInputError(f"input {name!r} has shape {list(array.shape)}, expected {spec.shape_str()} "
                                        "(one item, no batch axis)")
            if not spec.allow_non_finite and array.dtype.kind in "fc" and not np.isfinite(array).all():
                bad = int(array.size - np.count_nonzero(np.isfinite(array)))
                raise InvalidInputError(f"input {name!r} has {bad} NaN/inf value(s); the package expects finite "
                                        "values (its manifest input sets allow_non_finite: false)")
            out[name] = array
        return out

    def _validate_metadata(self, metadata: Mapping[str, object]) -> None:
        """Keys the package declares (or its entry key), scalar values, declared values only."""
        manifest = self.package.manifest
        known = set(manifest.metadata) | {manifest.entry.key}
        unknown = sorted(set(metadata) - known)
        if unknown:
            raise InvalidInputError(f"request metadata has unknown key(s) {unknown}; the package knows "
                                    f"{sorted(known)}")
        for key, value in metadata.items():
            if not isinstance(value, (str, int, float, bool)) or (isinstance(value, float) and not np.isfinite(value)):
                raise InvalidInputError(f"request metadata {key}={value!r}: expected a string, integer, "
                                        "finite number or boolean")
            declared = manifest.metadata.get(key)
            if declared is not None and declared.values is not None and str(value) not in declared.values:
                shown = ", ".join(declared.values[:8]) + (", ..." if len(declared.values) > 8 else "")
                raise InvalidInputError(f"request metadata {key}={value!r} is not one of the package's "
                                        f"values ({shown})")

    def run(self, workload: Workload, *, progress: Callable[[int, int], None] | None = None) -> Report:
        """Submit a workload at its arrival times and wait for every request.

        Args:
            progress: called with (finished, total) as requests finish.
        """
        self._give_future_to_policy(workload)
        total = len(workload)
        done = 0
        done_lock = threading.Lock()
        start_ms = self.now_ms()
        stats_before = self._cache_totals()
        futures: list[Future[Result]] = []

        def finished(_: Future[Result]) -> None:
            nonlocal done
            with done_lock:
                done += 1
                count = done
            if progress:
                progress(count, total)

        for request in workload.requests:
            delay_s = (start_ms + request.arrival_ms - self.now_ms()) / 1e3
            if delay_s > 0:
                time.sleep(delay_s)
            inputs = materialize(request, self.package.manifest.inputs, workload.base_dir)
            try:
                future = self.submit(inputs, request.metadata, request_id=request.id)
            except InvalidInputError as exc:
                future = Future()
                future.set_exception(RequestError(request.id, None, str(exc)))
                with self._lock:
                    self._num_failed += 1
                    self._errors[str(exc)[:80]] = self._errors.get(str(exc)[:80], 0) + 1
            future.add_done_callback(finished)
            futures.append(future)
        for future in futures:
            future.exception()  # waits; failures are counted where they happen
        wall_s = (self.now_ms() - start_ms) / 1e3
        return self._report(total, futures, wall_s, stats_before)

    def _give_future_to_policy(self, workload: Workload) -> None:
        """Belady eviction needs the future: each request's first expert and, where its
        route more likely goes on than not, the successor (real routing is unknown ahead)."""
        future: list[str] = []
        for request in workload.requests:
            try:
                first = entry_expert(self.package.manifest.entry, request.metadata)
            except RoutingError:
                continue
            future.append(first)
            shares = edge_fractions(self.package.experts[first], None)
            future.extend(name for name, share in shares.items() if share >= 0.5)
        for cache in self.caches.values():
            set_future = getattr(cache.policy, "set_future", None)
            if set_future is not None:
                set_future(future)

    def close(self, *, drain: bool = True, timeout_s: float | None = None) -> CloseOutcome:
        """Stop the executors; every request in flight ends with a result or an error.

        Args:
            drain: finish queued requests first (True) or fail them at once
                with :class:`RequestCancelled` (False).
            timeout_s: with ``drain``, how long to wait; requests still in
                flight then are cancelled (their futures fail with
                :class:`RequestCancelled`), so no caller waits forever.

        Returns:
            What became of each request in flight when ``close`` was called.
        """
        with self._work:
            in_flight = {rid: r.future for rid, r in self._requests.items()}
            if not drain:
                self._cancel_queued_locked("runtime closed without draining")
            self._closing = True
            self._work.notify_all()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in [*self._threads, *([self._prefetch_thread] if self._prefetch_thread else [])]:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._work:
            if self._requests:  # timed out: queued ones never run, running ones are abandoned
                why = f"close timed out after {timeout_s:g} s"
                self._cancel_queued_locked(why)
                for request in list(self._requests.values()):
                    self._fail_request_locked(request, None, f"cancelled: {why}", RequestCancelled)
        for cache in self.caches.values():
            cache.clear()
        release_freed_memory()
        return CloseOutcome.of(in_flight)

    def _cancel_queued_locked(self, why: str) -> None:
        while len(self.scheduler):
            for executor in range(len(self.executors)):
                batch = self.scheduler.pop_batch(executor, self.now_ms())
                if batch is not None:
                    for task in batch.tasks:
                        self._needed_done_locked(task.expert)
                        self._fail_request_locked(task.payload.request, task.expert,  # type: ignore[union-attr]
                                                  f"cancelled: {why}", RequestCancelled)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- executors -------------------------------------------------------------------
    def _executor_loop(self, info: ExecutorInfo) -> None:
        while True:
            with self._work:
                while True:
                    batch = self.scheduler.pop_batch(info.index, self.now_ms())
                    if batch is not None:
                        break
                    if self._closing and not self._requests_pending_locked():
                        return
                    self._work.wait(timeout=0.5)
            try:
                self._run_batch(info, batch)
            finally:
                with self._work:
                    for task in batch.tasks:
                        self._needed_done_locked(task.expert)
                    self.scheduler.batch_done(info.index, self.now_ms())
                    self._work.notify_all()

    def _requests_pending_locked(self) -> bool:
        return bool(self._requests)

    def _run_batch(self, info: ExecutorInfo, batch: Batch) -> None:
        cache = self.caches[info.processor_id]
        expert = batch.expert
        # Tasks of requests that already failed elsewhere (a fan-out sibling) are not worth a run.
        live = [t for t in batch.tasks if not t.payload.request.failed]  # type: ignore[union-attr]
        if not live:
            return
        batch = replace(batch, tasks=live) if len(live) < len(batch.tasks) else batch
        blocked = self.health.blocked(expert, self.now_ms() / 1e3)
        if blocked is not None:
            self._fail_all(batch.tasks, blocked)
            return
        if self._prefetch_on[info.processor_id]:
            self._hint_prefetch(info.processor_id, expert)
        acquire_start = self.now_ms()
        try:
            acquired = cache.acquire(expert)
        except (CacheLoadError, ValueError) as exc:
            self._expert_failed(expert, str(exc))
            self._fail_all(batch.tasks, str(exc))
            return
        assert acquired is not None
        if self.timeline is not None and not acquired.hit:
            self.timeline.span("load", expert, info.index, acquire_start, self.now_ms() - acquire_start)
        record = self.package.experts[expert]
        try:
            done, failed = self._execute_isolating(acquired.handle, record, batch.tasks, info)
        finally:
            cache.release(expert)
            self._maybe_trim(cache)
        if done:
            self.health.succeeded(expert)
        elif failed:
            self._expert_failed(expert, failed[0][1])
        with self._work:
            for task, cause in failed:
                self._fail_locked(task, cause)
            for task, outputs, index in done:
                self._route_locked(task, record.route, outputs, index)
            self._work.notify_all()

    def _execute_isolating(
        self, session, record, tasks: list[Task], info: ExecutorInfo,  # type: ignore[no-untyped-def]
    ) -> tuple[list[tuple[Task, dict[str, np.ndarray], int]], list[tuple[Task, str]]]:
        """Run a batch; if it fails, run its items one by one so that one bad
        item fails alone and its batch mates still complete.

        Returns:
            (task, batch outputs, row) for each item that ran, (task, cause) for each that failed.
        """
        expert = tasks[0].expert
        try:
            started, run_start = time.perf_counter(), self.now_ms()
            outputs = self._execute(session, record, tasks)
            self.cost.observe_exec(expert, info.kind, len(tasks), (time.perf_counter() - started) * 1e3)
            if self.timeline is not None:
                self.timeline.span(f"batch[{len(tasks)}]", expert, info.index, run_start, self.now_ms() - run_start)
            return [(task, outputs, i) for i, task in enumerate(tasks)], []
        except Exception as exc:  # noqa: BLE001 - one expert's failure must not stop the executor
            if len(tasks) == 1:
                return [], [(tasks[0], f"{type(exc).__name__}: {exc}")]
        done, failed = [], []
        for task in tasks:
            try:
                done.append((task, self._execute(session, record, [task]), 0))
            except Exception as exc:  # noqa: BLE001 - this item's failure is its own
                failed.append((task, f"{type(exc).__name__}: {exc}"))
        return done, failed

    def _expert_failed(self, expert: str, cause: str) -> None:
        if self.health.failed(expert, cause, self.now_ms() / 1e3):
            logger.warning("expert %s quarantined for %g s after %d consecutive failures; last: %s",
                           expert, self.config.quarantine_s, self.config.quarantine_after, cause)

    def _fail_all(self, tasks: list[Task], cause: str) -> None:
        with self._work:
            for task in tasks:
                self._fail_locked(task, cause)
            self._work.notify_all()

    def _maybe_trim(self, cache: ExpertCache) -> None:
        """Give evicted sessions' memory back to the OS (glibc keeps it otherwise, DESIGN §4).

        Rate-limited: at most once per 50 ms, and only after evictions happened.
        """
        evictions = cache.stats.num_evictions
        now = time.perf_counter()
        with self._lock:
            if evictions == self._trimmed_at_evictions or now - self._last_trim < 0.05:
                return
            self._trimmed_at_evictions = evictions
            self._last_trim = now
        trim_heap()

    def _execute(self, session, record, tasks: list[Task]) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
        """Run a batch; items whose input shapes differ run in separate same-shape groups."""
        names = [s.name for s in record.inputs]
        output_names = [s.name for s in record.outputs]
        groups: dict[tuple, list[int]] = {}
        for i, task in enumerate(tasks):
            key = tuple(task.payload.inputs[n].shape for n in names)
            groups.setdefault(key, []).append(i)
        per_item: list[dict[str, np.ndarray]] = [{} for _ in tasks]
        for indices in groups.values():
            feeds = {n: np.stack([tasks[i].payload.inputs[n] for i in indices]) for n in names}
            results = session.run(output_names, feeds)
            for name, array in zip(output_names, results):
                for row, i in enumerate(indices):
                    per_item[i][name] = array[row]
        # Re-stack per output so routing sees [batch, ...] arrays in task order.
        return {name: np.stack([item[name] for item in per_item]) for name in output_names}

    def _route_locked(self, task: Task, route, outputs: dict[str, np.ndarray], index: int) -> None:  # type: ignore[no-untyped-def]
        payload: _Payload = task.payload  # type: ignore[assignment]
        request = payload.request
        if request.failed:
            return
        item = {name: array[index] for name, array in outputs.items()}
        request.path.append(task.expert)
        try:
            targets = next_experts(route, outputs, index)
        except RoutingError as exc:
            self._fail_locked(task, f"routing: {exc}")
            return
        if not targets:
            request.leaves[task.expert] = item
            request.last_outputs = item
            self._finish_task_locked(request)
            return
        request.pending += len(targets) - 1
        now = self.now_ms()
        for target in targets:
            specs = self.package.experts[target].inputs
            inputs = {s.name: request.inputs[s.name] if s.name in request.inputs else item[s.name] for s in specs}
            self._enqueue_locked(Task(request.id, target, now, next(self._seq), _Payload(request, inputs)), now)

    def _enqueue_locked(self, task: Task, now: float) -> None:
        self._needed[task.expert] = self._needed.get(task.expert, 0) + 1
        self.scheduler.add(task, now)

    def _needed_done_locked(self, expert: str) -> None:
        left = self._needed[expert] - 1
        if left:
            self._needed[expert] = left
        else:
            del self._needed[expert]

    def _finish_task_locked(self, request: _Request) -> None:
        request.pending -= 1
        if request.pending > 0:
            return
        latency = self.now_ms() - request.submitted_ms
        self._requests.pop(request.id, None)
        self._num_completed += 1
        self._latencies_ms.append(latency)
        request.future.set_result(Result(request.id, request.last_outputs, list(request.path),
                                         dict(request.leaves), latency))

    def _fail_locked(self, task: Task, cause: str) -> None:
        self._fail_request_locked(task.payload.request, task.expert, cause)  # type: ignore[union-attr]

    def _fail_request_locked(self, request: _Request, expert: str | None, cause: str,
                             error_type: type[RequestError] = RequestError) -> None:
        if request.failed or request.future.done():
            return
        request.failed = True
        self._requests.pop(request.id, None)
        self._num_failed += 1
        key = cause[:80]
        self._errors[key] = self._errors.get(key, 0) + 1
        request.future.set_exception(error_type(request.id, expert, cause))

    # -- prefetch ------------------------------------------------------------------------
    def _hint_prefetch(self, processor_id: str, expert: str) -> None:
        successors = likely_successors(self.package.experts[expert])
        if successors:
            with self._work:
                self._prefetch_hints.append((processor_id, successors))
                self._work.notify_all()

    def _prefetch_loop(self) -> None:
        while True:
            with self._work:
                while not self._prefetch_hints:
                    if self._closing:
                        return
                    self._work.wait(timeout=0.5)
                processor_id, experts = self._prefetch_hints.pop()
                self._prefetch_hints.clear()  # only the newest hint matters
            experts = [e for e in experts if self.health.blocked(e, self.now_ms() / 1e3) is None]
            loaded = maybe_prefetch(self.caches[processor_id], experts, protect=self._needed_view)
            if loaded:
                with self._lock:
                    self._num_prefetches += len(loaded)

    # -- reporting -------------------------------------------------------------------------
    def _cache_totals(self) -> dict[str, int]:
        totals = {"misses": 0, "hits": 0, "evictions": 0, "bytes_loaded": 0}
        for cache in self.caches.values():
            totals["misses"] += cache.stats.num_misses
            totals["hits"] += cache.stats.num_hits
            totals["evictions"] += cache.stats.num_evictions
            totals["bytes_loaded"] += cache.stats.bytes_loaded
        with self._lock:
            totals["prefetches"] = self._num_prefetches
        return totals

    def _report(self, total: int, futures: list[Future[Result]], wall_s: float, before: dict[str, int]) -> Report:
        after = self._cache_totals()
        completed = sum(1 for f in futures if f.exception() is None)
        latencies = [f.result().latency_ms for f in futures if f.exception() is None]
        with self._lock:
            errors = dict(self._errors)
        prefetches = after["prefetches"] - before["prefetches"]
        return Report(
            policy=self.config.policy, package=self.package.name, num_requests=total, num_completed=completed,
            num_failed=total - completed, wall_s=wall_s, throughput_rps=completed / wall_s if wall_s > 0 else 0.0,
            latency_ms=latency_summary(latencies), latency_cdf_ms=latency_cdf(latencies),
            num_switches=after["misses"] - before["misses"] - prefetches,
            num_hits=after["hits"] - before["hits"], num_prefetches=prefetches,
            num_evictions=after["evictions"] - before["evictions"],
            bytes_loaded=after["bytes_loaded"] - before["bytes_loaded"],
            peak_bytes={**{p: c.stats.peak_bytes for p, c in self.caches.items()},
                        **({"host": self.host.stats.peak_bytes} if self.host else {})},
            budget_bytes={**{p: c.budget_bytes for p, c in self.caches.items()},
                          **({"host": self.host.budget_bytes} if self.host else {})},
            load_s=sum(c.stats.load_seconds for c in self.caches.values()),
            executors={p.id: sum(1 for e in self.executors if e.processor_id == p.id) for p in self.profile.processors},
            startup_s=self.startup_s, profile=self.profile.name, errors=errors,
            quarantined=self.health.quarantined(self.now_ms() / 1e3), expert_failures=self.health.failures(),
        )


def load(package: str | Path | Package, *, profile: str | Path | DeviceProfile | None = None,
         policy: str = "edgecoe", config: RuntimeConfig | None = None, **overrides: object) -> Runtime:
    """Load a package and start a runtime for it.

    Args:
        package: package directory (or a loaded :class:`Package`).
        profile: device profile (path or object); default: this machine's defaults.
        policy: preset name, used when ``config`` is not given.
        config: full configuration; ``overrides`` replace its fields.

    Raises:
        PackageError, ProfileError, InvalidInputError, ProviderUnavailableError.
    """
    from dataclasses import replace

    from edgecoe.profiler.schema import load_profile

    config = config or RuntimeConfig(policy=policy)
    if overrides:
        config = replace(config, **overrides)  # type: ignore[arg-type]
    config.validate()
    pkg = package if isinstance(package, Package) else load_package(package, verify=config.verify)  # type: ignore[arg-type]
    prof = load_profile(profile) if isinstance(profile, (str, Path)) else profile
    return Runtime(pkg, config=config, profile=prof)


