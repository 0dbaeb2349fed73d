"""Serving four fine-tuned variants at one memory budget, side by side (:mod:`edgecoe.moe.variant_bench`).

    python benchmarks/moe_variant_serving.py --package models/moe-tiny-variants \\
        --checkpoints models/moe-tiny-variants-hf --json benchmarks/results/moe/variant_serving_moe_tiny.json

One workload per distribution (uniform and zipf:1.2 over the variants; Poisson arrivals; prompts from each
variant's held-out text), every entry in one process, 3 repeats in rotated order. Memory: the consolidated
package's bytes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgecoe.results import machine_info


def main() -> None:
    from edgecoe.moe.package import load_moe_package
    from edgecoe.moe.variant_bench import ENTRIES, VariantWorkload, run_variant_bench

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=Path("models/moe-tiny-variants"))
    parser.add_argument("--checkpoints", type=Path, default=Path("models/moe-tiny-variants-hf"))
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--dists", default="uniform,zipf:1.2")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-wait-ms", type=float, default=2000.0)
    parser.add_argument("--entries", default=",".join(ENTRIES))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    names = [v.name for v in load_moe_package(args.package).manifest.variants]
    checkpoints = {n: args.checkpoints / n for n in names}
    points = []
    for dist in args.dists.split(","):
        workload = VariantWorkload(num_requests=args.requests, rate_rps=args.rate, dist=dist, seed=7)

        def show(rep: int, result: object, dist: str = dist) -> None:
            print(f"{dist} repeat {rep + 1}: {json.dumps(result.__dict__)}", flush=True)

        result = run_variant_bench(args.package, checkpoints, workload=workload, new_tokens=args.new_tokens,
                                   repeat=args.repeat, entries=args.entries.split(","), max_wait_ms=args.max_wait_ms,
                                   on_result=show)
        points.append({"dist": dist, **result})
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine_info(),
                                         "points": points}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
