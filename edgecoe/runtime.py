"""The real-time driver of the engine: executor threads, futures, routing on real outputs.

Data flows one way: ``submit`` admits a request and queues a task for its
preliminary expert; an executor takes the batch its scheduling policy hands
it, makes the expert resident through its processor's cache (and so through
the injected loader), runs the batch, and routes each item on (a new task
re-enters scheduling) or completes its request's future.
``InferenceSession.run`` releases the GIL, so executor threads run in parallel.

Everything the runtime serves with (executors, caches, cost model, scheduler,
budgets, preload, the report) comes from :mod:`edgecoe.engine`, the same
engine the simulator drives on a virtual clock.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgecoe.admission import REQUEST_OVERHEAD_BYTES, Admission, InFlightLimit
from edgecoe.cache import ExpertCache
from edgecoe.config import RuntimeConfig
from edgecoe.engine import CacheTotals, Engine, build_engine, queue_limits
from edgecoe.errors import (
    CacheLoadError,
    InvalidInputError,
    RequestCancelled,
    RequestError,
    RoutingError,
)
from edgecoe.execution import Outputs, run_isolating
from edgecoe.health import ExpertHealth
from edgecoe.loaders import ExpertLoader, LoadedExpert
from edgecoe.memory import HeapTrimmer, release_freed_memory
from edgecoe.package import Package
from edgecoe.package.manifest import Route
from edgecoe.package.routing import next_experts
from edgecoe.profile import DeviceProfile, default_profile
from edgecoe.replay import replay
from edgecoe.results import CloseOutcome, Report, Result
from edgecoe.sched import ExecutorInfo, SchedulingPolicy, Task
from edgecoe.sched.prefetch import NeededCounts, likely_successors
from edgecoe.sched.types import Batch
from edgecoe.timeline import Timeline
from edgecoe.workload import Workload

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    """A request in flight."""

    id: str
    inputs: dict[str, np.ndarray]
    future: Future[Result]
    submitted_ms: float
    input_bytes: int = 0  # its copied inputs and bookkeeping, counted against the queue limit
    pending: int = 1  # tasks not finished yet (fan-out adds some)
    path: list[str] = field(default_factory=list)
    leaves: dict[str, Outputs] = field(default_factory=dict)
    last_outputs: Outputs = field(default_factory=dict)
    failed: bool = False


@dataclass(slots=True)
class _Payload:
    """What a runtime task carries through the scheduler."""

    request: _Request
    inputs: dict[str, np.ndarray]


def _resolve(future: Future[Result], outcome: Result | BaseException) -> None:
    """Resolve ``future`` unless the caller cancelled it in the meantime (then there is nothing to do)."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass  # cancelled between our check and now: the cancel callback did the bookkeeping


def _payload(task: Task) -> _Payload:
    payload = task.payload
    assert isinstance(payload, _Payload), "every runtime task carries a _Payload"
    return payload


