"""Run policies side by side on one trace of one package, in one process, and print ratios.

Every policy gets the same trace, the same byte budget and the same measured
expert footprints (measured once, up front), so only the policy differs.

    python benchmarks/policies.py models/pcb --budget 25% --requests 2000 --rate 250 \
        --policies samba,edgecoe [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

from edgecoe.config import RuntimeConfig
from edgecoe.package import load_package
from edgecoe.profiler.schema import ArchitectureCost, DeviceProfile, ProcessorProfile
from edgecoe.results import machine_info
from edgecoe.runtime import Runtime, default_profile
from edgecoe.workload import generate_workload


def shared_profile(pkg, budget: str) -> tuple[DeviceProfile, int]:  # type: ignore[no-untyped-def]
    """Measure footprints once; return a profile carrying them and the budget in bytes."""
    probe = Runtime(pkg, config=RuntimeConfig(policy="samba", budget=budget))
    try:
        footprints = {pkg.experts[n].architecture: probe.footprint(n) for n in pkg.experts}
        budget_bytes = probe.caches["cpu"].budget_bytes
        total = probe.total_footprint_bytes
    finally:
        probe.close()
    base = default_profile()
    costs = {arch: {"cpu": ArchitectureCost(k_ms=0.15 * size / 4e6, b_ms=0.5, max_batch=8,
                                            load_ms=1.2 * size / 4e6, footprint_bytes=size)}
             for arch, size in footprints.items()}
    # NOTE: only footprint_bytes is used as truth here; K, B and load are rough
    # starting points the runtime refines online (issue 4 brings measured ones).
    processors = [ProcessorProfile(id="cpu", budget_bytes=budget_bytes, num_executors=2)]
    profile = base.model_copy(update={"name": "bench-shared", "processors": processors, "costs": costs})
    return profile, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package")
    parser.add_argument("--budget", default="25%")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument("--dist", default="zipf:1.1")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--policies", default="samba,edgecoe")
    parser.add_argument("--json")
    args = parser.parse_args()

    pkg = load_package(args.package, verify="quick")
    profile, total = shared_profile(pkg, args.budget)
    budget_bytes = profile.processors[0].budget_bytes
    trace = generate_workload(pkg.manifest, num_requests=args.requests, dist=args.dist, rate_rps=args.rate,
                              seed=args.seed)
    print(f"machine: {machine_info()}")
    print(f"package {pkg.name}: {len(pkg.experts)} experts, resident footprint {total / 1e9:.2f} GB; "
          f"budget {args.budget} = {budget_bytes / 1e9:.2f} GB; trace: {args.requests} requests, "
          f"{args.dist}, {args.rate} req/s, seed {args.seed}")
    reports = {}
    for policy in args.policies.split(","):
        started = time.perf_counter()
        with Runtime(pkg, config=RuntimeConfig(policy=policy, budget=budget_bytes), profile=profile) as runtime:
            report = runtime.run(trace)
        reports[policy] = report
        print(f"  {policy:<15} {report.throughput_rps:8.1f} req/s  switches {report.num_switches:5d}  "
              f"prefetches {report.num_prefetches:4d}  p50 {report.latency_ms['p50']:8.0f} ms  "
              f"p99 {report.latency_ms['p99']:8.0f} ms  failed {report.num_failed}  startup {report.startup_s:.1f} s  "
              f"(total {time.perf_counter() - started:.0f} s)")
    base = reports.get("samba")
    if base:
        print("ratios vs samba:")
        for policy, report in reports.items():
            switches = report.num_switches / base.num_switches if base.num_switches else float("nan")
            print(f"  {policy:<15} throughput x{report.throughput_rps / base.throughput_rps:.2f}  "
                  f"switches x{switches:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({p: r.to_dict() for p, r in reports.items()}, fh, indent=2)


if __name__ == "__main__":
    main()
