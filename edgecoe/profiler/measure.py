"""Measurements on one processor: execution against batch size, loading from each
tier, resident footprint, memory per batch item. Experts of one architecture
are measured once, on a representative (docs/background.md)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecoe.errors import EdgecoeError, MeasurementError
from edgecoe.memory import (
    drop_page_cache,
    measure_footprint,
    process_memory_bytes,
    release_freed_memory,
)
from edgecoe.package import Package
from edgecoe.profile import ArchitectureCost, ProcessorProfile
from edgecoe.profiler.fit import fit_linear, largest_useful_batch
from edgecoe.providers import ProviderChoice, create_session

_SMALL_BATCH = 4  # batches up to this size are timed for B's sake, many times over
_SYMBOLIC_ITEM_DIM = 8  # size for a symbolic non-batch dim (sequence length) when measuring


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def batch_inputs(pkg: Package, expert: str, batch: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of ``batch`` items for an expert: constants where it is fed constants, zeros for a stream's
    state, else random values (in the spec's range) of the item shape export verified it with, stacked
    on each input's batch axis (an unbatched input given once)."""
    rng = np.random.default_rng(seed)
    record = pkg.experts[expert]
    state = {pair.input for pair in record.state}
    constants = pkg.manifest.constants
    feeds = {}
    for spec in record.inputs:
        axis = record.batch.axis(spec.name)
        dtype = np.dtype(spec.dtype)
        item_shape = record.item_shapes.get(spec.name) or [
            d if isinstance(d, int) else _SYMBOLIC_ITEM_DIM
            for i, d in enumerate(spec.shape) if axis is None or i != axis]
        feed = record.feeds.get(spec.name)
        if feed is not None and feed.const is not None and feed.const in constants:
            item = constants[feed.const].array()
        elif spec.name in state:
            item = np.zeros(item_shape, dtype=dtype)
        elif spec.name in record.value_ranges:
            low, high = record.value_ranges[spec.name]
            item = (rng.uniform(low, high, size=item_shape) if dtype.kind == "f"
                    else rng.integers(int(low), int(high), size=item_shape, endpoint=True)).astype(dtype)
        elif dtype.kind == "f":
            item = rng.standard_normal(item_shape).astype(dtype)
        else:
            item = rng.integers(0, 2, size=item_shape).astype(dtype)
        feeds[spec.name] = item if axis is None else np.stack([item] * batch, axis=axis)
    return feeds


