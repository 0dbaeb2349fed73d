"""``edgecoe profile``: measure a package on a device and decide the allocation.

1. Per architecture on each processor: latency against batch size (K, B,
   fit error, largest useful batch, memory per item), loading cold / warm /
   from host memory / from an optimized copy, resident footprint.
2. The fast processor's resident set: CoServe's decay-window search over the
   number of most-likely experts kept resident, measuring the runtime's
   throughput on a sample workload at each point.
3. Executors per processor: the sample workload at 1..N executors.
4. The slow processor (CPU, beside an accelerator) reserves memory for its
   largest batch and gives the rest to experts.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import onnxruntime as ort

from edgecoe.config import RuntimeConfig
from edgecoe.errors import InvalidInputError
from edgecoe.memory import available_memory_bytes, total_memory_bytes
from edgecoe.package import Package
from edgecoe.profile import (
    Allocation,
    AllocationStep,
    ArchitectureCost,
    DeviceInfo,
    DeviceProfile,
    ProcessorProfile,
)
from edgecoe.profiler.fit import decay_window_search
from edgecoe.profiler.measure import measure_architecture, measure_host_load_ms
from edgecoe.providers import choose_providers
from edgecoe.runtime import Runtime
from edgecoe.transforms import Transform
from edgecoe.workload import Workload, generate_workload

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class ProfileSettings:
    """How much to measure.

    Attributes:
        batches: batch sizes for the latency curve.
        repeats: repetitions per timing (medians are kept).
        curve_seconds: least time spent timing the small batches of one
            architecture's latency curve (B's precision comes from it).
        sample_requests: requests in the sample workload for allocation.
        max_executors: executor counts tried: 1..max_executors.
        initial / margin: the decay-window search's parameters (paper: 15, 5 %).
        memory_limit_bytes: memory experts may use on the device (default: half
            of available host memory, or the GPU's memory minus 10 %).
        search: run the allocation search (off: budget = memory limit).
        check_largest: check the search's stop against the largest resident
            set (see :func:`~edgecoe.profiler.fit.decay_window_search`).
        workload: the sample the allocation serves (default: one generated from the package,
            which needs static input shapes; a trace of real inputs for packages of published models).
        transforms: the functions for the transforms the package names.
    """

    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    repeats: int = 5
    curve_seconds: float = 2.0
    sample_requests: int = 400
    max_executors: int = 3
    initial: int = 15
    margin: float = 0.05
    memory_limit_bytes: int | None = None
    search: bool = True
    check_largest: bool = True
    workload: Workload | None = None
    transforms: Mapping[str, Transform] | None = None

    @classmethod
    def quick(cls, **overrides: object) -> ProfileSettings:
        """Settings that profile pcb-small in well under a minute (CI)."""
        base = {"batches": (1, 2, 4, 8), "repeats": 2, "curve_seconds": 0.0, "sample_requests": 150, "max_executors": 2, "initial": 4}
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]


def device_info(device: str) -> DeviceInfo:
    device_memory = None
    if device.startswith("cuda:"):
        from edgecoe.memory import cuda_total_memory_bytes

        device_memory = cuda_total_memory_bytes(int(device.split(":")[1]))
    return DeviceInfo(
        machine=platform.machine(), cpu_count=os.cpu_count() or 1, host_memory_bytes=total_memory_bytes(),
        device_memory_bytes=device_memory, onnxruntime=ort.__version__, providers=ort.get_available_providers(),
        processor_name=_processor_name(),
    )


def _processor_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def check_device(device: str) -> None:
    """Raises InvalidInputError unless ``device`` is cpu, cuda:N or coreml."""
    index = device.partition(":")[2]
    if device not in ("cpu", "coreml") and not (device.startswith("cuda:") and index.isdigit()):
        raise InvalidInputError(f"--device {device!r}: expected cpu, cuda:N or coreml")


def profile_package(
    pkg: Package, *, device: str = "cpu", name: str | None = None, settings: ProfileSettings | None = None,
    progress: Progress | None = None,
) -> DeviceProfile:
    """Measure ``pkg`` on ``device`` and return a complete device profile.

    Raises:
        InvalidInputError: unknown device or its provider is missing.
        MeasurementError: an expert cannot be measured.
    """
    settings = settings or ProfileSettings()
    check_device(device)
    info = device_info(device)
    memory: Literal["uma", "numa"] = "numa" if device.startswith("cuda:") else "uma"
    limit = settings.memory_limit_bytes or _default_limit(device, info)
    fast = ProcessorProfile(id=device, budget_bytes=limit, num_executors=1)
    processors = [fast] if device == "cpu" else [fast, ProcessorProfile(id="cpu", budget_bytes=limit)]
    today = dt.date.today().isoformat()
    source = f"measured {today} on {info.processor_name or info.machine} ({info.cpu_count} cores)"

    # 1. per architecture x processor
    representatives: dict[str, str] = {}
    for expert, record in pkg.experts.items():
        representatives.setdefault(record.architecture, expert)
    costs: dict[str, dict[str, ArchitectureCost]] = {}
    sources: dict[str, str] = {}
    total = len(representatives) * len(processors)
    done = 0
    for processor in processors:
        choice = choose_providers(processor)
        threads = max(1, info.cpu_count // 2) if processor.kind == "cpu" else 0
        for arch, expert in sorted(representatives.items()):
            if progress:
                progress(f"measuring {arch} on {processor.id}", done, total)
            cost = measure_architecture(pkg, expert, processor, choice, batches=list(settings.batches),
                                        repeats=settings.repeats, threads=threads,
                                        min_seconds=settings.curve_seconds)
            if memory == "numa":
                host_ms = measure_host_load_ms(pkg, expert, choice, repeats=settings.repeats, threads=threads)
                cost = cost.model_copy(update={"host_load_ms": host_ms})
            costs.setdefault(arch, {})[processor.kind] = cost
            sources[f"costs.{arch}.{processor.kind}"] = source
            done += 1
    profile = DeviceProfile(
        name=name or f"{pkg.name}-{device.replace(':', '')}", memory=memory,
        host_budget_bytes=(available_memory_bytes() // 2) if memory == "numa" else None,
        processors=processors, costs=costs, sources=sources, device=info, created=today,
    )
    if progress:
        progress("measured architectures", total, total)

    # 2. + 3. allocation on the fast processor, then executors
    allocation = _allocate(pkg, profile, settings, progress)
    # 4. the slow processor keeps room for its largest batch
    processors = []
    for processor in profile.processors:
        if processor.id == device:
            processors.append(processor.model_copy(update={
                "budget_bytes": allocation.budget_bytes,
                "num_executors": allocation.num_executors.get(processor.id, 1)}))
        else:
            reserve = max((c.max_batch * c.item_bytes for a in costs.values() for k, c in a.items()
                           if k == processor.kind), default=0)
            processors.append(processor.model_copy(update={"budget_bytes": max(1, processor.budget_bytes - reserve)}))
    sources["allocation"] = source
    return profile.model_copy(update={"processors": processors, "allocation": allocation, "sources": sources})


def _default_limit(device: str, info: DeviceInfo) -> int:
    if device.startswith("cuda:") and info.device_memory_bytes:
        return int(info.device_memory_bytes * 0.9)
    return available_memory_bytes() // 2


def _allocate(pkg: Package, profile: DeviceProfile, settings: ProfileSettings, progress: Progress | None) -> Allocation:
    fast = profile.processors[0]
    kind = fast.kind
    ranked = sorted(pkg.experts, key=lambda n: (-pkg.experts[n].usage_probability, n))
    footprints = [profile.costs[pkg.experts[n].architecture][kind].footprint_bytes or pkg.experts[n].total_bytes
                  for n in ranked]
    largest = max(footprints)
    cumulative = []
    running = 0
    for size in footprints:
        running += size
        cumulative.append(running)
    fits = [n for n in range(1, len(ranked) + 1) if max(cumulative[n - 1], largest) <= fast.budget_bytes]
    if not fits:
        raise InvalidInputError(
            f"no expert fits the memory limit of {fast.budget_bytes} bytes on {fast.id} (largest needs {largest})")
    max_n = fits[-1]
    # The sample follows the package's declared distribution order (zipf 1.1 over it).
    trace = settings.workload or generate_workload(pkg.manifest, num_requests=settings.sample_requests,
                                                   dist="zipf:1.1", seed=7)
    steps: list[AllocationStep] = []

    def budget_for(n: int) -> int:
        # Room for the n most likely experts, and never less than the largest expert.
        return max(cumulative[n - 1], largest) + 1

    def throughput(n: int, executors: int) -> float:
        """Mean of two passes over the sample (the first pass also warms ORT's allocators)."""
        cfg = RuntimeConfig(policy="edgecoe", budget=budget_for(n), num_executors=executors)
        with Runtime(pkg, config=cfg, profile=profile, transforms=settings.transforms) as runtime:
            return (runtime.run(trace).throughput_rps + runtime.run(trace).throughput_rps) / 2

    def best_executors(n: int) -> tuple[int, dict[int, float]]:
        by_count: dict[int, float] = {}
        for count in range(1, settings.max_executors + 1):
            if progress:
                progress(f"executors: {count} with {n} experts resident", count - 1, settings.max_executors)
            by_count[count] = round(throughput(n, count), 3)
        top = max(by_count.values())
        # fewest executors within the margin of the best: extra threads cost memory and contention
        return min(c for c, t in by_count.items() if t >= top / (1.0 + settings.margin)), by_count

    # Executors first (at the largest resident set), so the search measures
    # the configuration that will run; re-checked at the chosen size below.
    search_executors, _ = best_executors(max_n)
    predictions: dict[int, float] = {}

    def measure(n: int) -> float:
        if progress:
            progress(f"allocation: {n} experts resident", len(steps), max(len(steps) + 1, 6))
        value = throughput(n, search_executors)
        steps.append(AllocationStep(num_resident=n, budget_bytes=budget_for(n), throughput_rps=round(value, 3),
                                    predicted_rps=predictions.get(n)))
        return value

    if settings.search:
        search = decay_window_search(measure, max_n=max_n, initial=min(settings.initial, max_n),
                                     margin=settings.margin, check_largest=settings.check_largest)
        predictions.update(search.predictions)
        steps = [s.model_copy(update={"predicted_rps": round(predictions[s.num_resident], 3)})
                 if s.num_resident in predictions else s for s in steps]
        chosen, reason = search.chosen, search.stop_reason
    else:
        chosen, reason = max_n, "search off: every expert that fits"
    executors, by_executors = best_executors(chosen)
    return Allocation(package=pkg.name, num_resident=chosen, budget_bytes=budget_for(chosen),
                      num_executors={fast.id: executors}, search=steps, stop_reason=reason,
                      executor_throughput_rps=by_executors)
