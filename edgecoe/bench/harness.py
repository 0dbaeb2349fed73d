"""Side-by-side comparison: several policies on one trace, one budget, one set of
footprints, in one run; results as ratios (these machines are noisy).

Real mode runs the runtime; simulated mode runs :func:`edgecoe.sim.simulate`
with a device profile's costs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from edgecoe.config import RuntimeConfig
from edgecoe.devicemem import drop_cached_pages, sessions_under_device_memory
from edgecoe.engine import apply_budget
from edgecoe.errors import InvalidInputError
from edgecoe.loaders.simulated import CostModelLoader
from edgecoe.package import Package
from edgecoe.profile import DeviceProfile, default_profile
from edgecoe.results import Report, machine_info
from edgecoe.runtime import Runtime
from edgecoe.sched.cost import default_architecture_cost
from edgecoe.sched.presets import get_bench_entry
from edgecoe.timeline import Timeline
from edgecoe.transforms import Transform
from edgecoe.workload import Workload

SUSPECT_MARGIN = 0.02
"""How far above the all-resident bound an entry may measure before it is flagged: real runs
on this kind of machine vary by a few per cent; simulated ones should never exceed it at all."""


def entry_config(name: str, budget_bytes: int | None, all_bytes: int) -> RuntimeConfig:
    """The runtime configuration behind a bench entry name (see ``BENCH_ENTRIES``).

    Args:
        budget_bytes: the bench's expert budget on every processor; None: each
            processor's own budget from the profile.
        all_bytes: a budget that holds every expert (for the all-resident bound).

    Raises:
        InvalidInputError: unknown name, listing the valid ones.
    """
    try:
        entry = get_bench_entry(name)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    config = RuntimeConfig(policy=entry.policy, budget=all_bytes if entry.all_resident else budget_bytes)
    return replace(config, **dict(entry.overrides))  # type: ignore[arg-type]


@dataclass
class BenchResult:
    """Reports per entry, with the ratios the bench prints."""

    package: str
    trace: dict[str, object]
    budget_bytes: int
    total_footprint_bytes: int
    simulated: bool
    reports: dict[str, Report] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=machine_info)

    def ratio(self, entry: str, baseline: str) -> float | None:
        base = self.reports.get(baseline)
        mine = self.reports.get(entry)
        if base is None or mine is None or base.throughput_rps <= 0:
            return None
        return mine.throughput_rps / base.throughput_rps

    def suspect(self, entry: str) -> bool:
        """An entry faster than the all-resident bound (beyond measurement noise): its figure, or the
        bound's, is not what it claims to be."""
        ratio = self.ratio(entry, "all-resident")
        return entry != "all-resident" and ratio is not None and ratio > 1.0 + SUSPECT_MARGIN

    def to_dict(self) -> dict[str, object]:
        entries = {}
        for name, report in self.reports.items():
            samba = self.reports.get("samba")
            entries[name] = {
                "throughput_rps": report.throughput_rps,
                "num_switches": report.num_switches,
                "latency_ms": report.latency_ms,
                "num_completed": report.num_completed,
                "num_failed": report.num_failed,
                "ratio_vs_samba": self.ratio(name, "samba"),
                "ratio_vs_all_resident": self.ratio(name, "all-resident"),
                "switches_vs_samba": (report.num_switches / samba.num_switches
                                      if samba is not None and samba.num_switches else None),
                "suspect": self.suspect(name),
                "storage_read_bytes": report.storage_read_bytes,
                "goodput_rps": report.goodput_rps,
                "report": report.to_dict(),
            }
        return {"package": self.package, "trace": self.trace, "budget_bytes": self.budget_bytes,
                "total_footprint_bytes": self.total_footprint_bytes, "simulated": self.simulated,
                "machine": self.machine, "entries": entries}


