"""Does the profiler's allocation reach the best throughput a grid search finds?

Measures, in one run and on one sample trace, the runtime with the
allocation a profile holds (budget = its resident set, its executor count)
and a grid of budgets x executor counts; prints each throughput and the
ratio profiler / best grid point.

    python benchmarks/allocation.py models/pcb --profile device_profiles/x86-2core-cpu.json \
        [--budgets 10,25,50,75,100] [--executors 1,2,3] [--requests 600]
"""

from __future__ import annotations

import argparse

from edgecoe.config import RuntimeConfig
from edgecoe.package import load_package
from edgecoe.profiler import load_profile
from edgecoe.results import machine_info
from edgecoe.runtime import Runtime
from edgecoe.workload import generate_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--budgets", default="10,25,50,75,100", help="percent of all experts' footprint")
    parser.add_argument("--executors", default="1,2,3")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--rate", type=float, default=None, help="arrivals per second (default: all at once)")
    args = parser.parse_args()

    pkg = load_package(args.package, verify="quick")
    profile = load_profile(args.profile)
    alloc = profile.allocation
    if alloc is None:
        raise SystemExit(f"{args.profile} holds no allocation; run edgecoe profile first")
    trace = generate_workload(pkg.manifest, num_requests=args.requests, dist="zipf:1.1", rate_rps=args.rate, seed=11)
    fast = profile.processors[0].id
    total = sum(profile.costs[e.architecture][profile.processors[0].kind].footprint_bytes or e.total_bytes
                for e in pkg.experts.values())
    print(f"machine: {machine_info()}")
    print(f"package {pkg.name}: footprint {total / 1e9:.2f} GB; profile {profile.name}: "
          f"{alloc.num_resident} experts resident, budget {alloc.budget_bytes / 1e9:.2f} GB "
          f"({100 * alloc.budget_bytes / total:.0f} %), executors {alloc.num_executors[fast]}; "
          f"trace {args.requests} requests, zipf:1.1, rate {args.rate or 'all at once'}")

    def measure(budget: int, executors: int) -> float:
        cfg = RuntimeConfig(policy="edgecoe", budget=budget, num_executors=executors)
        with Runtime(pkg, config=cfg, profile=profile) as runtime:
            runs = [runtime.run(trace).throughput_rps for _ in range(2)]
        return sum(runs) / len(runs)

    chosen = measure(alloc.budget_bytes, alloc.num_executors[fast])
    print(f"  profiler allocation: {chosen:7.1f} req/s")
    grid: dict[tuple[int, int], float] = {}
    for pct in (int(p) for p in args.budgets.split(",")):
        for count in (int(c) for c in args.executors.split(",")):
            budget = max(int(total * pct / 100), max(
                c.footprint_bytes or 0 for by_kind in profile.costs.values() for c in by_kind.values()) + 1)
            grid[(pct, count)] = measure(budget, count)
            print(f"  grid budget {pct:3d} % executors {count}: {grid[(pct, count)]:7.1f} req/s", flush=True)
    (best_pct, best_count), best = max(grid.items(), key=lambda kv: kv[1])
    print(f"best grid point: budget {best_pct} %, {best_count} executors: {best:.1f} req/s")
    print(f"profiler / best grid = {chosen / best:.3f}")


if __name__ == "__main__":
    main()
