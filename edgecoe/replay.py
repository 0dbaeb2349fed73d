"""Replaying a workload trace against a running runtime: arrivals on time, every request
accounted for, one report.

The trace is validated whole first (the checks ``submit`` makes, on every request), so a bad
request midway can never leave a run half served. Arrivals then follow the trace's clock;
when the runtime's queue limits are reached the replay waits for room (back-pressure
delays arrivals instead of losing requests).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Protocol

import numpy as np

from edgecoe.admission import refuse_bad_requests
from edgecoe.devicemem import storage_read_bytes
from edgecoe.errors import InvalidInputError, RequestError
from edgecoe.package.routing import expected_uses
from edgecoe.results import Report, Result
from edgecoe.workload import Workload, materialize


class Serving(Protocol):
    """What a replay needs of a runtime."""

    package: Any
    engine: Any

    def now_ms(self) -> float: ...

    def submit(self, inputs: Mapping[str, np.ndarray], metadata: Mapping[str, object] | None = None, *,
               request_id: str | None = None, wait_s: float | None = 0.0, stream: str | None = None,
               stream_start: bool = False) -> Future[Result]: ...

    def record_failure(self, cause: str) -> None: ...

    def report(self, num_requests: int, latencies_ms: list[float], wall_s: float, since: Any = ...) -> Report: ...


def replay(runtime: Serving, workload: Workload, *, progress: Callable[[int, int], None] | None = None) -> Report:
    """Submit ``workload`` at its arrival times and wait for every request.

    Args:
        progress: called with (finished, total) as requests finish.

    Raises:
        WorkloadError: some request would be refused at submit (each named); nothing ran.
    """
    manifest = runtime.package.manifest
    refuse_bad_requests(workload, manifest)
    runtime.engine.set_future(expected_uses(manifest, [r.metadata for r in workload.requests]))
    total = len(workload)
    done = 0
    done_lock = threading.Lock()
    start_ms = runtime.now_ms()
    since = runtime.engine.totals()
    read_before = storage_read_bytes()
    futures: list[Future[Result]] = []

    def finished(_: Future[Result]) -> None:
        nonlocal done
        with done_lock:
            done += 1
            count = done
        if progress:
            progress(count, total)

    for request in workload.requests:
        delay_s = (start_ms + request.arrival_ms - runtime.now_ms()) / 1e3
        if delay_s > 0:
            time.sleep(delay_s)
        inputs = materialize(request, manifest.inputs, workload.base_dir)
        try:
            future = runtime.submit(inputs, request.metadata, request_id=request.id, wait_s=None,
                                    stream=request.stream, stream_start=request.stream_start)
        except InvalidInputError as exc:  # validated above; a request id still in flight is the one way here
            future = Future()
            future.set_exception(RequestError(request.id, None, str(exc)))
            runtime.record_failure(str(exc))
        future.add_done_callback(finished)
        futures.append(future)
    for future in futures:
        future.exception()  # waits; failures are counted where they happen
    wall_s = (runtime.now_ms() - start_ms) / 1e3
    latencies = [f.result().latency_ms for f in futures if f.exception() is None]
    report = runtime.report(len(futures), latencies, wall_s, since)
    read_after = storage_read_bytes()
    if read_before is not None and read_after is not None:
        report.storage_read_bytes = read_after - read_before
    return report
