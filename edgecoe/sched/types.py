"""Records the scheduler works with: tasks, batches, executors. No ONNX Runtime here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Task:
    """One request's visit to one expert (a request makes several as it is routed on)."""

    request_id: str
    expert: str
    enqueued_ms: float
    seq: int  # global submission order, breaks ties deterministically
    payload: object = None  # the runtime's per-task data (inputs, request handle)


@dataclass(frozen=True, slots=True)
class ExecutorInfo:
    """A worker bound to one processor; executors on one processor share its expert pool."""

    index: int
    processor_id: str  # cpu, cuda:0, coreml: the device whose memory holds its experts
    kind: str  # cpu, cuda, coreml: selects costs in the profile


def build_executors(processors: Iterable[tuple[str, str, int]], *, parallel: bool,
                    num_executors: int | None) -> list[ExecutorInfo]:
    """Executors for (processor id, kind, profiled count) triples.

    ``parallel`` presets run ``num_executors`` (or the profiled count) per
    processor; the others run one, whatever is asked.
    """
    executors: list[ExecutorInfo] = []
    for processor_id, kind, profiled in processors:
        count = (num_executors or profiled) if parallel else 1
        for _ in range(count):
            executors.append(ExecutorInfo(len(executors), processor_id, kind))
    return executors


@dataclass(slots=True)
class Batch:
    """Decision: run ``tasks`` (all for ``expert``) on executor ``executor``."""

    executor: int
    expert: str
    tasks: list[Task]
    estimated_ms: float = 0.0  # the policy's estimate: switch (if needed) + execution
    needs_switch: bool = False  # the policy expected a load before running
    meta: dict[str, object] = field(default_factory=dict)
