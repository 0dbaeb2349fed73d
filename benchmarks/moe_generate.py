"""MoE generation side by side with transformers: token-exactness, decode speed, memory, per expert budget.

    python benchmarks/moe_generate.py --package models/moe-tiny --checkpoint models/moe-tiny-hf \\
        --prompts 20 --new-tokens 32 --budgets 100%,50%,25% --repeat 3 --json benchmarks/results/moe/moe-tiny.json

Every engine runs in a fresh process of its own (so peak RSS is its own), one after the other within a
repeat, in a rotated order per repeat. Each process generates greedily for every prompt, one prompt at a
time (batch 1, the edge case), after one warm-up prompt that is not measured. Prompts are lines of the
documentation topics the demo never trains on. Reported per engine: tokens identical to transformers',
median per-prompt time to first token and decode tokens/s, expert loads, peak expert bytes against the
budget, and peak RSS; and, per repeat, edgecoe's decode speed over transformers' (a ratio within one run).
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

from edgecoe.memory import peak_rss_bytes
from edgecoe.results import machine_info


def _transformers_worker(args: argparse.Namespace, prompts: list[list[int]]) -> dict[str, object]:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):  # type: ignore[misc]
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: object) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    model = AutoModelForCausalLM.from_pretrained(args.checkpoint)
    model.eval()
    out = []

    def one(ids: list[int], new: int) -> dict[str, object]:
        clock = Clock()
        started = time.perf_counter()
        with torch.no_grad():
            tokens = model.generate(torch.tensor([ids]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                    pad_token_id=0, streamer=clock)[0, len(ids):].tolist()
        first, last = clock.times[1], clock.times[-1]  # times[0]: the prompt itself
        return {"tokens": tokens, "ttft_ms": (first - started) * 1e3,
                "decode_tokens_per_s": (len(tokens) - 1) / (last - first) if last > first else 0.0}

    one(prompts[0][:4], 4)  # warm-up
    for ids in prompts:
        out.append(one(ids, args.new_tokens))
    return {"prompts": out}


def _edgecoe_worker(args: argparse.Namespace, prompts: list[list[int]], budget: str) -> dict[str, object]:
    from edgecoe.moe.generate import Generator, SamplingParams
    from edgecoe.moe.model import MoeConfig, MoeModel
    from edgecoe.moe.package import load_moe_package

    model = MoeModel(load_moe_package(args.package), MoeConfig(budget=budget, policy=args.policy))
    generator = Generator(model)
    generator.generate([prompts[0][:4]], SamplingParams(max_new_tokens=4, ignore_eos=True))  # warm-up
    stats_before = (model.cache.stats.num_misses, model.cache.stats.num_hits, model.cache.stats.bytes_loaded)
    model.cache.stats.peak_bytes = model.cache.used_bytes
    out = []
    for ids in prompts:
        result = generator.generate([ids], SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True))
        report = result.report
        out.append({"tokens": result.token_ids[0], "ttft_ms": report.ttft_ms,
                    "decode_tokens_per_s": report.decode_tokens_per_s})
    stats = model.cache.stats
    loads, hits = stats.num_misses - stats_before[0], stats.num_hits - stats_before[1]
    return {"prompts": out, "budget": budget, "expert_budget_bytes": model.cache.budget_bytes,
            "peak_expert_bytes": stats.peak_bytes, "num_expert_loads": loads,
            "expert_hit_rate": hits / (hits + loads) if hits + loads else 1.0,
            "bytes_loaded": stats.bytes_loaded - stats_before[2],
            "total_expert_bytes": model.manifest.total_expert_bytes}


def worker(args: argparse.Namespace) -> None:
    prompts = json.loads(Path(args.prompt_ids).read_text())
    baseline = peak_rss_bytes()
    if args.worker == "transformers":
        result = _transformers_worker(args, prompts)
    else:
        result = _edgecoe_worker(args, prompts, args.worker.removeprefix("edgecoe@"))
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["rss_after_imports_bytes"] = baseline
    Path(args.out).write_text(json.dumps(result))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=Path("models/moe-tiny"))
    parser.add_argument("--checkpoint", type=Path, default=Path("models/moe-tiny-hf"))
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--budgets", default="100%,50%,25%")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--policy", default="on-demand", help="edgecoe's expert schedule in every entry")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prompt-ids", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from tokenizers import Tokenizer

    from edgecoe.moe.demo import held_out_prompts

    texts = held_out_prompts(args.prompts)
    tokenizer = Tokenizer.from_file(str(args.package / "tokenizer" / "tokenizer.json"))
    ids = [tokenizer.encode(t).ids for t in texts]
    engines = ["transformers", *(f"edgecoe@{b}" for b in args.budgets.split(","))]
    runs: list[dict[str, dict[str, object]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        prompt_file = Path(tmp) / "prompts.json"
        prompt_file.write_text(json.dumps(ids))
        for rep in range(args.repeat):
            order = engines[rep % len(engines):] + engines[:rep % len(engines)]
            run: dict[str, dict[str, object]] = {}
            for engine in order:
                out = Path(tmp) / "out.json"
                subprocess.run([sys.executable, __file__, "--worker", engine, "--prompt-ids", str(prompt_file),
                                "--out", str(out), "--package", str(args.package), "--checkpoint",
                                str(args.checkpoint), "--new-tokens", str(args.new_tokens), "--policy", args.policy],
                               check=True)
                run[engine] = json.loads(out.read_text())
                print(f"repeat {rep + 1}/{args.repeat} {engine}: decode "
                      f"{_median([p['decode_tokens_per_s'] for p in run[engine]['prompts']]):.1f} tok/s", flush=True)
            runs.append({e: run[e] for e in engines})
    summary = summarize(runs, engines)
    for engine, row in summary.items():
        print(engine, json.dumps(row))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items() if k not in ("worker", "prompt_ids", "out")},
            "machine": machine_info(), "prompts": texts, "summary": summary, "runs": runs}, indent=1) + "\n")
        print(f"wrote {args.json}")


def summarize(runs: list[dict[str, dict[str, object]]], engines: list[str]) -> dict[str, dict[str, object]]:
    """Per engine: exact prompts, medians over runs of per-run medians, and per-run ratios to transformers."""
    reference = [p["tokens"] for p in runs[0]["transformers"]["prompts"]]  # type: ignore[index]
    out: dict[str, dict[str, object]] = {}
    for engine in engines:
        per_run = [run[engine] for run in runs]
        decode = [_median([p["decode_tokens_per_s"] for p in r["prompts"]]) for r in per_run]  # type: ignore[attr-defined, index]
        ttft = [_median([p["ttft_ms"] for p in r["prompts"]]) for r in per_run]  # type: ignore[attr-defined, index]
        exact = min(sum(p["tokens"] == ref for p, ref in zip(r["prompts"], reference, strict=True))  # type: ignore[arg-type, index]
                    for r in per_run)
        ratios = [d / _median([p["decode_tokens_per_s"] for p in run["transformers"]["prompts"]])  # type: ignore[attr-defined, index]
                  for d, run in zip(decode, runs, strict=True)]
        row: dict[str, object] = {
            "num_prompts": len(reference), "num_token_exact": exact,
            "decode_tokens_per_s": _median(decode), "decode_range": [min(decode), max(decode)],
            "ttft_ms": _median(ttft), "ttft_range": [min(ttft), max(ttft)],
            "decode_vs_transformers": _median(ratios), "decode_vs_transformers_range": [min(ratios), max(ratios)],
            "peak_rss_bytes": max(int(r["peak_rss_bytes"]) for r in per_run),  # type: ignore[call-overload]
        }
        for key in ("expert_budget_bytes", "peak_expert_bytes", "num_expert_loads", "expert_hit_rate",
                    "bytes_loaded", "total_expert_bytes"):
            if key in per_run[0]:
                row[key] = per_run[-1][key]
        out[engine] = row
    return out


if __name__ == "__main__":
    main()
