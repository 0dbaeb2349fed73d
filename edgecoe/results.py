"""What a request returns and what a run reports."""

from __future__ import annotations

import json
import platform
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgecoe.errors import RequestCancelled


@dataclass(frozen=True)
class CloseOutcome:
    """What :meth:`Runtime.close` did with each request in flight when it was called.

    Attributes:
        completed: ids that finished with a result.
        failed: ids that failed (an expert's error, quarantine) -> cause.
        cancelled: ids cancelled by the close.
    """

    completed: list[str]
    failed: dict[str, str]
    cancelled: list[str]

    @classmethod
    def of(cls, futures: dict[str, Future[Result]]) -> CloseOutcome:
        completed, failed, cancelled = [], {}, []
        for rid, future in futures.items():
            if not future.done() or future.cancelled():  # close() resolves every future; never block here
                cancelled.append(rid)
                continue
            error = future.exception()
            if error is None:
                completed.append(rid)
            elif isinstance(error, RequestCancelled):
                cancelled.append(rid)
            else:
                failed[rid] = getattr(error, "cause", str(error))
        return cls(completed, failed, cancelled)

    def __len__(self) -> int:
        return len(self.completed) + len(self.failed) + len(self.cancelled)


@dataclass(frozen=True)
class Result:
    """A finished request.

    Attributes:
        request_id: the id it was submitted with.
        outputs: the last expert's outputs for this request (one item, no batch axis).
        path: experts visited, in the order they ran.
        leaves: outputs of every expert the request stopped at (several after a fan-out):
            the last item's, where several items stopped at one expert.
        latency_ms: from submission to completion.
        items: per expert the request stopped at, every item's outputs, in fan-out order
            (a detector's boxes fanned out to a recogniser: one entry per box, in box order).
    """

    request_id: str
    outputs: dict[str, np.ndarray]
    path: list[str]
    leaves: dict[str, dict[str, np.ndarray]]
    latency_ms: float
    items: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)


@dataclass
class Report:
    """Summary of a run; ``to_json`` gives the documented report format (README)."""

    policy: str
    package: str
    num_requests: int
    num_completed: int
    num_failed: int
    wall_s: float
    throughput_rps: float
    latency_ms: dict[str, float]
    num_switches: int
    num_hits: int
    num_prefetches: int
    num_evictions: int
    bytes_loaded: int
    peak_bytes: dict[str, int]
    budget_bytes: dict[str, int]
    executors: dict[str, int]
    startup_s: float
    load_s: float = 0.0  # time spent making experts resident (all executors together)
    working_bytes: dict[str, int] = field(default_factory=dict)  # processor -> memory reserved for batches
    simulated: bool = False
    profile: str = ""
    errors: dict[str, int] = field(default_factory=dict)  # cause -> count
    latency_cdf_ms: list[float] = field(default_factory=list)  # latency at each of CDF_PERCENTILES
    quarantined: dict[str, str] = field(default_factory=dict)  # expert quarantined at the end -> last cause
    expert_failures: dict[str, int] = field(default_factory=dict)  # expert -> failed loads/runs
    slo_ms: float | None = None  # the latency objective goodput is measured against
    goodput_rps: float | None = None  # requests finished within slo_ms, per second of the run
    link_busy_s: dict[str, float] = field(default_factory=dict)  # simulated: shared load link -> seconds in use
    storage_read_bytes: int | None = None  # read from storage (not the page cache) while serving; None: unknown
    device_memory: dict[str, object] = field(default_factory=dict)  # the memory limit a run was under, if any
    isolated_batches: int = 0  # batches that failed whole and re-ran item by item (their items' fates in errors)
    machine: dict[str, str] = field(default_factory=lambda: machine_info())

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


#: Percentiles a report's latency CDF is sampled at (fine at the tail, where policies differ).
CDF_PERCENTILES = (0, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97.5, 99, 99.9, 100)


def latency_cdf(latencies_ms: list[float]) -> list[float]:
    """Latency at each of :data:`CDF_PERCENTILES` (empty when nothing completed)."""
    if not latencies_ms:
        return []
    return [float(v) for v in np.percentile(np.asarray(latencies_ms), CDF_PERCENTILES)]


def latency_summary(latencies_ms: list[float]) -> dict[str, float]:
    if not latencies_ms:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0, "max": 0.0}
    arr = np.asarray(latencies_ms)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean()), "max": float(arr.max())}


def format_machine(machine: dict[str, str]) -> str:
    """``x86_64 Linux, 2 CPUs, Python 3.11.7, onnxruntime 1.32.0``."""
    return (f"{machine.get('machine', '?')} {machine.get('system', '')}, {machine.get('cpus', '?')} CPUs, "
            f"Python {machine.get('python', '?')}, onnxruntime {machine.get('onnxruntime', '?')}")


def machine_info() -> dict[str, str]:
    """What a figure was measured on: CPU architecture, OS, cores, Python and onnxruntime versions."""
    import os

    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:  # the simulator runs without ONNX Runtime
        ort_version = "not installed"
    return {"machine": platform.machine(), "system": platform.system(), "cpus": str(os.cpu_count()),
            "python": platform.python_version(), "onnxruntime": ort_version}
