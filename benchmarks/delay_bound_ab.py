"""The edgecoe delay bound at two settings, side by side with coserve, on the same traces (real sessions).

Each seed's trace is served by coserve and by edgecoe with each bound, one after another in one
process, from the same warm optimized-model cache; the JSON keeps every run's report.

    python benchmarks/delay_bound_ab.py models/pcb --bounds 5000,30000 --seeds 13,14 --json out.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from edgecoe.bench.harness import entry_config, shared_profile
from edgecoe.loaders.session import SessionLoader
from edgecoe.package import load_package
from edgecoe.results import machine_info
from edgecoe.runtime import Runtime
from edgecoe.workload import generate_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--bounds", default="5000,30000", help="max_delay_ms values for edgecoe")
    parser.add_argument("--seeds", default="13,14")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument("--budget", default="25%")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    pkg = load_package(args.package, verify="quick")
    profile, budget_bytes, total = shared_profile(pkg, None, args.budget)
    SessionLoader(pkg, profile, entry_config("samba", budget_bytes, total)).warm_optimized_cache()
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        trace = generate_workload(pkg.manifest, num_requests=args.requests, rate_rps=args.rate, seed=seed)
        configs = {"coserve": entry_config("coserve", budget_bytes, total)}
        for bound in (float(b) for b in args.bounds.split(",")):
            configs[f"edgecoe bound {bound:g} ms"] = replace(entry_config("edgecoe", budget_bytes, total),
                                                             max_delay_ms=bound)
        for name, config in configs.items():
            with Runtime(pkg, config=config, profile=profile) as runtime:
                report = runtime.run(trace)
            print(f"seed {seed} {name:28} {report.throughput_rps:6.1f} req/s  p50 {report.latency_ms['p50']:8,.0f}  "
                  f"p99 {report.latency_ms['p99']:8,.0f} ms  switches {report.num_switches}", flush=True)
            runs.append({"seed": seed, "entry": name, "report": report.to_dict()})
    args.json.write_text(json.dumps({"command": "python benchmarks/delay_bound_ab.py", "args": vars(args) | {
        "package": str(args.package), "json": str(args.json)}, "machine": machine_info(), "runs": runs}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