def shared_profile(pkg: Package, profile: DeviceProfile | None, budget: str | int) -> tuple[DeviceProfile, int, int]:
    """A profile whose footprints are fixed for every entry, and the budget in bytes.

    Footprints come from the profile where it has them; otherwise they are
    measured once here, so every entry sees the same bytes.

    Returns:
        (the profile with footprints and budgets set, the budget in bytes, all experts' footprint in bytes).
    """
    from edgecoe.loaders.session import SessionLoader

    base = profile or default_profile()
    kind = base.processors[0].kind
    archs = {e.architecture: n for n, e in pkg.experts.items()}
    missing = [a for a in archs if not _footprint_known(base, a, kind)]
    footprints: dict[str, int] = {}
    if missing:
        probe = SessionLoader(pkg, base, RuntimeConfig(policy="samba", preload=False))
        footprints = {a: probe.footprint_bytes(archs[a]) for a in missing}
    costs = {arch: dict(by_kind) for arch, by_kind in base.costs.items()}
    for arch, size in footprints.items():
        current = base.cost(arch, kind)
        costs.setdefault(arch, {})[kind] = (current.model_copy(update={"footprint_bytes": size}) if current else
                                            default_architecture_cost(pkg.experts[archs[arch]].total_bytes, size))
    fixed = base.model_copy(update={"costs": costs})
    total = sum(CostModelLoader(pkg.manifest, fixed.model_copy(update={"processors": fixed.processors[:1]}))
                .footprint_bytes(n) for n in pkg.experts)
    return _with_budget(fixed, budget, total)


def _footprint_known(profile: DeviceProfile, architecture: str, kind: str) -> bool:
    cost = profile.cost(architecture, kind)
    return cost is not None and bool(cost.footprint_bytes)


def _with_budget(profile: DeviceProfile, budget: str | int | None, total: int) -> tuple[DeviceProfile, int, int]:
    budgeted = apply_budget(profile, budget, total_bytes=total)
    return budgeted, budgeted.processors[0].budget_bytes, total


