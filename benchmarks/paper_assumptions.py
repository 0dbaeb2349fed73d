"""Paper mode across its assumptions: edgecoe / samba and the all-resident ceiling on CoServe's two boxes.

The reference profiles rest on three assumed parameters (``edgecoe/bench/reference.py``): the
per-item share of a batch-1 execution (K / t1, which caps what batching gains at t1 / K), the
SSD bandwidth, and a fixed cost per load. This varies them one at a time around the middle,
simulates samba, coserve, edgecoe and all-resident on the same trace for each (the paper's
setting: 350 experts, uniform arrivals at 250 req/s, each processor's own budget), and
writes one JSON record per (box, assumptions, seed) with every entry's throughput, switches
and latency, and the ratios.

    python benchmarks/paper_assumptions.py [--requests 2500] [--seeds 31,32] --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, replace
from pathlib import Path

from edgecoe.bench import paper_package, run_bench
from edgecoe.bench.reference import ASSUMPTION_RANGE, Assumptions, numa_profile, uma_profile
from edgecoe.results import machine_info
from edgecoe.workload import generate_workload

ENTRIES = ["samba", "coserve", "edgecoe", "all-resident"]


def assumption_grid() -> list[Assumptions]:
    """The middle, then each parameter at the ends of its range with the others at the middle."""
    middle = Assumptions()
    grid = [middle]
    for name, values in ASSUMPTION_RANGE.items():
        for value in values:
            point = replace(middle, **{name: value})
            if point not in grid:
                grid.append(point)
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2500)
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument("--seeds", default="31,32", help="trace seeds (not used while tuning)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    pkg = paper_package()
    records = []
    for box, make in (("numa", numa_profile), ("uma", uma_profile)):
        for assumptions in assumption_grid():
            profile = make(assumptions)
            ratios: list[float] = []
            ceilings: list[float] = []
            for seed in seeds:
                trace = generate_workload(pkg.manifest, num_requests=args.requests, rate_rps=args.rate,
                                          arrival="uniform", seed=seed)
                result = run_bench(pkg, trace, entries=ENTRIES, budget=None, profile=profile, simulate=True,
                                   seed=seed)
                entries: dict[str, dict[str, object]] = result.to_dict()["entries"]  # type: ignore[assignment]
                records.append({"box": box, "assumptions": asdict(assumptions), "seed": seed, "entries": {
                    name: {**{k: v for k, v in entry.items() if k != "report"},
                           "wall_s": result.reports[name].wall_s, "link_busy_s": result.reports[name].link_busy_s}
                    for name, entry in entries.items()}})
                ratios.append(float(result.ratio("edgecoe", "samba") or 0.0))
                ceilings.append(float(result.ratio("all-resident", "samba") or 0.0))
            print(f"{box:4} {assumptions.label():40} edgecoe/samba {statistics.median(ratios):5.2f}x  "
                  f"ceiling (all-resident/samba) {statistics.median(ceilings):5.2f}x", flush=True)
    args.json.write_text(json.dumps({"command": "python benchmarks/paper_assumptions.py", "requests": args.requests,
                                     "rate_rps": args.rate, "seeds": seeds, "machine": machine_info(),
                                     "records": records}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
