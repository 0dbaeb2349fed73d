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
from collections import deque
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
from edgecoe.execution import Item, run_isolating
from edgecoe.health import ExpertHealth
from edgecoe.loaders import ExpertLoader, LoadedExpert
from edgecoe.memory import HeapTrimmer, release_freed_memory
from edgecoe.package import Package
from edgecoe.package.feeds import FeedError, Source, expert_sources, item_shape, resolve
from edgecoe.package.manifest import ExpertRecord
from edgecoe.package.routing import route_item
from edgecoe.profile import DeviceProfile, default_profile
from edgecoe.replay import replay
from edgecoe.results import CloseOutcome, Report, Result
from edgecoe.sched import ExecutorInfo, SchedulingPolicy, Task
from edgecoe.sched.prefetch import NeededCounts, likely_successors
from edgecoe.sched.types import Batch
from edgecoe.streams import StreamError, StreamStates
from edgecoe.timeline import Timeline
from edgecoe.transforms import Transform, TransformCall, TransformError, check_provided, run_finish, run_prepare
from edgecoe.workload import Workload

logger = logging.getLogger(__name__)


@dataclass(eq=False)  # a request is itself: compared by identity (its fields hold arrays)
class _Request:
    """A request in flight."""

    id: str
    inputs: dict[str, np.ndarray]
    future: Future[Result]
    submitted_ms: float
    input_bytes: int = 0  # its copied inputs and bookkeeping, counted against the queue limit
    pending: int = 1  # tasks not finished yet (fan-out adds some)
    path: list[str] = field(default_factory=list)
    leaves: dict[str, Item] = field(default_factory=dict)
    last_outputs: Item = field(default_factory=dict)
    failed: bool = False
    first: str = ""
    metadata: Mapping[str, object] = field(default_factory=dict)
    stream: str | None = None  # a stateful package's stream this request continues (or starts)
    stream_start: bool = False
    waiting: bool = False  # queued behind its stream's request in flight, not begun
    items: list[tuple[tuple[int, ...], str, Item]] = field(default_factory=list)  # (fan-out key, leaf, outputs)


@dataclass(slots=True)
class _Payload:
    """What a runtime task carries through the scheduler: one item on its way through the graph."""

    request: _Request
    inputs: dict[str, np.ndarray]  # the expert's model inputs for this item
    lineage: dict[str, Item] = field(default_factory=dict)  # outputs of the experts earlier on its path
    prepared: dict[str, Item] = field(default_factory=dict)  # prepare transforms' values along its path
    key: tuple[int, ...] = ()  # position among the request's fanned-out items (orders the result)


class _ItemFailed(Exception):
    """One item cannot go on (a transform, a feed, a stream, a route): its request fails with this cause."""


