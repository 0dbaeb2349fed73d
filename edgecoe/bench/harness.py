"""Side-by-side comparison: several policies on one trace, one budget, one set of
footprints, in one run; results as ratios (these machines are noisy).

Real mode runs the runtime; simulated mode runs :func:`edgecoe.sim.simulate`
with a device profile's costs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from edgecoe.config import RuntimeConfig, parse_budget
from edgecoe.errors import InvalidInputError
from edgecoe.package import Package
from edgecoe.profiler.schema import DeviceProfile
from edgecoe.results import Report, machine_info
from edgecoe.runtime import Runtime, default_profile
from edgecoe.sched.cost import default_architecture_cost
from edgecoe.timeline import Timeline
from edgecoe.workload import Workload

#: Bench entries beyond the presets: an eviction reference and the upper bound.
EXTRA_ENTRIES = ("belady", "all-resident")
DEFAULT_POLICIES = ("samba", "samba-fifo", "samba-parallel", "coserve", "edgecoe", "belady", "all-resident")
#: The paper's ablation order, ending with ours.
ABLATION = ("none", "+expert-management", "+arranging", "+assigning", "+prefetch")


def entry_config(name: str, budget_bytes: int, all_bytes: int) -> RuntimeConfig:
    """The runtime configuration behind a bench entry name.

    Raises:
        InvalidInputError: unknown name.
    """
    base = RuntimeConfig(budget=budget_bytes)
    presets = {"samba", "samba-fifo", "samba-parallel", "coserve", "edgecoe"}
    if name in presets:
        return replace(base, policy=name)
    if name == "belady":  # edgecoe scheduling with the offline-optimal eviction, as a reference
        return replace(base, policy="edgecoe", eviction="belady")
    if name == "all-resident":  # every expert preloaded, nothing ever switched: the upper bound
        return replace(base, policy="edgecoe", budget=all_bytes, preload=True)
    ablation = {
        "none": replace(base, policy="samba-parallel"),
        "+expert-management": replace(base, policy="samba-parallel", eviction="coserve", preload=True),
        "+arranging": replace(base, policy="samba-parallel", eviction="coserve", preload=True, scheduler="arrange"),
        "+assigning": replace(base, policy="coserve"),
        "+prefetch": replace(base, policy="coserve", prefetch=True),
    }
    if name in ablation:
        return ablation[name]
    valid = ", ".join([*sorted(presets), *EXTRA_ENTRIES, *ABLATION])
    raise InvalidInputError(f"unknown bench entry {name!r}; valid: {valid}")


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
                "report": report.to_dict(),
            }
        return {"package": self.package, "trace": self.trace, "budget_bytes": self.budget_bytes,
                "total_footprint_bytes": self.total_footprint_bytes, "simulated": self.simulated,
                "machine": self.machine, "entries": entries}


def shared_profile(pkg: Package, profile: DeviceProfile | None, budget: str | int) -> tuple[DeviceProfile, int, int]:
    """A profile whose footprints are fixed for every entry, and the budget in bytes.

    Footprints come from the profile where it has them; otherwise they are
    measured once here, so every entry sees the same bytes.
    """
    base = profile or default_profile()
    kind = base.processors[0].kind
    archs = {e.architecture: n for n, e in pkg.experts.items()}
    footprints: dict[str, int] = {}
    missing = [a for a in archs if not (base.cost(a, kind) and base.cost(a, kind).footprint_bytes)]  # type: ignore[union-attr]
    if missing:
        probe = Runtime(pkg, config=RuntimeConfig(policy="samba", budget="100%", preload=False), profile=base)
        try:
            footprints = {a: probe.footprint(archs[a]) for a in missing}
        finally:
            probe.close()
    costs = {arch: dict(by_kind) for arch, by_kind in base.costs.items()}
    for arch, size in footprints.items():
        current = base.cost(arch, kind)
        costs.setdefault(arch, {})[kind] = (current.model_copy(update={"footprint_bytes": size}) if current else
                                            default_architecture_cost(pkg.experts[archs[arch]].total_bytes, size))
    fixed = base.model_copy(update={"costs": costs})
    total = sum((fixed.cost(e.architecture, kind).footprint_bytes or e.total_bytes)  # type: ignore[union-attr]
                for e in pkg.experts.values())
    budget_bytes = parse_budget(budget, total_bytes=total)
    processors = [p.model_copy(update={"budget_bytes": budget_bytes}) for p in fixed.processors]
    return fixed.model_copy(update={"processors": processors}), budget_bytes, total


def run_bench(
    pkg: Package, trace: Workload, *, entries: list[str], budget: str | int = "25%",
    profile: DeviceProfile | None = None, simulate: bool = False, seed: int = 0,
    num_executors: int | None = None, on_report: Callable[[str, Report], None] | None = None,
    timelines: dict[str, Timeline] | None = None,
) -> BenchResult:
    """Run every entry on the same trace and budget; see :func:`entry_config`.

    Raises:
        InvalidInputError: an unknown entry, or simulated mode without a profile with costs.
    """
    if simulate and profile is None:
        raise InvalidInputError("simulated bench needs a device profile with per-architecture costs")
    for name in entries:
        entry_config(name, 1, 1)  # validate names before anything runs
    fixed, budget_bytes, total = shared_profile(pkg, profile, budget) if not simulate else _sim_profile(
        pkg, profile, budget)  # type: ignore[arg-type]
    if not simulate:
        # Every entry starts from the same warm optimized-model cache, as a deployed runtime does.
        with Runtime(pkg, config=RuntimeConfig(policy="samba", budget=total + 1, preload=False),
                     profile=fixed) as probe:
            probe.warm_optimized_cache()
    result = BenchResult(package=pkg.name, trace=dict(trace.header.generator) | {"num_requests": len(trace)},
                         budget_bytes=budget_bytes, total_footprint_bytes=total, simulated=simulate)
    for name in entries:
        config = entry_config(name, budget_bytes, total + 1)
        if num_executors is not None:
            config = replace(config, num_executors=num_executors)
        timeline = None
        if timelines is not None:
            timeline = timelines[name] = Timeline()
        if simulate:
            from edgecoe.sim import simulate as run_sim

            report = run_sim(pkg.manifest, fixed, trace, config=config, seed=seed, timeline=timeline)
        else:
            with Runtime(pkg, config=config, profile=fixed, timeline=timeline) as runtime:
                report = runtime.run(trace)
        report.policy = name
        result.reports[name] = report
        if on_report:
            on_report(name, report)
    return result


def _sim_profile(pkg: Package, profile: DeviceProfile, budget: str | int) -> tuple[DeviceProfile, int, int]:
    kind = profile.processors[0].kind
    total = 0
    for record in pkg.experts.values():
        cost = profile.cost(record.architecture, kind)
        if cost is None:
            raise InvalidInputError(f"profile {profile.name} has no {kind} costs for architecture {record.architecture!r}")
        total += cost.footprint_bytes or record.total_bytes
    budget_bytes = parse_budget(budget, total_bytes=total)
    first = profile.processors[0].model_copy(update={"budget_bytes": budget_bytes})
    return profile.model_copy(update={"processors": [first, *profile.processors[1:]]}), budget_bytes, total


def processors_summary(profile: DeviceProfile) -> str:
    return ", ".join(f"{p.id} x{p.num_executors}" for p in profile.processors)


