"""MoE expert schedules and peer runtimes side by side at one expert budget (``edgecoe bench`` on an MoE package).

    python benchmarks/moe_schedules.py --package models/moe-large --checkpoint models/moe-large-hf \\
        --budget 25% --prompts 8 --new-tokens 24 --repeat 3 --concurrent-chunks 0,16 \\
        --json benchmarks/results/moe/schedules_moe_large.json

What runs is :mod:`edgecoe.moe.bench` (entries, modes, figures: see there). This script adds what a
committed result needs first: the package's predictor and activation matrices, trained on calibration
prompts (training topics) if it ships none, with their quality on other held-out prompts than the
benchmark's; the checkpoint converted to GGUF for the llama.cpp entry (when ``llama_cpp`` imports); and
the entries' token agreement with the all-resident entry.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgecoe.results import machine_info


def ensure_predictor(package: Path) -> dict[str, object] | None:
    """Train and install a predictor and activation matrices from calibration prompts if the package lacks them."""
    from edgecoe.moe.demo import calibration_prompts, held_out_prompts
    from edgecoe.moe.model import MoeConfig, MoeModel
    from edgecoe.moe.package import load_moe_package
    from edgecoe.moe.predictors import activation_matrices, compare_predictors, install_predictor
    from edgecoe.moe.trace import record_trace

    loaded = load_moe_package(package)
    record = loaded.manifest.predictor
    if record is not None and record.activations is not None:
        return None
    model = MoeModel(loaded, MoeConfig())
    try:
        train = record_trace(model, calibration_prompts(20), max_new_tokens=16)
        test = record_trace(model, held_out_prompts(40)[20:], max_new_tokens=16)  # not the benchmark's prompts
    finally:
        model.close()
    result = compare_predictors(loaded, train, test)
    learned = result.quality["learned"]
    install_predictor(package, result.weights, trained_on="calibration_prompts(20)",
                      recall={str(n): q.recall for n, q in learned.items()},
                      precision={str(n): q.precision for n, q in learned.items()},
                      activations=activation_matrices(train, loaded.manifest.model.num_layers))
    return result.to_dict()


def ensure_gguf(checkpoint: Path, out: Path) -> Path | None:
    """The checkpoint as GGUF for llama.cpp (written once), or None where llama-cpp-python is not installed."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: the llama.cpp entry is left out")
        return None
    from edgecoe.moe.peers import write_gguf

    if not out.is_file():
        write_gguf(checkpoint, out)
    return out


def main() -> None:
    from edgecoe.moe.bench import ENTRIES, MoeBenchSpec, run_moe_bench, token_agreement, write_plots
    from edgecoe.moe.demo import held_out_prompts

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=Path("models/moe-large"))
    parser.add_argument("--checkpoint", type=Path, default=None, help="the HF checkpoint (accelerate, llama.cpp)")
    parser.add_argument("--gguf", type=Path, default=None, help="default: <checkpoint>.gguf beside it")
    parser.add_argument("--budget", default="25%")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default="page-cache,device-memory")
    parser.add_argument("--entries", default=",".join(ENTRIES))
    parser.add_argument("--concurrent-chunks", default="")
    parser.add_argument("--timelines", type=Path, default=None, help="directory for each entry's timeline")
    parser.add_argument("--plots", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    predictor = ensure_predictor(args.package)
    entries = [e for e in args.entries.split(",") if e]
    gguf = None
    if "llama.cpp" in entries:
        gguf = ensure_gguf(args.checkpoint, args.gguf or args.checkpoint.with_suffix(".gguf")) if args.checkpoint else None
        if gguf is None:
            entries.remove("llama.cpp")
    if "accelerate" in entries and args.checkpoint is None:
        entries.remove("accelerate")
    spec = MoeBenchSpec(package=args.package, budget=args.budget, prompts=tuple(held_out_prompts(args.prompts)),
                        new_tokens=args.new_tokens, repeat=args.repeat, modes=tuple(args.modes.split(",")),
                        entries=tuple(entries), checkpoint=args.checkpoint, gguf=gguf, timeline_dir=args.timelines,
                        concurrent_chunks=tuple(int(c) for c in args.concurrent_chunks.split(",") if c))

    def on_result(rep: int, key: str, result: dict[str, object]) -> None:
        decode = sorted(p["decode_tokens_per_s"] for p in result["prompts"])  # type: ignore[attr-defined]
        print(f"repeat {rep + 1}/{args.repeat} {key}: decode {decode[len(decode) // 2]:.1f} tok/s", flush=True)

    result = run_moe_bench(spec, on_result=on_result)
    for key, row in result.summary.items():
        print(key, json.dumps({k: v for k, v in row.items() if "range" not in k}))
    agreement = token_agreement(result.runs)
    print("token agreement with all-resident:", agreement)
    if args.plots is not None:
        write_plots(result.summary, args.plots)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items()}, "machine": machine_info(),
            "predictor_training": predictor, "token_agreement": agreement, **result.to_dict()}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
