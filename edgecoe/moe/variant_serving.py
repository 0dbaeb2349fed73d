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

:class:`VariantBatcher` is the same grouping at the granularity of steps:
continuous batching (decode steps batched, prefills interleaved) per variant,
the model switching between the variants' running batches.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edgecoe.errors import InvalidInputError
from edgecoe.moe.batching import BatchingParams, ContinuousBatcher
from edgecoe.moe.generate import Generator, SamplingParams, TokenEvent
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


class VariantBatcher:
    """Continuous batching across a consolidated package's variants on one model.

    One :class:`~edgecoe.moe.batching.ContinuousBatcher` (its own queue, running batch and KV
    cache) per variant, all on one model; each :meth:`step` switches the model to one variant and
    steps that variant's batcher. Which variant: the one being served while it has work and no
    other variant with work has gone unserved for longer than ``max_wait_ms``; otherwise the one
    unserved the longest. Sequences of other variants keep their KV caches and resume where they
    stopped.
    """

    def __init__(self, generator: Generator, params: SamplingParams | None = None,
                 batching: BatchingParams | None = None, *, max_wait_ms: float = 2000.0) -> None:
        variants = generator.model.manifest.variants
        if not variants:
            raise InvalidInputError("the model's package has no variants; use ContinuousBatcher")
        if max_wait_ms < 0:
            raise InvalidInputError(f"max_wait_ms={max_wait_ms} must be >= 0")
        self.model = generator.model
        self.batchers = {v.name: ContinuousBatcher(generator, params, batching) for v in variants}
        self.max_wait_ms = max_wait_ms
        self.current: str | None = None
        self._since: dict[str, float] = {}  # variant -> when it last ran, or got work while idle

    def submit(self, variant: str, prompt: str | Sequence[int]) -> int:
        """Queue ``prompt`` for ``variant``; its request id within that variant's batcher.

        Raises:
            InvalidInputError: no such variant, or the variant's batcher refuses the prompt.
        """
        batcher = self.batchers.get(variant)
        if batcher is None:
            raise InvalidInputError(f"no variant {variant!r}; the package has {', '.join(self.batchers)}")
        if batcher.idle:
            self._since[variant] = time.perf_counter()
        return batcher.submit(prompt)

    @property
    def idle(self) -> bool:
        return all(b.idle for b in self.batchers.values())

    def _pick(self, now: float) -> str | None:
        busy = [v for v, b in self.batchers.items() if not b.idle]
        if not busy:
            return None
        longest = min(busy, key=lambda v: (self._since.get(v, now), v))
        if self.current in busy and longest != self.current:
            waited_ms = (now - self._since.get(longest, now)) * 1e3
            return longest if waited_ms > self.max_wait_ms else self.current
        return self.current if self.current in busy else longest

    def step(self) -> tuple[str | None, list[TokenEvent]]:
        """One step of one variant's batcher: (the variant, its events); (None, []) when idle."""
        variant = self._pick(time.perf_counter())
        if variant is None:
            return None, []
        self.model.use_variant(variant)
        self.current = variant
        events = self.batchers[variant].step()
        self._since[variant] = time.perf_counter()
        return variant, events

    def run(self) -> dict[str, list[TokenEvent]]:
        """Step until every variant's batcher is idle; each variant's events."""
        out: dict[str, list[TokenEvent]] = {v: [] for v in self.batchers}
        while not self.idle:
            variant, events = self.step()
            if variant is not None:
                out[variant] += events
        return out