def measure_architecture(
    pkg: Package, expert: str, processor: ProcessorProfile, choice: ProviderChoice, *,
    batches: list[int], repeats: int, threads: int, min_seconds: float = 0.0,
) -> ArchitectureCost:
    """Everything the runtime needs about one architecture on one processor.

    Raises:
        MeasurementError: the representative expert does not load or run.
    """
    record = pkg.experts[expert]
    model = pkg.model_path(expert)
    files = [pkg.root / f.path for f in [record.model, *record.external_data]]
    providers = choice.providers

    def create(source: Path | bytes = model, optimization: str = "all", save: Path | None = None):  # type: ignore[no-untyped-def]
        return create_session(source, providers=providers, optimization=optimization,  # type: ignore[arg-type]
                              save_optimized_to=save, intra_op_threads=threads)

    try:
        cold, warm = [], []
        for _ in range(repeats):
            for path in files:
                drop_page_cache(path)
            start = time.perf_counter()
            create()
            cold.append(_ms(start))
            start = time.perf_counter()
            create()
            warm.append(_ms(start))
        optimized_ms = _optimized_load_ms(pkg, expert, create, repeats, kind=processor.kind)
        footprint = measure_footprint(create)
        session = create()
    except EdgecoeError as exc:
        raise MeasurementError(f"expert {expert} ({record.architecture}) on {processor.id}: {exc}") from exc

    latency, memory_after = _latency_curve(session, pkg, expert, batches, repeats, min_seconds)
    sizes = sorted(latency)
    fit = fit_linear(sizes, [latency[n] for n in sizes]) if len(sizes) >= 2 else None
    item_bytes = 0
    if len(sizes) >= 2:
        item_bytes = max(0, (memory_after[sizes[-1]] - memory_after[sizes[0]]) // (sizes[-1] - sizes[0]))
    return ArchitectureCost(
        k_ms=fit.k_ms if fit else latency[sizes[0]], b_ms=fit.b_ms if fit else 0.0,
        max_batch=largest_useful_batch(sizes, [latency[n] for n in sizes]),
        load_ms=statistics.median(cold), host_load_ms=None, footprint_bytes=max(footprint or 0, record.total_bytes),
        item_bytes=item_bytes, fit_max_rel_error=fit.max_rel_error if fit else None,
        latency_ms={n: round(latency[n], 4) for n in sizes}, load_cold_ms=statistics.median(cold),
        load_warm_ms=statistics.median(warm), load_optimized_ms=optimized_ms, representative=expert,
    )


def _latency_curve(
    session: Any, pkg: Package, expert: str, batches: list[int], repeats: int, min_seconds: float,
) -> tuple[dict[int, float], dict[int, int]]:
    """Best-of latency per batch size, and process memory after each size's first run.

    NOTE: the batch sizes are timed in interleaved rounds (1, 2, ..., 32, 1,
    2, ...), not one size after the other: on a shared VM the machine's speed
    drifts over seconds, and timing each size in its own stretch of time put
    that drift into the curve's shape, so B (the intercept, ~10 % of batch-1
    latency) moved 25-99 % between two profiles. Interleaved, every size sees
    the same phases and the minimum of each is comparable.

    Raises:
        MeasurementError: the smallest batch does not run. A larger batch
        that fails (memory) ends the curve before it.
    """
    release_freed_memory()
    limit = pkg.experts[expert].batch.max
    batches = [n for n in batches if limit is None or n <= limit] or [1]  # a fixed batch is all it runs
    feeds: dict[int, dict[str, np.ndarray]] = {}
    memory_after: dict[int, int] = {}
    for n in batches:
        inputs = batch_inputs(pkg, expert, n)
        try:
            session.run(None, inputs)  # warm-up: first runs allocate
        except Exception as exc:
            if n == batches[0]:
                raise MeasurementError(f"expert {expert} does not run a batch of {n}: {exc}") from exc
            break  # a batch this large does not run here (memory): the curve ends before it
        feeds[n] = inputs
        memory_after[n] = process_memory_bytes()
    samples: dict[int, list[float]] = {n: [] for n in feeds}
    large_rounds = max(3, repeats)
    began, round_ = time.perf_counter(), 0
    # Small batches decide B and are cheap: they get rounds until both a count
    # and a time floor are met, so their minimum has seen the machine's fast phases.
    while round_ < max(10, 2 * repeats) or (time.perf_counter() - began < min_seconds and round_ < 500):
        for n, inputs in feeds.items():
            if n > _SMALL_BATCH and round_ >= large_rounds:
                continue
            start = time.perf_counter()
            session.run(None, inputs)
            samples[n].append(_ms(start))
        round_ += 1
    # NOTE: the minimum, not the median: interference only ever adds time,
    # and the minimum repeated best between two profiles of one machine.
    return {n: min(s) for n, s in samples.items()}, memory_after


def measure_host_load_ms(pkg: Package, expert: str, choice: ProviderChoice, *, repeats: int, threads: int) -> float:
    """Session creation from model bytes already in host memory (the NUMA host tier)."""
    data = pkg.model_path(expert).read_bytes()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        create_session(data, providers=choice.providers, intra_op_threads=threads)  # type: ignore[arg-type]
        samples.append(_ms(start))
    return statistics.median(samples)


def _optimized_load_ms(pkg: Package, expert: str, create, repeats: int, *, kind: str) -> float | None:  # type: ignore[no-untyped-def]
    """Creation time from an ORT-optimized model with optimization off (docs/background.md: 22 -> 6 ms).

    On CPU, the runtime's optimized-model cache path (level "all", saved on
    this machine); elsewhere the package's portable copy, or one made at level
    "extended" like the export makes.
    """
    record = pkg.experts[expert]
    with tempfile.TemporaryDirectory(prefix="edgecoe-profile-") as tmp:
        if record.external_data:
            return None  # an optimized copy would need its weights beside it; not measured
        if kind == "cpu":
            path = Path(tmp) / "optimized.onnx"
            create(pkg.model_path(expert), "all", path)
        elif record.optimized is not None:
            path = pkg.root / record.optimized.path
        else:
            path = Path(tmp) / "optimized.onnx"
            create_session(pkg.model_path(expert), optimization="extended", save_optimized_to=path)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            create(path, "none")
            samples.append(_ms(start))
    return statistics.median(samples)
