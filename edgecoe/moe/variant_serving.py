"""Serving requests that each name a fine-tuned variant: grouped by variant, with a bound on waiting.

Mechanism apart from policy:

- :class:`VariantServer` replays a workload in real time (open loop: requests
  arrive at their times whatever the server is doing), keeps one bounded queue
  per variant, asks the grouping policy which variant to serve next, and hands
  that variant up to ``max_batch`` of its queued prompts to a backend, which
  generates them as one batch.
- :func:`pick_variant` (the policy): stay with the variant being served while
  it has requests waiting and no other variant's oldest request has waited
  longer than ``max_wait_ms``; otherwise serve the variant whose oldest request
  came first. Switching less is what consolidation buys; the bound keeps a rare
  variant from starving.
- Backends (:class:`ModelBackend` and the bench's) own the models: one model of
  a consolidated package switching variants, or several single models.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edgecoe.errors import InvalidInputError
from edgecoe.moe.generate import Generator, SamplingParams
from edgecoe.moe.model import MoeModel


@dataclass(frozen=True)
class VariantRequest:
    """One request: which variant, what prompt, when it arrives (seconds from the start)."""

    id: int
    variant: str
    prompt: str
    arrival_s: float


@dataclass
class VariantTiming:
    """What happened to one request (milliseconds from its arrival)."""

    id: int
    variant: str
    first_token_ms: float = 0.0
    turnaround_ms: float = 0.0
    tokens: int = 0
    token_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Batch:
    """One backend call's outcome: tokens per prompt, and when the first token of the batch came."""

    token_ids: list[list[int]]
    first_token_ms: float  # from the call


class VariantBackend(Protocol):
    def serve(self, variant: str, prompts: Sequence[str], params: SamplingParams) -> Batch:
        """Generate ``prompts`` with ``variant``, as one batch."""
        ...

    @property
    def switches(self) -> int:
        """Variant switches so far (loads of non-expert parts or of whole models)."""
        ...

    def close(self) -> None: ...


def pick_variant(queues: Mapping[str, deque[VariantRequest]], current: str | None, now_s: float, *,
                 max_wait_ms: float) -> str | None:
    """The variant to serve next (see the module docstring); None when nothing waits."""
    waiting = {v: q[0].arrival_s for v, q in queues.items() if q}
    if not waiting:
        return None
    oldest = min(waiting, key=lambda v: (waiting[v], v))
    if current in waiting:
        starved = (now_s - waiting[oldest]) * 1e3 > max_wait_ms and oldest != current
        return oldest if starved else current
    return oldest


class VariantServer:
    """Replays a workload against a backend; see the module docstring.

    Args:
        max_batch: prompts of one variant generated together at most.
        max_wait_ms: how long another variant's oldest request may wait before the server switches.
        max_queued: requests queued at most (all variants); an arrival beyond it is refused and counted.
    """

    def __init__(self, backend: VariantBackend, params: SamplingParams, *, max_batch: int = 8,
                 max_wait_ms: float = 2000.0, max_queued: int = 1024) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_queued < 1:
            raise InvalidInputError(f"max_batch={max_batch} must be >= 1, max_wait_ms={max_wait_ms} >= 0 and "
                                    f"max_queued={max_queued} >= 1")
        self.backend = backend
        self.params = params
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.max_queued = max_queued
        self.refused: list[int] = []

    def run(self, workload: Sequence[VariantRequest]) -> list[VariantTiming]:
        """Serve every request of ``workload`` (sorted by arrival); the timings of those served."""
        pending = deque(sorted(workload, key=lambda r: (r.arrival_s, r.id)))
        queues: dict[str, deque[VariantRequest]] = {}
        timings: list[VariantTiming] = []
        current: str | None = None
        start = time.perf_counter()
        while pending or any(queues.values()):
            now = time.perf_counter() - start
            while pending and pending[0].arrival_s <= now:
                request = pending.popleft()
                if sum(len(q) for q in queues.values()) >= self.max_queued:
                    self.refused.append(request.id)
                    continue
                queues.setdefault(request.variant, deque()).append(request)
            variant = pick_variant(queues, current, now, max_wait_ms=self.max_wait_ms)
            if variant is None:
                time.sleep(max(0.0, pending[0].arrival_s - now))
                continue
            queue = queues[variant]
            batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            called = time.perf_counter() - start
            result = self.backend.serve(variant, [r.prompt for r in batch], self.params)
            done = time.perf_counter() - start
            current = variant
            for request, ids in zip(batch, result.token_ids, strict=True):
                timings.append(VariantTiming(
                    request.id, variant, first_token_ms=(called - request.arrival_s) * 1e3 + result.first_token_ms,
                    turnaround_ms=(done - request.arrival_s) * 1e3, tokens=len(ids), token_ids=list(ids)))
        return timings


class ModelBackend:
    """One :class:`MoeModel` of a consolidated package, switching variants (edgecoe's way)."""

    def __init__(self, model: MoeModel) -> None:
        self.model = model
        self.generator = Generator(model)

    def serve(self, variant: str, prompts: Sequence[str], params: SamplingParams) -> Batch:
        self.model.use_variant(variant)
        result = self.generator.generate(list(prompts), params)
        return Batch(result.token_ids, result.report.ttft_ms)

    @property
    def switches(self) -> int:
        return self.model.variant_switches

    def close(self) -> None:
        self.model.close()