def run_bench(
    pkg: Package, trace: Workload, *, entries: list[str], budget: str | int | None = "25%",
    profile: DeviceProfile | None = None, simulate: bool = False, seed: int = 0,
    num_executors: int | None = None, on_report: Callable[[str, Report], None] | None = None,
    timelines: dict[str, Timeline] | None = None, on_warm: Callable[[int, int], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    device_memory: int | Literal["auto"] | None = None, slo_ms: float | None = None,
    transforms: Mapping[str, Transform] | None = None,
) -> BenchResult:
    """Run every entry on the same trace and budget; see :func:`entry_config`.

    Args:
        budget: the expert budget on every processor (bytes, a size, a share of every
            expert's footprint); None (simulated): each processor's budget from the profile.
        device_memory: real mode: run each entry under a memory limit that counts the page cache
            (:mod:`edgecoe.devicemem`), in bytes or ``"auto"`` (the expert budget plus the
            runtime's fixed overhead); every entry starts with no expert file cached. The
            all-resident bound runs without the limit (it stands for a device that holds
            every expert) but starts cold too.
        slo_ms: a latency objective: every report gives goodput (requests within it per second).
        transforms: the functions for the transforms the package names (every entry gets them).
        on_report: called with each entry's report as it finishes.
        on_warm: progress of warming the optimized-model cache (experts done, all).
        on_progress: progress of a real entry (entry, requests finished, requests).

    Raises:
        InvalidInputError: an unknown entry, or simulated mode without a profile with costs.
    """
    for name in entries:
        entry_config(name, 1, 1)  # validate names before anything runs
    if simulate and device_memory is not None:
        raise InvalidInputError("--device-memory limits real serving; a simulation reads no storage")
    if simulate:
        if profile is None:
            raise InvalidInputError("simulated bench needs a device profile with per-architecture costs")
        fixed, budget_bytes, total = _sim_profile(pkg, profile, budget)
    elif budget is None:
        raise InvalidInputError("a real bench needs one expert budget (the profile's budgets are for simulation)")
    else:
        fixed, budget_bytes, total = shared_profile(pkg, profile, budget)
    if not simulate:
        from edgecoe.loaders.session import SessionLoader

        # Every entry starts from the same warm optimized-model cache, as a deployed runtime does.
        SessionLoader(pkg, fixed, RuntimeConfig(policy="samba", preload=False)).warm_optimized_cache(on_warm)
    result = BenchResult(package=pkg.name, trace=dict(trace.header.generator) | {"num_requests": len(trace)},
                         budget_bytes=budget_bytes, total_footprint_bytes=total, simulated=simulate)
    for name in entries:
        # batches have their own memory: total holds all
        config = entry_config(name, None if budget is None else budget_bytes, total)
        if num_executors is not None:
            config = replace(config, num_executors=num_executors)
        if slo_ms is not None:
            config = replace(config, slo_ms=slo_ms)
        timeline = None
        if timelines is not None:
            timeline = timelines[name] = Timeline()
        if simulate:
            from edgecoe.sim import simulate as run_sim

            report = run_sim(pkg.manifest, fixed, trace, config=config, seed=seed, timeline=timeline)
        else:
            if on_progress is not None:
                on_progress(name, 0, len(trace))  # start-up (preload) can take seconds
            if device_memory is None:
                with Runtime(pkg, config=config, profile=fixed, timeline=timeline, transforms=transforms) as runtime:
                    report = runtime.run(trace, progress=_for_entry(on_progress, name))
            else:
                report = _run_limited(pkg, trace, config, fixed, device_memory, timeline=timeline,
                                      bound=get_bench_entry(name).all_resident,
                                      progress=_for_entry(on_progress, name), transforms=transforms)
        report.policy = name
        result.reports[name] = report
        if on_report:
            on_report(name, report)
    return result


def _run_limited(pkg: Package, trace: Workload, config: RuntimeConfig, profile: DeviceProfile,
                 device_memory: int | Literal["auto"], *, timeline: Timeline | None, bound: bool,
                 progress: Callable[[int, int], None] | None,
                 transforms: Mapping[str, Transform] | None = None) -> Report:
    """One real entry under a device memory limit (the bound: cold, but with no limit)."""
    if bound:
        from edgecoe.loaders.session import SessionLoader

        loader = SessionLoader(pkg, profile, config)
        drop_cached_pages(loader.all_files())
        with Runtime(pkg, config=config, profile=profile, timeline=timeline, loader=loader,
                     transforms=transforms) as runtime:
            report = runtime.run(trace, progress=progress)
        report.device_memory = {"mechanism": "none", "limit_bytes": None,
                                "note": "the all-resident bound: a device that holds every expert (starts cold)"}
        return report
    with sessions_under_device_memory(pkg, profile, config, device_memory) as (limited, device):
        with Runtime(pkg, config=config, profile=profile, timeline=timeline, loader=limited,
                     transforms=transforms) as runtime:
            report = runtime.run(trace, progress=progress)
        report.device_memory = device.describe()
    return report


def _for_entry(on_progress: Callable[[str, int, int], None] | None,
               name: str) -> Callable[[int, int], None] | None:
    if on_progress is None:
        return None
    return lambda done, total: on_progress(name, done, total)


def _sim_profile(pkg: Package, profile: DeviceProfile, budget: str | int | None) -> tuple[DeviceProfile, int, int]:
    loader = CostModelLoader(pkg.manifest, profile)
    return _with_budget(profile, budget, sum(loader.footprint_bytes(n) for n in pkg.experts))


@dataclass
class RepeatedBench:
    """The same bench run several times: each seed's trace ``repeat`` times, side by side.

    Ratios are taken within each run (an entry against the samba and all-resident of the
    same run, same trace), then summarised: medians, [min, max] ranges, the number of runs.
    """

    runs: list[tuple[int, int, BenchResult]] = field(default_factory=list)  # (seed, repeat, result)

    @property
    def first(self) -> BenchResult:
        return self.runs[0][2]

    def summary(self) -> dict[str, dict[str, object]]:
        """Per entry: medians of throughput, each ratio, switches and latency, with ranges."""
        out: dict[str, dict[str, object]] = {}
        per_run = [result.to_dict()["entries"] for _, _, result in self.runs]  # each run's rows, built once
        for name in self.first.reports:
            rows = [entries[name] for entries in per_run if name in entries]  # type: ignore[operator,index]
            entry: dict[str, object] = {"num_runs": len(rows)}
            for key in ("throughput_rps", "ratio_vs_samba", "ratio_vs_all_resident", "switches_vs_samba",
                        "num_switches", "num_completed", "num_failed", "storage_read_bytes", "goodput_rps"):
                values = [float(r[key]) for r in rows if r.get(key) is not None]
                entry[key] = statistics.median(values) if values else None
                entry[f"{key}_range"] = [min(values), max(values)] if values else None
            entry["latency_ms"] = {q: statistics.median(float(r["latency_ms"][q]) for r in rows)
                                   for q in rows[0]["latency_ms"]}
            entry["suspect"] = any(bool(r["suspect"]) for r in rows)
            entry["report"] = rows[0]["report"]  # the first run's whole report
            out[name] = entry
        return out

    def to_dict(self) -> dict[str, object]:
        first = self.first.to_dict()
        return {**{k: v for k, v in first.items() if k != "entries"},
                "seeds": sorted({seed for seed, _, _ in self.runs}),
                "repeat": max(r for _, r, _ in self.runs) + 1,
                "entries": self.summary(),
                "runs": [{"seed": seed, "repeat": r, **result.to_dict()} for seed, r, result in self.runs]}