# Distinct failure causes a report counts apart; more are counted together (hostile inputs
# could otherwise make every error message unique and the table unbounded).
_MAX_ERROR_KEYS = 200
_MAX_ERROR_KEY_CHARS = 2000


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
                 loader: ExpertLoader[Any] | None = None,
                 transforms: Mapping[str, Transform] | None = None) -> None:
        self.config = config or RuntimeConfig()
        self.config.validate()
        self._transforms = dict(transforms or {})
        check_provided(package.manifest.transforms(), self._transforms)
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
        self.isolated_batches = 0  # batches that failed whole and re-ran item by item
        manifest = package.manifest
        self._sources: dict[str, dict[str, Source]] = {n: expert_sources(manifest, n) for n in manifest.experts}
        self._constants = {n: c.array() for n, c in manifest.constants.items()}
        self._model_metadata = {n: e.model_metadata for n, e in manifest.experts.items()}
        self._initial_state = {n: self._initial_states(e) for n, e in manifest.experts.items() if e.state}
        self.states = StreamStates(max_streams=self.config.max_streams, max_bytes=self.config.max_state_bytes)
        # stream -> its requests waiting behind the one in flight (a stream's calls run in order)
        self._stream_queue: dict[str, deque[_Request]] = {}
        self._released: list[_Request] = []  # requests whose turn came, to begin outside the lock
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

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` has begun (nothing new is accepted)."""
        return self._closing

    # -- public API ----------------------------------------------------------------------
    def submit(self, inputs: Mapping[str, np.ndarray], metadata: Mapping[str, object] | None = None, *,
               request_id: str | None = None, wait_s: float | None = 0.0, stream: str | None = None,
               stream_start: bool = False) -> Future[Result]:
        """Queue one request (one item per input, no batch axis). Its inputs are copied.

        Args:
            request_id: an id of your own (unique among requests in flight).
            wait_s: when the queue limits are reached, wait this long for room
                (None: as long as it takes) before raising :class:`QueueFullError`.
            stream: for packages with stateful experts: the stream this request
                continues. A stream's requests run one after another, in submission order.
            stream_start: begin ``stream`` afresh (its first request, or a restart).

        Returns:
            A future resolving to a :class:`Result`, or raising :class:`RequestError`.
            ``future.cancel()`` drops a request that has not ended; nothing else is affected.

        Raises:
            InvalidInputError: inputs or metadata do not fit the package (nothing is queued).
            QueueFullError: ``max_queued_requests`` or ``max_queued_input_bytes`` reached (nothing is queued).
            RuntimeError: the runtime is closed.
        """
        arrays, first = self._admission.admit(inputs, metadata)
        self._check_stream(stream, stream_start, first)
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
            request = _Request(rid, arrays, future, now, input_bytes=num_bytes, first=first,
                               metadata=dict(metadata or {}), stream=stream, stream_start=stream_start)
            self._requests[rid] = request
            waiting = self._stream_queue.get(stream) if stream is not None else None
            if waiting is not None:
                request.waiting = True  # its turn comes when the stream's request ahead ends
                waiting.append(request)
            elif stream is not None:
                self._stream_queue[stream] = deque()
        # NOTE: by id, not the request: a future referring back to its request would make a cycle
        # that keeps every finished request's inputs alive until the garbage collector runs.
        future.add_done_callback(lambda f: self._maybe_cancelled(rid, f))
        if waiting is None:
            self._begin(request)
        return future

    def _check_stream(self, stream: str | None, start: bool, first: str) -> None:
        """A stream id where the package is stateful, and a stream that is held unless started."""
        stateful = bool(self._initial_state)
        if stream is None:
            if start:
                raise InvalidInputError("stream_start=True needs a stream id")
            if first in self._initial_state:
                raise InvalidInputError(f"expert {first!r} is stateful: submit its requests with a stream id "
                                        "(stream=ID, and stream_start=True for a stream's first request)")
            return
        if not stateful:
            raise InvalidInputError(f"stream {stream!r}: this package has no stateful expert; submit without a stream")
        if not isinstance(stream, str) or not 0 < len(stream) <= 256 or not stream.isprintable():
            raise InvalidInputError(f"stream id {stream!r}: expected 1 to 256 printable characters")
        with self._lock:
            behind = stream in self._stream_queue
        if not start and not behind and not self.states.known(stream):
            raise InvalidInputError(self.states.unknown(stream))

    def _begin(self, request: _Request) -> None:
        """Start a request at its first expert: its stream's state, its prepare transform, its inputs."""
        try:
            if request.stream is not None and request.stream_start:
                self.states.start(request.stream)
            tasks = self._tasks_for(request, request.first, {}, {}, None, ())
        except _ItemFailed as exc:
            self._fail_begun(request, str(exc))
            return
        with self._work:
            if request.failed or request.future.done():
                return  # cancelled while its transform ran
            request.pending = len(tasks)
            for task in tasks:
                self._enqueue_locked(task, task.enqueued_ms)
            if not tasks:  # the prepare transform made no item: nothing to run, an empty result
                request.pending = 1
                self._finish_task_locked(request)
            self._work.notify_all()
        self._begin_released()

    def _fail_begun(self, request: _Request, cause: str) -> None:
        with self._work:
            self._fail_request_locked(request, request.first, cause)
            self._work.notify_all()
        self._begin_released()

    def _begin_released(self) -> None:
        """Begin the requests whose stream turn came (outside the lock: transforms may run)."""
        while True:
            with self._work:
                if not self._released:
                    return
                request = self._released.pop(0)
            if request.failed or request.future.done():
                continue
            self._begin(request)

    def _initial_states(self, record: ExpertRecord) -> dict[str, np.ndarray]:
        """A stateful expert's first state per state input: its constant, or zeros of one item's shape."""
        specs = {s.name: s for s in record.inputs}
        out = {}
        for pair in record.state:
            if pair.initial is not None:
                out[pair.input] = self._constants[pair.initial]
            else:
                spec = specs[pair.input]
                shape = [d for d in item_shape(spec, record.batch.axis(pair.input)) if isinstance(d, int)]  # all static (load checks)
                out[pair.input] = np.zeros(shape, dtype=np.dtype(spec.dtype))
        return out

    def _tasks_for(self, request: _Request, expert: str, lineage: dict[str, Item], prepared: dict[str, Item],
                   parent: str | None, key: tuple[int, ...]) -> list[Task]:
        """The tasks one item makes at ``expert``: its prepare transform (none, one or many items),
        then each item's model inputs from their feeds.

        Raises:
            _ItemFailed: a transform, a feed or the stream failed (the cause names which).
        """
        record = self.package.experts[expert]
        made: list[Item] = [{}]
        if record.prepare is not None:
            step = record.prepare
            call = TransformCall(expert=expert, args=step.args, request=request.inputs, metadata=request.metadata,
                                 lineage=lineage, prepared=prepared, model_metadata=self._model_metadata)
            try:
                made = run_prepare(self._transforms[step.transform], call, max_items=self.config.max_fanout)
            except TransformError as exc:
                raise _ItemFailed(f"transform {step.transform!r} (prepare of expert {expert!r}) {exc}") from None
        state: dict[str, np.ndarray] = {}
        if record.state:
            if request.stream is None:
                raise _ItemFailed(f"expert {expert!r} is stateful: submit its requests with a stream id")
            if len(made) > 1:
                raise _ItemFailed(f"expert {expert!r} is stateful and one request sent it {len(made)} items; "
                                  "a stream's state follows one item per request")
            try:
                state = {**self._initial_state[expert], **self.states.get(request.stream, expert)}
            except StreamError as exc:
                raise _ItemFailed(str(exc)) from None
        tasks = []
        now = self.now_ms()
        for j, values in enumerate(made):
            try:
                inputs = resolve(self._sources[expert], expert=expert, request=request.inputs,
                                 constants=self._constants, lineage=lineage, parent=parent, prepared=values,
                                 state=state)
            except FeedError as exc:
                raise _ItemFailed(str(exc)) from None
            payload = _Payload(request, inputs, lineage, {**prepared, expert: values} if record.prepare else prepared,
                               (*key, j) if record.prepare is not None else key)
            tasks.append(Task(request.id, expert, now, next(self._seq), payload))
        return tasks

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
        self._begin_released()

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
            isolated = self.isolated_batches
        report = self.engine.report(
            num_requests=num_requests, latencies_ms=latencies_ms, wall_s=wall_s, since=since, errors=errors,
            startup_s=self.startup_s, quarantined=self.health.quarantined(self.now_ms() / 1e3),
            expert_failures=self.health.failures())
        return replace(report, isolated_batches=isolated)

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
                why = "cancelled: runtime closed without draining"
                self._cancel_queued_locked("runtime closed without draining")
                # NOTE: failing a stream's request in flight releases its next one into _released:
                # those are failed too, or close would wait for requests nothing will ever run.
                for waiting in list(self._stream_queue.values()):
                    for request in list(waiting):
                        self._fail_request_locked(request, None, why, RequestCancelled)
                while self._released:
                    self._fail_request_locked(self._released.pop(0), None, why, RequestCancelled)
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
                self._released.clear()
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
        if outcome.isolated:
            logger.warning("expert %s: a batch of %d failed as a whole and re-ran item by item (%d failed alone)",
                           expert, len(tasks), len(outcome.failed))
        # Finish transforms, state writes, routing and the next experts' prepare transforms run
        # here, outside the lock; only the bookkeeping below takes it.
        continued = [(tasks[i], *self._continue(tasks[i], record, outputs)) for i, outputs in outcome.ran]
        with self._work:
            self.isolated_batches += outcome.isolated
            for i, failure in outcome.failed:
                self._fail_locked(tasks[i], failure)
            for task, leaf, next_tasks, cause in continued:
                self._apply_locked(task, leaf, next_tasks, cause)
            self._work.notify_all()
        self._begin_released()

    def _expert_failed(self, expert: str, cause: str) -> None:
        if self.health.failed(expert, cause, self.now_ms() / 1e3):
            logger.warning("expert %s quarantined for %g s after %d consecutive failures; last: %s",
                           expert, self.config.quarantine_s, self.config.quarantine_after, cause)

    def _fail_all(self, tasks: list[Task], cause: str) -> None:
        with self._work:
            for task in tasks:
                self._fail_locked(task, cause)
            self._work.notify_all()
        self._begin_released()

    # -- routing and bookkeeping (all under the lock) -----------------------------------------
    def _continue(self, task: Task, record: ExpertRecord,
                  outputs: Item) -> tuple[Item | None, list[Task], str | None]:
        """Where one item goes after its expert ran: (its outputs if it stops here, the next
        tasks, or the cause it failed). Runs the finish transform, keeps a stream's state,
        routes, and makes the next experts' tasks (their prepare transforms included)."""
        payload = _payload(task)
        request = payload.request
        if request.failed:
            return None, [], None
        expert = task.expert
        try:
            if record.finish is not None:
                step = record.finish
                call = TransformCall(expert=expert, args=step.args, request=request.inputs,
                                     metadata=request.metadata, lineage=payload.lineage,
                                     prepared=payload.prepared, outputs=outputs,
                                     model_metadata=self._model_metadata)
                try:
                    outputs = {**outputs, **run_finish(self._transforms[step.transform], call)}
                except TransformError as exc:
                    raise _ItemFailed(f"transform {step.transform!r} (finish of expert {expert!r}) {exc}") from None
            if record.state:
                assert request.stream is not None  # the task could not have been made without one
                try:
                    self.states.put(request.stream, expert, {p.input: outputs[p.output] for p in record.state})
                except StreamError as exc:
                    raise _ItemFailed(str(exc)) from None
            try:
                targets = route_item(record.route, outputs)
            except RoutingError as exc:
                raise _ItemFailed(f"routing: {exc}") from None
            if not targets:
                return outputs, [], None
            lineage = {**payload.lineage, expert: outputs}
            tasks: list[Task] = []
            for t, target in enumerate(targets):
                key = (*payload.key, t) if len(targets) > 1 else payload.key
                tasks += self._tasks_for(request, target, lineage, payload.prepared, expert, key)
            return None, tasks, None
        except _ItemFailed as exc:
            return None, [], str(exc)

    def _apply_locked(self, task: Task, leaf: Item | None, tasks: list[Task], cause: str | None) -> None:
        """Record what :meth:`_continue` decided for one item."""
        request = _payload(task).request
        if request.failed:
            return
        if cause is not None:
            self._fail_locked(task, cause)
            return
        request.path.append(task.expert)
        if leaf is not None:
            request.leaves[task.expert] = leaf
            request.last_outputs = leaf
            request.items.append((_payload(task).key, task.expert, leaf))
        request.pending += len(tasks)
        for next_task in tasks:
            self._enqueue_locked(next_task, next_task.enqueued_ms)
        self._finish_task_locked(request)

    def _enqueue_locked(self, task: Task, now: float) -> None:
        self._needed.add(task.expert)
        self.scheduler.add(task, now)

    def _finish_task_locked(self, request: _Request) -> None:
        request.pending -= 1
        if request.pending > 0:
            return
        latency = self.now_ms() - request.submitted_ms
        self._retire_locked(request)
        items: dict[str, list[Item]] = {}
        for _, expert, outputs in sorted(request.items, key=lambda entry: entry[0]):
            items.setdefault(expert, []).append(outputs)
        _resolve(request.future, Result(request.id, request.last_outputs, list(request.path),
                                        dict(request.leaves), latency, items))

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
            stream = request.stream
            waiting = self._stream_queue.get(stream) if stream is not None else None
            if stream is None or waiting is None:
                return
            if request.waiting:  # ended before its turn (cancelled): it leaves the line
                request.waiting = False
                waiting.remove(request)
            elif waiting:  # the stream's request in flight ended: the next one may begin
                following = waiting.popleft()
                following.waiting = False
                self._released.append(following)
            else:
                del self._stream_queue[stream]

    def _count_error_locked(self, cause: str) -> None:
        key = cause if len(cause) <= _MAX_ERROR_KEY_CHARS else cause[:_MAX_ERROR_KEY_CHARS] + "..."
        if key not in self._errors and len(self._errors) >= _MAX_ERROR_KEYS:
            key = f"(other causes: more than {_MAX_ERROR_KEYS} distinct)"
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