class Runtime:
    """Serves one package. Use :func:`edgecoe.load` to make one; close it (or use ``with``).

    Thread-safe: ``submit`` may be called from any thread.

    Args:
        package: the package to serve.
        config: policy and overrides (default: the edgecoe preset).
        profile: the device profile (default: this machine's CPU, 40 % of available memory).
        timeline: record loads, evictions and batches per executor here.
        loader: how experts become resident (default: ONNX Runtime sessions,
            :class:`~edgecoe.loaders.session.SessionLoader`); tests inject their own.
    """

    def __init__(self, package: Package, *, config: RuntimeConfig | None = None,
                 profile: DeviceProfile | None = None, timeline: Timeline | None = None,
                 loader: ExpertLoader[Any] | None = None) -> None:
        self.config = config or RuntimeConfig()
        self.config.validate()
        self.timeline = timeline
        self.package = package
        self._start = time.perf_counter()
        profile = profile or default_profile()
        if loader is None:
            from edgecoe.loaders.session import SessionLoader

            loader = SessionLoader(package, profile, self.config)
        self.loader = loader
        self.engine: Engine[Any] = build_engine(package.manifest, profile, self.config, loader,
                                                graph=package.graph, clock=self.now_ms, timeline=timeline)
        self.startup_s = time.perf_counter() - self._start
        self._admission = Admission(package.manifest)
        # NOTE: re-entrant: a caller's Future.cancel() runs our done-callback in its own thread,
        # and a done-callback of theirs may cancel another request while we resolve one under the lock.
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)
        max_requests, max_bytes = queue_limits(self.engine.profile, self.config)
        self.in_flight = InFlightLimit(max_requests=max_requests, max_bytes=max_bytes)
        self._closing = False
        self._seq = itertools.count()
        self._requests: dict[str, _Request] = {}
        self._errors: dict[str, int] = {}
        self._needed = NeededCounts()  # what queued and running tasks need: a prefetch never evicts it
        self._prefetch_hints: list[tuple[str, list[str]]] = []
        self._prefetching = False
        self.health = ExpertHealth(threshold=self.config.quarantine_after, quarantine_s=self.config.quarantine_s)
        self._trimmer = HeapTrimmer()
        self._threads = [threading.Thread(target=self._executor_loop, args=(e,), daemon=True,
                                          name=f"edgecoe-executor-{e.index}") for e in self.executors]
        self._prefetch_on = {p.id: self.engine.prefetches_on(p.kind) for p in self.profile.processors}
        self._prefetch_thread: threading.Thread | None = None
        if any(self._prefetch_on.values()):
            self._prefetch_thread = threading.Thread(target=self._prefetch_loop, daemon=True, name="edgecoe-prefetch")
            self._prefetch_thread.start()
        for thread in self._threads:
            thread.start()

    # -- the engine's parts, by their usual names ------------------------------------
    @property
    def profile(self) -> DeviceProfile:
        """The device profile in force (budgets applied)."""
        return self.engine.profile

    @property
    def caches(self) -> dict[str, ExpertCache[LoadedExpert[Any]]]:
        return self.engine.caches

    @property
    def scheduler(self) -> SchedulingPolicy:
        return self.engine.scheduler

    @property
    def executors(self) -> list[ExecutorInfo]:
        return self.engine.executors

    def now_ms(self) -> float:
        return (time.perf_counter() - self._start) * 1e3

    # -- public API ----------------------------------------------------------------------
    def submit(self, inputs: Mapping[str, np.ndarray], metadata: Mapping[str, object] | None = None, *,
               request_id: str | None = None, wait_s: float | None = 0.0) -> Future[Result]:
        """Queue one request (one item per input, no batch axis). Its inputs are copied.

        Args:
            request_id: an id of your own (unique among requests in flight).
            wait_s: when the queue limits are reached, wait this long for room
                (None: as long as it takes) before raising :class:`QueueFullError`.

        Returns:
            A future resolving to a :class:`Result`, or raising :class:`RequestError`.
            ``future.cancel()`` drops a request that has not ended; nothing else is affected.

        Raises:
            InvalidInputError: inputs or metadata do not fit the package (nothing is queued).
            QueueFullError: ``max_queued_requests`` or ``max_queued_input_bytes`` reached (nothing is queued).
            RuntimeError: the runtime is closed.
        """
        arrays, first = self._admission.admit(inputs, metadata)
        num_bytes = sum(a.nbytes for a in arrays.values()) + REQUEST_OVERHEAD_BYTES
        self.in_flight.acquire(num_bytes, wait_s=wait_s)  # outside our lock: a wait must not stall executors
        future: Future[Result] = Future()
        with self._work:
            seq = next(self._seq)
            rid = request_id or f"req-{seq}"
            refused = ("runtime is closed" if self._closing else
                       f"request id {rid!r} is already in flight" if rid in self._requests else None)
            if refused is not None:
                self.in_flight.release(num_bytes)
                raise RuntimeError(refused) if self._closing else InvalidInputError(refused)
            now = self.now_ms()
            request = _Request(rid, arrays, future, now, input_bytes=num_bytes)
            self._requests[rid] = request
            self._enqueue_locked(Task(rid, first, now, seq, _Payload(request, arrays)), now)
            self._work.notify_all()
        # NOTE: by id, not the request: a future referring back to its request would make a cycle
        # that keeps every finished request's inputs alive until the garbage collector runs.
        future.add_done_callback(lambda f: self._maybe_cancelled(rid, f))
        return future

    def _maybe_cancelled(self, request_id: str, future: Future[Result]) -> None:
        """The caller cancelled ``future``: its tasks are skipped, its room is freed."""
        if not future.cancelled():
            return  # resolved by us; the bookkeeping is done
        with self._work:
            request = self._requests.get(request_id)
            if request is not None and request.future is future and not request.failed:
                request.failed = True
                self._retire_locked(request)
                self._count_error_locked("cancelled by the caller")
            self._work.notify_all()

    def run(self, workload: Workload, *, progress: Callable[[int, int], None] | None = None) -> Report:
        """Replay ``workload`` at its arrival times and wait for every request (:func:`edgecoe.replay.replay`).

        Raises:
            WorkloadError: some request would be refused at submit (each named); nothing ran.
        """
        return replay(self, workload, progress=progress)

    def record_failure(self, cause: str) -> None:
        """Count a failure that happened outside the runtime (a replayed request refused at submit)."""
        with self._lock:
            self._count_error_locked(cause)

    def report(self, num_requests: int, latencies_ms: list[float], wall_s: float,
               since: CacheTotals = CacheTotals.ZERO) -> Report:
        """A report of ``num_requests`` (``latencies_ms`` of those that completed) and the
        caches' counters since ``since`` (an ``engine.totals()``; default: since start)."""
        with self._lock:
            errors = dict(self._errors)
        return self.engine.report(
            num_requests=num_requests, latencies_ms=latencies_ms, wall_s=wall_s, since=since, errors=errors,
            startup_s=self.startup_s, quarantined=self.health.quarantined(self.now_ms() / 1e3),
            expert_failures=self.health.failures())

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until no task is queued or running and no prefetch is under way.

        Futures can resolve before the runtime is idle: a failed request's
        fan-out sibling may still run, and a prefetch pins what it loads.

        Returns:
            Whether the runtime went idle within ``timeout_s``.
        """
        with self._work:
            return self._work.wait_for(
                lambda: not self._needed and not self._prefetching and not self._prefetch_hints, timeout_s)

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
                        self._needed.done(task.expert)
                        self._fail_request_locked(_payload(task).request, task.expert,
                                                  f"cancelled: {why}", RequestCancelled)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- executors -------------------------------------------------------------------------
    def _executor_loop(self, info: ExecutorInfo) -> None:
        while True:
            with self._work:
                while True:
                    batch = self.scheduler.pop_batch(info.index, self.now_ms())
                    if batch is not None:
                        break
                    if self._closing and not self._requests:
                        return
                    self._work.wait(timeout=0.5)
            try:
                self._run_batch(info, batch)
            finally:
                with self._work:
                    for task in batch.tasks:
                        self._needed.done(task.expert)
                    self.scheduler.batch_done(info.index, self.now_ms())
                    self._work.notify_all()

    def _run_batch(self, info: ExecutorInfo, batch: Batch) -> None:
        cache = self.caches[info.processor_id]
        expert = batch.expert
        # Tasks of requests that already failed elsewhere (a fan-out sibling) are not worth a run.
        live = [t for t in batch.tasks if not _payload(t).request.failed]
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
        assert acquired is not None  # acquire waits for room unless told not to
        if self.timeline is not None and not acquired.hit:
            self.timeline.span("load", expert, info.index, acquire_start, self.now_ms() - acquire_start)
        record = self.package.experts[expert]
        tasks = batch.tasks
        run_start = self.now_ms()
        try:
            outcome = run_isolating(acquired.handle.handle, record, [_payload(t).inputs for t in tasks])
        finally:
            cache.release(expert)
            self._trimmer.after(cache.stats.num_evictions)  # evicted sessions' memory back to the OS
        if outcome.batch_ms is not None:
            self.engine.cost.observe_exec(expert, info.kind, len(tasks), outcome.batch_ms)
            if self.timeline is not None:
                self.timeline.span(f"batch[{len(tasks)}]", expert, info.index, run_start, outcome.batch_ms)
        if outcome.ran:
            self.health.succeeded(expert)
        elif outcome.failed:
            self._expert_failed(expert, outcome.failed[0][1])
        with self._work:
            for i, cause in outcome.failed:
                self._fail_locked(tasks[i], cause)
            for i, outputs, row in outcome.ran:
                self._route_locked(tasks[i], record.route, outputs, row)
            self._work.notify_all()

    def _expert_failed(self, expert: str, cause: str) -> None:
        if self.health.failed(expert, cause, self.now_ms() / 1e3):
            logger.warning("expert %s quarantined for %g s after %d consecutive failures; last: %s",
                           expert, self.config.quarantine_s, self.config.quarantine_after, cause)

    def _fail_all(self, tasks: list[Task], cause: str) -> None:
        with self._work:
            for task in tasks:
                self._fail_locked(task, cause)
            self._work.notify_all()

    # -- routing and bookkeeping (all under the lock) -----------------------------------------
    def _route_locked(self, task: Task, route: Route, outputs: Outputs, index: int) -> None:
        request = _payload(task).request
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
        self._needed.add(task.expert)
        self.scheduler.add(task, now)

    def _finish_task_locked(self, request: _Request) -> None:
        request.pending -= 1
        if request.pending > 0:
            return
        latency = self.now_ms() - request.submitted_ms
        self._retire_locked(request)
        _resolve(request.future, Result(request.id, request.last_outputs, list(request.path),
                                        dict(request.leaves), latency))

    def _fail_locked(self, task: Task, cause: str) -> None:
        self._fail_request_locked(_payload(task).request, task.expert, cause)

    def _fail_request_locked(self, request: _Request, expert: str | None, cause: str,
                             error_type: type[RequestError] = RequestError) -> None:
        if request.failed or request.future.done():
            return
        request.failed = True
        self._retire_locked(request)
        self._count_error_locked(cause)
        _resolve(request.future, error_type(request.id, expert, cause))

    def _retire_locked(self, request: _Request) -> None:
        """The request ended: it leaves the in-flight table and gives its room back."""
        if self._requests.pop(request.id, None) is not None:
            self.in_flight.release(request.input_bytes)

    def _count_error_locked(self, cause: str) -> None:
        key = cause[:80]
        self._errors[key] = self._errors.get(key, 0) + 1

    # -- prefetch ------------------------------------------------------------------------------
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
                self._prefetching = True
            try:
                experts = [e for e in experts if self.health.blocked(e, self.now_ms() / 1e3) is None]
                self.engine.prefetch(processor_id, experts, protect=self._needed)
            finally:
                with self._work:
                    self._prefetching = False
                    self._work.notify_all()
