"""Next-layer expert predictors, trained on calibration prompts and measured on held-out ones.

    python benchmarks/moe_predictors.py --package models/moe-tiny --json benchmarks/results/moe/predictors_moe_tiny.json

Traces 40 calibration prompts (lines of the documentation topics moe-tiny trains on) and 20 held-out
prompts (topics it never saw) x 32 greedy tokens, trains every predictor on the first and reports recall
and precision of its top-k and top-2k on the second (what `edgecoe predictor train` prints). The package
is not modified.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgecoe.moe.demo import calibration_prompts, held_out_prompts
from edgecoe.moe.model import MoeConfig, MoeModel
from edgecoe.moe.package import load_moe_package
from edgecoe.moe.predictors import compare_predictors
from edgecoe.moe.trace import record_trace
from edgecoe.results import machine_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=Path("models/moe-tiny"))
    parser.add_argument("--calibration", type=int, default=40)
    parser.add_argument("--held-out", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    package = load_moe_package(args.package)
    model = MoeModel(package, MoeConfig())
    try:
        train = record_trace(model, calibration_prompts(args.calibration), max_new_tokens=args.new_tokens)
        test = record_trace(model, held_out_prompts(args.held_out), max_new_tokens=args.new_tokens)
    finally:
        model.close()
    result = compare_predictors(package, train, test)
    for name, by_n in result.quality.items():
        print(name, {n: f"recall {q.recall:.3f} precision {q.precision:.3f}" for n, q in by_n.items()})
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine_info(),
                                         "top_k": package.manifest.moe.top_k, **result.to_dict()}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
