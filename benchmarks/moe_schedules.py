"""MoE expert schedules side by side at one expert budget, in page-cache and device-memory modes.

    python benchmarks/moe_schedules.py --package models/moe-large --budget 25% --prompts 8 --new-tokens 24 \\
        --repeat 3 --json benchmarks/results/moe/schedules_moe_large.json

Entries: ``all-resident`` (every expert preloaded, no limit: the ceiling), and ``on-demand``,
``mixtral-offload`` and ``edgecoe`` at the budget. Page-cache mode: expert files stay in the OS page cache,
so a load is a memory copy (a NUMA box whose host memory holds the experts). Device-memory mode: each entry
runs under a memory limit counting the page cache (``--device-memory auto``), so loads read storage. Every
entry runs in a fresh process; the entries of a repeat run one after the other, in rotated order per repeat.
Prompts are held out (documentation topics the demo never trains on); the ``edgecoe`` entry's predictor is
trained on calibration prompts (training topics) if the package ships none.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgecoe.results import machine_info

ENTRIES = ("all-resident", "on-demand", "mixtral-offload", "edgecoe")


def worker(args: argparse.Namespace) -> None:
    from edgecoe.moe.demo import held_out_prompts
    from edgecoe.moe.generate import Generator, SamplingParams
    from edgecoe.moe.model import MoeConfig, MoeModel, moe_under_device_memory
    from edgecoe.moe.package import load_moe_package

    package = load_moe_package(args.package)
    entry, mode = args.worker, args.mode
    resident = entry == "all-resident"
    config = MoeConfig(budget="100%" if resident else args.budget, policy="on-demand" if resident else entry)
    prompts = held_out_prompts(args.prompts)
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)
    results = []
    described = None

    def run(model: MoeModel) -> None:
        generator = Generator(model)
        for prompt in prompts:
            model.cache.stats.peak_bytes = model.cache.used_bytes
            prefill_peak = 0
            started = time.perf_counter()
            for _event in generator.stream([prompt], params):
                if not prefill_peak:
                    prefill_peak = model.cache.stats.peak_bytes
            e2e = (time.perf_counter() - started) * 1e3
            report = generator.last_report
            results.append({"ttft_ms": report.ttft_ms, "decode_tokens_per_s": report.decode_tokens_per_s,
                            "e2e_ms": e2e, "prefill_peak_expert_bytes": prefill_peak,
                            "peak_expert_bytes": report.peak_expert_bytes, "loads": report.num_expert_loads,
                            "prefetched": report.num_prefetched, "hit_rate": report.expert_hit_rate,
                            "storage_read_bytes": report.storage_read_bytes})

    if mode == "device-memory" and not resident:
        with moe_under_device_memory(package, config, "auto") as (model, memory):
            run(model)
            described = memory.describe()
    else:
        model = MoeModel(package, config)
        try:
            run(model)
        finally:
            model.close()
    import resource

    Path(args.out).write_text(json.dumps({
        "prompts": results, "device_memory": described,
        "expert_budget_bytes": model.cache.budget_bytes, "total_expert_bytes": package.manifest.total_expert_bytes,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def ensure_predictor(package: Path) -> dict[str, object] | None:
    """Train and install a predictor from calibration prompts if the package has none."""
    from edgecoe.moe.demo import calibration_prompts, held_out_prompts
    from edgecoe.moe.model import MoeConfig, MoeModel
    from edgecoe.moe.package import load_moe_package
    from edgecoe.moe.predictors import compare_predictors, install_predictor
    from edgecoe.moe.trace import record_trace

    loaded = load_moe_package(package)
    if loaded.manifest.predictor is not None:
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
                      precision={str(n): q.precision for n, q in learned.items()})
    return result.to_dict()


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarize(runs: list[dict[str, dict[str, object]]]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for key in runs[0]:
        per_run = [run[key] for run in runs]

        def metric(name: str, runs_: list[dict[str, object]] = per_run) -> list[float]:
            return [_median([p[name] for p in r["prompts"]]) for r in runs_]  # type: ignore[attr-defined, index]

        row: dict[str, object] = {}
        for name in ("ttft_ms", "decode_tokens_per_s", "e2e_ms"):
            values = metric(name)
            row[name] = _median(values)
            row[f"{name}_range"] = [min(values), max(values)]
        mode = key.split("/")[0]
        for ref in ("on-demand", "all-resident"):
            ref_key = f"{mode}/{ref}" if ref != "all-resident" else "page-cache/all-resident"
            if ref_key in runs[0] and ref_key != key:
                for name in ("ttft_ms", "decode_tokens_per_s", "e2e_ms"):
                    ratios = [a / b for a, b in zip(metric(name), metric(name, [run[ref_key] for run in runs]),
                                                    strict=True) if b]
                    row[f"{name}_ratio_vs_{ref}"] = _median(ratios)
        last = per_run[-1]
        prompts = last["prompts"]  # type: ignore[index]
        row["prefill_peak_expert_bytes"] = max(p["prefill_peak_expert_bytes"] for p in prompts)  # type: ignore[index, union-attr]
        row["peak_expert_bytes"] = max(p["peak_expert_bytes"] for p in prompts)  # type: ignore[index, union-attr]
        row["expert_budget_bytes"] = last["expert_budget_bytes"]
        row["total_expert_bytes"] = last["total_expert_bytes"]
        row["loads"] = sum(p["loads"] for p in prompts)  # type: ignore[index, union-attr]
        row["prefetched"] = sum(p["prefetched"] for p in prompts)  # type: ignore[index, union-attr]
        row["hit_rate"] = _median([p["hit_rate"] for p in prompts])  # type: ignore[index, union-attr]
        reads = [p["storage_read_bytes"] for p in prompts if p["storage_read_bytes"] is not None]  # type: ignore[index, union-attr]
        row["storage_read_bytes"] = sum(reads) if reads else None
        row["e2e_p99_ms"] = max(p["e2e_ms"] for p in prompts)  # type: ignore[index, union-attr]
        row["peak_rss_bytes"] = max(int(r["peak_rss_bytes"]) for r in per_run)  # type: ignore[call-overload]
        out[key] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=Path("models/moe-large"))
    parser.add_argument("--budget", default="25%")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default="page-cache,device-memory")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    predictor = ensure_predictor(args.package)
    keys = ["page-cache/all-resident"] + [f"{mode}/{entry}" for mode in args.modes.split(",")
                                          for entry in ENTRIES[1:]]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            order = keys[rep % len(keys):] + keys[:rep % len(keys)]
            run = {}
            for key in order:
                mode, entry = key.split("/")
                out = Path(tmp) / "out.json"
                subprocess.run([sys.executable, __file__, "--worker", entry, "--mode", mode, "--out", str(out),
                                "--package", str(args.package), "--budget", args.budget, "--prompts",
                                str(args.prompts), "--new-tokens", str(args.new_tokens)], check=True)
                run[key] = json.loads(out.read_text())
                decode = _median([p["decode_tokens_per_s"] for p in run[key]["prompts"]])
                print(f"repeat {rep + 1}/{args.repeat} {key}: decode {decode:.1f} tok/s", flush=True)
            runs.append({k: run[k] for k in keys})
    summary = summarize(runs)
    for key, row in summary.items():
        print(key, json.dumps({k: v for k, v in row.items() if "range" not in k}))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items() if k not in ("worker", "mode", "out")},
            "machine": machine_info(), "predictor_training": predictor, "summary": summary, "runs": runs},
            indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
