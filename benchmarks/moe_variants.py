"""Fine-tuned MoE variants consolidated into one package: memory and quality against merging baselines.

    python benchmarks/moe_variants.py --recipe models/recipes/moe-tiny-variants.yaml \\
        --json benchmarks/results/moe/variants_moe_tiny.json

Builds the recipe's variants if missing (``edgecoe demo build``), consolidates them at the recipe's
memory target and, for comparison, at fixed thresholds, and measures each variant on held-out text of
its own domain (:func:`edgecoe.moe.merging.variant_quality`): perplexity unmerged, consolidated,
averaged and TIES-merged, and greedy-token agreement. Also records how far the experts moved: per
variant, the distribution of each slot's functional distance to the first variant's expert.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgecoe.results import machine_info


def main() -> None:
    from edgecoe.moe.consolidate import consolidate, measure_distances
    from edgecoe.moe.merging import variant_quality
    from edgecoe.moe.variants import CALIBRATION_CHARS, build_variants, domain_text, load_variants_recipe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=Path("models/recipes/moe-tiny-variants.yaml"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--thresholds", default="0.05,0.2,0.5", help="fixed thresholds compared beside the target")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    recipe = load_variants_recipe(args.recipe)
    report, checkpoints = build_variants(args.recipe, models_dir=args.models, measure_quality=False,
                                         progress=lambda what, done, total: None)
    domains = {v.name: v.domain for v in recipe.variants}
    calibration = {v.name: "\n".join(domain_text(v.domain)[0])[:CALIBRATION_CHARS] for v in recipe.variants}
    base = args.models / f"{recipe.base}-hf"
    distances = measure_distances([checkpoints[n] for n in domains], [calibration[n] for n in domains])
    moved = {}
    for v, name in enumerate(domains):
        values = np.array([slot.deciding()[v, 0] for layer in distances for slot in layer])
        moved[name] = {"median": float(np.median(values)), "min": float(values.min()), "max": float(values.max()),
                       "below_0.02": float((values <= 0.02).mean()), "below_0.05": float((values <= 0.05).mean()),
                       "below_0.1": float((values <= 0.1).mean())}
    points = []
    settings: list[tuple[str, float | None]] = [(f"target {recipe.memory_target:.0%}", None)]
    settings += [(f"threshold {t}", float(t)) for t in args.thresholds.split(",") if t]
    with tempfile.TemporaryDirectory(prefix="edgecoe-variants-") as tmp:
        for label, threshold in settings:
            out = Path(tmp) / label.replace(" ", "-").replace("%", "pct")
            made = consolidate(checkpoints, calibration, out, name=recipe.name, domains=domains,
                               memory_target=recipe.memory_target, threshold=threshold)
            quality = variant_quality(made.package, checkpoints, domains, base)
            points.append({"setting": label, "threshold": made.threshold, "fits_target": made.fits,
                           "stored_experts": made.stored_experts, "total_experts": made.total_experts,
                           "consolidated_bytes": made.consolidated_bytes, "separate_bytes": made.separate_bytes,
                           "memory_ratio": made.memory_ratio, "shared": made.shared,
                           "quality": [asdict(q) for q in quality]})
            print(label, json.dumps({k: v for k, v in points[-1].items() if k != "quality"}))
            for q in quality:
                print("  ", json.dumps(asdict(q)))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine_info(),
                                         "recipe": recipe.model_dump(), "package": str(report.package),
                                         "moved": moved, "points": points}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
