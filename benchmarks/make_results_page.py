"""Write benchmarks/results/README.md from the raw JSON committed beside it.

    python benchmarks/make_results_page.py [--check]

Every figure on the page is computed here from a file under ``benchmarks/results/``; nothing
is typed in by hand. ``--check`` fails when the committed page differs from what the JSON
gives (CI runs it, so the page cannot drift from its data). ``bash benchmarks/run_all.sh``
re-runs every command named on the page.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from summary_table import table

RESULTS = Path(__file__).parent / "results"
PAGE = RESULTS / "README.md"

TUNING_SEEDS = ("pcb traces: seed 1 (the default) was used while tuning the scheduler; "
                "simulated tail sweep: seed 21. Every figure below is on other seeds.")


def _load(name: str) -> dict[str, object] | None:
    path = RESULTS / name
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _machine(data: dict[str, object]) -> str:
    m = data.get("machine")
    if not isinstance(m, dict):
        points = data.get("points")
        m = points[0].get("machine") if isinstance(points, list) and points else None  # type: ignore[union-attr]
    if not isinstance(m, dict):
        return "unknown"
    return f"{m.get('machine')} {m.get('system')}, {m.get('cpus')} CPUs, Python {m.get('python')}, " \
           f"onnxruntime {m.get('onnxruntime')}"


def _section(name: str, title: str, command: str, text: str,
             plot: str | None = None) -> tuple[list[str], dict[str, object] | None]:
    """A section's raw data and its first lines: heading, command, what it measures, and the machine
    and raw file (or that it was not measured yet: then the data is None)."""
    data = _load(name)
    lines = [f"## {title}", "", f"`{command}`", "", text, ""]
    if data is None:
        return [*lines, "(not measured yet)", ""], None
    shown = f"; plot: `{plot}` (first seed)" if plot else ""
    return [*lines, f"Machine: {_machine(data)}. Raw: `{name}`{shown}.", ""], data


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _per_run(point: dict[str, object], numerator: str, denominator: str,
             value: Callable[[dict[str, object]], float]) -> list[float]:
    """A ratio taken within each run (same trace), one per run."""
    out = []
    for run in point["runs"]:  # type: ignore[union-attr]
        entries = run["entries"]  # type: ignore[index]
        if numerator in entries and denominator in entries:
            bottom = value(entries[denominator])
            if bottom:
                out.append(value(entries[numerator]) / bottom)
    return out


def _range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})" if values else "-"


def _pcb_targets(point: dict[str, object], *, device_memory: bool) -> list[str]:
    def tput(e: dict[str, object]) -> float:
        return float(e["throughput_rps"])  # type: ignore[arg-type]

    def p50(e: dict[str, object]) -> float:
        return float(e["latency_ms"]["p50"])  # type: ignore[index]

    def p99(e: dict[str, object]) -> float:
        return float(e["latency_ms"]["p99"])  # type: ignore[index]

    def switches(e: dict[str, object]) -> float:
        return float(e["num_switches"])  # type: ignore[arg-type]

    checks = [("throughput vs samba", _per_run(point, "edgecoe", "samba", tput), lambda m: m >= 5.0, ">= 5x")]
    if not device_memory:
        checks += [
            ("throughput vs samba-parallel", _per_run(point, "edgecoe", "samba-parallel", tput), lambda m: m >= 2.5,
             ">= 2.5x"),
            ("throughput vs all-resident", _per_run(point, "edgecoe", "all-resident", tput), lambda m: m >= 0.85,
             ">= 0.85x"),
            ("throughput vs coserve", _per_run(point, "edgecoe", "coserve", tput), lambda m: m >= 1.0, ">= 1.0x"),
            ("p50 vs coserve", _per_run(point, "edgecoe", "coserve", p50), lambda m: m <= 0.5, "<= 0.5x"),
            ("p99 vs coserve", _per_run(point, "edgecoe", "coserve", p99), lambda m: m <= 1.0, "<= 1.0x"),
            ("switches vs samba", _per_run(point, "edgecoe", "samba", switches), lambda m: m <= 0.12, "<= 0.12x"),
        ]
    lines = ["| edgecoe target | wanted | median of per-run ratios (range) | |", "|---|---|---|---|"]
    for what, values, ok, wanted in checks:
        verdict = _verdict(ok(statistics.median(values))) if values else "-"
        lines.append(f"| {what} | {wanted} | {_range(values)} | {verdict} |")
    return lines


def section_pcb(name: str, title: str, command: str, note: str, *, device_memory: bool) -> list[str]:
    lines, data = _section(name, title, command, note)
    if data is None:
        return lines
    point = data["points"][0]  # type: ignore[index]
    lines += [*table(RESULTS / name).splitlines(), ""]
    lines += _pcb_targets(point, device_memory=device_memory)  # type: ignore[arg-type]
    if device_memory:
        memory = point["entries"]["edgecoe"]["report"].get("device_memory", {})  # type: ignore[index]
        lines += ["", f"Limit: {memory.get('limit_bytes', 0) / 1e9:.2f} GB by `{memory.get('mechanism')}` for every "
                      "entry but all-resident (which stands for a device holding every expert, and starts cold)."]
    return [*lines, ""]


def section_tail(name: str, title: str, command: str, note: str, plot: str) -> list[str]:
    lines, data = _section(name, title, command, note, plot)
    if data is None:
        return lines
    first = data["points"][0]["entries"]["edgecoe"]["report"]  # type: ignore[index]
    slo = first.get("slo_ms")  # type: ignore[union-attr]
    lines += ["| offered req/s | coserve req/s | edgecoe req/s | coserve p50 | edgecoe p50 | coserve p99 | edgecoe p99 "
              f"| edgecoe p99 / coserve | coserve goodput ≤{slo:g} ms | edgecoe goodput | all-resident p99 |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for point in data["points"]:  # type: ignore[union-attr]
        e = point["entries"]
        c, g, a = e["coserve"], e["edgecoe"], e["all-resident"]
        lines.append(f"| {point['label'].split('=')[1]} | {c['throughput_rps']:.1f} | {g['throughput_rps']:.1f} | "
                     f"{c['latency_ms']['p50']:,.0f} | {g['latency_ms']['p50']:,.0f} | {c['latency_ms']['p99']:,.0f} | "
                     f"{g['latency_ms']['p99']:,.0f} | {g['latency_ms']['p99'] / c['latency_ms']['p99']:.2f} | "
                     f"{c['goodput_rps']:.1f} | {g['goodput_rps']:.1f} | {a['latency_ms']['p99']:,.0f} |")
    return [*lines, ""]


def section_bound_ab() -> list[str]:
    lines, data = _section(
        "tail/delay_bound_ab_pcb.json", "The delay bound at 5 s and 30 s (real sessions, pcb)",
        "python benchmarks/delay_bound_ab.py models/pcb --bounds 5000,30000 --seeds 13,14",
        "3,000 requests at 250 req/s, budget 25 %, each seed's trace served by coserve and by edgecoe "
        "with each bound, one after another. One run each.")
    if data is None:
        return lines
    lines += ["| seed | entry | req/s | p50 ms | p99 ms | switches |", "|---|---|---|---|---|---|"]
    for run in data["runs"]:  # type: ignore[union-attr]
        r = run["report"]
        lines.append(f"| {run['seed']} | {run['entry']} | {r['throughput_rps']:.1f} | {r['latency_ms']['p50']:,.0f} | "
                     f"{r['latency_ms']['p99']:,.0f} | {r['num_switches']} |")
    return [*lines, ""]


def section_overhead() -> list[str]:
    lines, data = _section(
        "overhead/sched_overhead.json", "Decision overhead", "python benchmarks/sched_overhead.py --repeat 5",
        "Per request at batch 1: the scheduler's own add and pop only, 350 experts, 10,000 queued; "
        "`starving`: groups past the delay bound are present. Median [and p99] per run, µs.")
    if data is None:
        return lines
    lines += ["| scheduler | calm: median of run medians (range) "
              "| starving: median of run medians (range) |", "|---|---|---|"]
    for sched, modes in data["us_per_request_median_p99_per_run"].items():  # type: ignore[union-attr]
        cells = []
        for mode in ("calm", "starving"):
            medians = [run[0] for run in modes[mode]]
            cells.append(f"{statistics.median(medians):.1f} ({min(medians):.1f}-{max(medians):.1f})")
        lines.append(f"| {sched} | {cells[0]} | {cells[1]} |")
    starving = [run[0] for run in data["us_per_request_median_p99_per_run"]["edgecoe"]["starving"]]  # type: ignore[index]
    lines += ["", f"Target: edgecoe <= 50 µs per request with starving groups present: "
                  f"{statistics.median(starving):.1f} µs, {_verdict(statistics.median(starving) <= 50)}."]
    return [*lines, ""]


def section_paper() -> list[str]:
    lines, data = _section(
        "paper/paper_assumptions.json", "Paper mode across its assumptions (simulated CoServe boxes)",
        "python benchmarks/paper_assumptions.py --json benchmarks/results/paper/paper_assumptions.json",
        "350 synthetic experts shaped like CoServe's circuit-board CoE, 2,500 requests at 250 req/s (uniform), "
        "each processor's own budget from the reference profile, one shared load channel per link "
        "(SSD -> host, host -> GPU). The assumptions are varied one at a time around the middle "
        "(K/t1: per-item share of a batch-1 run; SSD bandwidth multiple; fixed ms per load). "
        "Medians over seeds 31 and 32. The ceiling is all-resident / samba: every expert resident on every "
        "processor, no load ever, not even a first one. It runs edgecoe's own (heuristic) scheduler, so where "
        "compute dominates (UMA) its batches can form less well than edgecoe's: a ratio above 1.00 in the "
        "`edgecoe / ceiling` column is that, not a faster-than-possible run. `SSD busy`: share of edgecoe's "
        "run the SSD link carried loads.")
    if data is None:
        return lines
    lines += ["| box | assumptions | edgecoe / samba | coserve / samba | ceiling | edgecoe / ceiling | SSD busy |",
              "|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict[str, object]]] = {}
    for record in data["records"]:  # type: ignore[union-attr]
        a = record["assumptions"]
        label = f"K/t1={a['k_share']:g}, SSD x{a['ssd_scale']:g}, +{a['load_overhead_ms']:g} ms/load"
        groups.setdefault((record["box"], label), []).append(record["entries"])
    middle: dict[str, float] = {}
    for (box, label), runs in groups.items():
        def ratio(entry: str, runs: list[dict[str, object]] = runs) -> float:
            return statistics.median(float(r[entry]["ratio_vs_samba"]) for r in runs)  # type: ignore[index]
        busy = statistics.median(float(r["edgecoe"]["link_busy_s"].get("ssd", 0.0)) / float(r["edgecoe"]["wall_s"])  # type: ignore[index,union-attr]
                                 for r in runs)
        edge, ceiling = ratio("edgecoe"), ratio("all-resident")
        if label.startswith("K/t1=0.5, SSD x1, +0 "):
            middle[box] = edge
        lines.append(f"| {box} | {label} | {edge:.2f}x | {ratio('coserve'):.2f}x | {ceiling:.2f}x | "
                     f"{edge / ceiling:.2f} | {busy:.0%} |")
    if "numa" in middle:
        lines += ["", f"Target: NUMA at the middle of the assumptions within 4.5-12x samba: {middle['numa']:.2f}x, "
                      f"{_verdict(4.5 <= middle['numa'] <= 12)}."]
    return [*lines, ""]


def section_queue_bound() -> list[str]:
    lines = ["## A burst of 50,000 requests (queue limits)", "",
             "`python benchmarks/queue_bound.py models/pcb-small --mode wait|reject`", "",
             "Fixed RSS: the process with the runtime started and warmed; bound: fixed RSS plus the queue limit in "
             "input bytes. The last row: `--max-queued 2000`.", "",
             "| mode | served | rejected | lost | fixed RSS MB | peak RSS MB | bound MB |", "|---|---|---|---|---|---|---|"]
    for name in ("hostile/queue_bound_wait.json", "hostile/queue_bound_reject.json",
                 "hostile/queue_bound_wait_2000.json"):
        d = _load(name)
        if d is not None:
            lines.append(f"| {d['mode']} | {d['served']:,} | {d.get('rejected', 0):,} | {d['lost']} | "
                         f"{int(d['fixed_rss_bytes']) / 1e6:.0f} | {int(d['peak_rss_bytes']) / 1e6:.0f} | "  # type: ignore[call-overload]
                         f"{int(d['bound_bytes']) / 1e6:.0f} |")  # type: ignore[call-overload]
    return [*lines, ""]


EARLIER = [
    ("bound-fix/pcb_2000_seed1.json",
     "The all-resident bound right after its fix (batches got working memory of their own): "
     "`edgecoe bench models/pcb --policies samba,coserve,edgecoe,all-resident --requests 2000 --rate 250`, one run."),
    ("engine-refactor/before_pcb.json", "Before the one-engine refactor, same command, one run."),
    ("engine-refactor/after_pcb.json", "After the one-engine refactor, same command, one run."),
    ("engine-refactor/before_paper_numa.json",
     "Before the refactor: `edgecoe bench --paper numa --requests 2500 --arrival uniform` (the paper model of "
     "that time: no load-link contention, the GPU budget applied to the CPU pool too)."),
    ("engine-refactor/after_paper_numa.json", "After the refactor, same command and model: identical decisions."),
    ("engine-refactor/before_paper_uma.json", "Before the refactor: `edgecoe bench --paper uma ...` (old model)."),
    ("engine-refactor/after_paper_uma.json", "After the refactor, same command and model."),
]


def section_earlier() -> list[str]:
    lines = ["## Earlier records", "",
             "Single runs on seed 1 (the tuning seed), kept as the evidence behind earlier changes, not as "
             "headline figures.", ""]
    for name, what in EARLIER:
        if (RESULTS / name).exists():
            lines += [f"### `{name}`", "", what, "", *table(RESULTS / name).splitlines(), ""]
    return [*lines, ""]


def section_moe_generate(name: str, title: str, command: str, note: str) -> list[str]:
    lines, data = _section(name, title, command, note)
    if data is None:
        return lines
    summary = data["summary"]  # type: ignore[index]
    lines += ["| engine | token-exact prompts | decode tok/s: median (range) | vs transformers, per-run ratio: "
              "median (range) | time to first token ms | expert loads | hit rate | peak expert MB / budget MB "
              "| peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for engine, row in summary.items():  # type: ignore[union-attr]
        lo, hi = row["decode_range"]
        rlo, rhi = row["decode_vs_transformers_range"]
        budget = (f"{row['peak_expert_bytes'] / 1e6:.1f} / {row['expert_budget_bytes'] / 1e6:.1f}"
                  if "expert_budget_bytes" in row else "all weights")
        loads = str(row.get("num_expert_loads", "-"))
        hit = f"{row['expert_hit_rate']:.0%}" if "expert_hit_rate" in row else "-"
        lines.append(f"| {engine} | {row['num_token_exact']}/{row['num_prompts']} | {row['decode_tokens_per_s']:.1f} "
                     f"({lo:.1f}-{hi:.1f}) | {row['decode_vs_transformers']:.2f}x ({rlo:.2f}-{rhi:.2f}) | "
                     f"{row['ttft_ms']:.0f} | {loads} | {hit} | {budget} | {row['peak_rss_bytes'] / 1e6:.0f} |")
    exact = all(row["num_token_exact"] == row["num_prompts"] for row in summary.values())  # type: ignore[union-attr]
    within = all(row["peak_expert_bytes"] <= row["expert_budget_bytes"]  # type: ignore[index]
                 for row in summary.values() if "expert_budget_bytes" in row)  # type: ignore[union-attr, operator]
    resident = summary.get("edgecoe@100%")  # type: ignore[union-attr]
    lines += ["", f"Targets: token-exact against transformers at every budget: {_verdict(exact)}; peak expert "
                  f"bytes within the budget: {_verdict(within)}"]
    if resident is not None:
        lines[-1] += (f"; decode with every expert resident >= 1.0x transformers: "
                      f"{resident['decode_vs_transformers']:.2f}x, "  # type: ignore[index]
                      f"{_verdict(resident['decode_vs_transformers'] >= 1.0)}.")  # type: ignore[index]
    loads = "Expert loads, hit rate and bytes are of the last repeat, warm-up excluded."
    return [*lines, "", loads, ""]


def section_expert_exec(name: str, title: str, command: str) -> list[str]:
    lines, data = _section(name, title, command, (
        "Three ways to run a routed expert on ONNX Runtime (CPU); medians over rounds. `session`: a session "
        "per expert, weights inside; `bound`: one session per shape, weights bound as inputs (edgecoe's way); "
        "`moe-op`: ONNX Runtime's MoE operator, the chosen experts gathered into its weight tensor per call, "
        "or every expert of the layer resident (its time divided by top-k). Weights are hot in the CPU cache "
        "here (one expert run over and over): this compares overheads, not memory bandwidth."))
    if data is None:
        return lines
    lines += ["| way | load ms | resident MB per expert | 1 row ms | 32 rows ms |", "|---|---|---|---|---|"]
    for way, row in data["summary"].items():  # type: ignore[union-attr]
        load = "-" if row["load_ms"] != row["load_ms"] else f"{row['load_ms']:.2f}"  # NaN: nothing to load
        lines.append(f"| {way} | {load} | {row['resident_bytes'] / 1e6:.1f} | {row['run_1_rows_ms']:.3f} | "
                     f"{row['run_32_rows_ms']:.3f} |")
    return [*lines, ""]


def section_moe_quantize() -> list[str]:
    lines, data = _section(
        "moe/quantize_moe_tiny.json", "MoE experts quantized: moe-tiny",
        "python benchmarks/moe_quantize.py --checkpoint models/moe-tiny-hf --block-sizes 32,128 "
        "--json benchmarks/results/moe/quantize_moe_tiny.json",
        "Weight-only symmetric quantization of the routed experts with ONNX Runtime's MatMulNBits quantizer; "
        "perplexity as export measured it on the held-out documentation topics; greedy tokens of 20 held-out "
        "prompts x 32 compared with the float32 package.")
    if data is None:
        return lines
    lines += ["| experts | block | bytes vs float32 | perplexity (float32) | change | prompts identical | "
              "tokens agreeing |", "|---|---|---|---|---|---|---|"]
    for row in data["rows"]:  # type: ignore[union-attr]
        lines.append(f"| {row['dtype']} | {row['block_size']} | {row['bytes_vs_float32']:.3f}x | "
                     f"{row['perplexity']:.3f} ({row['perplexity_float32']:.3f}) | {row['perplexity_change']:+.2%} | "
                     f"{row['prompts_identical_to_float32']}/{row['num_prompts']} | {row['token_agreement']:.0%} |")
    int4 = [row["bytes_vs_float32"] for row in data["rows"] if row["dtype"] == "int4"]  # type: ignore[union-attr]
    lines += ["", f"Target: int4 bytes per expert <= 0.3x float32: {max(int4):.3f}x at most, "
                  f"{_verdict(max(int4) <= 0.3)}."]
    return [*lines, ""]


def section_moe_predictors(model: str) -> list[str]:
    raw = f"moe/predictors_{model.replace('-', '_')}.json"
    lines, data = _section(
        raw, f"MoE next-layer expert predictors: {model}",
        f"python benchmarks/moe_predictors.py --package models/{model} --json benchmarks/results/{raw}",
        "Trained on the routing traces of 40 calibration prompts (training topics), measured on 20 held-out "
        "prompts x 32 greedy tokens: of the experts layer l+1 chose, the share in the predictor's top n "
        "(recall), and of its top n, the share chosen (precision).")
    if data is None:
        return lines
    top_n = data["top_n"]  # type: ignore[index]
    lines += ["| predictor | " + " | ".join(f"recall@{n} | precision@{n}" for n in top_n) + " |",  # type: ignore[union-attr]
              "|---|" + "---|---|" * len(top_n)]  # type: ignore[arg-type]
    for name, by_n in data["quality"].items():  # type: ignore[union-attr]
        cells = " | ".join(f"{by_n[str(n)]['recall']:.1%} | {by_n[str(n)]['precision']:.1%}" for n in top_n)  # type: ignore[union-attr]
        lines.append(f"| {name} | {cells} |")
    if model == "moe-tiny":  # the target is set on the model whose routing was learned
        recall = data["quality"]["learned"][str(top_n[-1])]["recall"]  # type: ignore[index]
        lines += ["", f"Target: the top 2 x top-k recall >= 85 % of the experts activated on held-out prompts: "
                      f"learned {recall:.1%}, {_verdict(recall >= 0.85)}."]
    return [*lines, ""]


def section_moe_schedules() -> list[str]:
    lines, data = _section(
        "moe/schedules_moe_large.json", "MoE expert schedules and peers: moe-large at a 25 % expert budget",
        "python benchmarks/moe_schedules.py --package models/moe-large --checkpoint models/moe-large-hf "
        "--repeat 3 --concurrent-chunks 0,16 --json benchmarks/results/moe/schedules_moe_large.json",
        "8 held-out prompts (not the predictor's calibration or validation prompts) x 24 greedy tokens per entry, "
        "each entry in a fresh process, 3 repeats in rotated order; medians of per-repeat medians over prompts, "
        "[min-max] over repeats; ratios taken within a repeat. Page-cache mode: expert files stay cached, a load "
        "is a memory copy. Device-memory mode: a memory cgroup counting the page cache (expert budget + the "
        "runtime's own memory + 256 MiB in flight), so loads read storage; the peers get the same terms (budget "
        "+ dense weights + their libraries' memory + 256 MiB). `all-resident`: every expert preloaded, no limit. "
        "`edgecoe` runs with decode prefetch as `auto` sets it on a CPU (off); `edgecoe+prefetch` with it on. "
        "`accelerate`: transformers + accelerate, `device_map` with the experts beyond the budget offloaded to "
        "disk; `llama.cpp`: llama-cpp-python on the same weights as GGUF (f32), memory-mapped.")
    if data is None:
        return lines
    summary: dict[str, dict[str, Any]] = data["summary"]  # type: ignore[assignment]
    agreement: dict[str, float] = data.get("token_agreement") or {}  # type: ignore[assignment]

    def ratio(row: dict[str, Any], name: str, ref: str, invert: bool = False) -> str:
        value, span = row.get(f"{name}_ratio_vs_{ref}"), row.get(f"{name}_ratio_vs_{ref}_range")
        if value is None:
            return "-"
        if invert:  # a time: show how many times faster
            value, span = 1 / value, ([1 / span[1], 1 / span[0]] if span else None)
        return f"{value:.2f}x" + (f" ({span[0]:.2f}-{span[1]:.2f})" if span else "")

    def num(value: object, fmt: str = "{}") -> str:
        return "-" if value is None else fmt.format(value)

    lines += ["| mode / entry | decode tok/s [range] | vs on-demand | vs all-resident | first token ms | "
              "faster than on-demand | end-to-end ms p50 / p99 | e2e faster than on-demand | prefill peak experts "
              "| peak RSS MB | loads (ahead) | hit rate | read GB | same tokens |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in summary.items():
        if key.startswith("concurrent"):
            continue
        lo, hi = row["decode_tokens_per_s_range"]
        total = row["total_expert_bytes"]
        prefill = row.get("prefill_peak_expert_bytes")
        read = row.get("storage_read_bytes")
        same = agreement.get(key)
        lines.append(
            f"| {key} | {row['decode_tokens_per_s']:.1f} [{lo:.1f}-{hi:.1f}] | "
            f"{ratio(row, 'decode_tokens_per_s', 'on_demand')} | {ratio(row, 'decode_tokens_per_s', 'all_resident')} | "
            f"{row['ttft_ms']:.0f} | {ratio(row, 'ttft_ms', 'on_demand', invert=True)} | "
            f"{row['e2e_p50_ms']:.0f} / {row['e2e_p99_ms']:.0f} | {ratio(row, 'e2e_ms', 'on_demand', invert=True)} | "
            f"{'-' if prefill is None else f'{prefill / total:.1%}'} | {row['peak_rss_bytes'] / 1e6:.0f} | "
            f"{num(row.get('loads'))} ({num(row.get('prefetched'))}) | {num(row.get('hit_rate'), '{:.0%}')} | "
            f"{'-' if read is None else f'{read / 1e9:.2f}'} | {'-' if same is None else f'{same:.0%}'} |")
    concurrent = {k: v for k, v in summary.items() if k.startswith("concurrent")}
    if concurrent:
        lines += ["", "Every prompt submitted at once to the continuous batcher (edgecoe schedule, page-cache mode); "
                      "`chunk`: prompt tokens prefilled per step beside the running decodes (0: whole prompts):", "",
                  "| entry | tokens/s overall | first token ms p50 / p99 | time per output token ms p50 / p99 |",
                  "|---|---|---|---|"]
        for key, row in concurrent.items():
            lines.append(f"| {key} | {row['tokens_per_s']:.1f} | {row['ttft_p50_ms']:.0f} / {row['ttft_p99_ms']:.0f} | "
                         f"{row['tpot_p50_ms']:.0f} / {row['tpot_p99_ms']:.0f} |")
    overlap = [(k, r) for k, r in summary.items() if r.get("load_ms")]
    if overlap:
        lines += ["", "Load time that overlapped compute (first repeat's timeline, all prompts): " + "; ".join(
            f"{k} {r['load_overlapping_compute_ms'] / r['load_ms']:.0%} of {r['load_ms'] / 1e3:.1f} s"
            for k, r in overlap) + ". One timeline, `edgecoe+prefetch` in page-cache mode (first repeat), is kept as "
            "`moe/timeline_moe_large_page_cache_edgecoe_prefetch.json.gz` (gunzip, open in ui.perfetto.dev: loads on "
            "the loader thread's row beside the dense and expert spans)."]
    edge = summary.get("page-cache/edgecoe")
    if edge is not None:
        decode_res = edge["decode_tokens_per_s_ratio_vs_all_resident"]
        decode_od = edge["decode_tokens_per_s_ratio_vs_on_demand"]
        ttft_od = 1 / edge["ttft_ms_ratio_vs_on_demand"]
        prefill = edge["prefill_peak_expert_bytes"] / edge["total_expert_bytes"]
        lines += ["", "Targets, page-cache mode, edgecoe: decode >= 0.7x all-resident: "
                      f"{decode_res:.2f}x, {_verdict(decode_res >= 0.7)}; decode >= 2x on-demand: {decode_od:.2f}x, "
                      f"{_verdict(decode_od >= 2)}; first token >= 2x faster than on-demand: {ttft_od:.2f}x, "
                      f"{_verdict(ttft_od >= 2)}; prefill peak expert bytes <= 15 %: {prefill:.1%}, "
                      f"{_verdict(prefill <= 0.15)}."]
    device = summary.get("device-memory/edgecoe")
    if device is not None:
        e2e = device["e2e_ms"]
        parts = [f"end-to-end >= 3x faster than on-demand: {1 / device['e2e_ms_ratio_vs_on_demand']:.2f}x, "
                 f"{_verdict(1 / device['e2e_ms_ratio_vs_on_demand'] >= 3)}"]
        peer = summary.get("device-memory/accelerate")
        if peer is not None:
            parts.append(f">= 5x faster than accelerate disk offload: {peer['e2e_ms'] / e2e:.2f}x, "
                         f"{_verdict(peer['e2e_ms'] / e2e >= 5)}")
        peer = summary.get("device-memory/llama.cpp")
        if peer is not None:
            parts.append(f"ahead of llama.cpp memory-mapped: {peer['e2e_ms'] / e2e:.2f}x, "
                         f"{_verdict(peer['e2e_ms'] / e2e > 1)}")
        lines += ["", "Targets, device-memory mode, edgecoe (medians of end-to-end per prompt): " + "; ".join(parts)
                  + "."]
    return [*lines, ""]


def section_moe_variants(recipe: str = "moe-tiny-variants", raw: str = "variants_moe_tiny",
                         how: str = "150 steps at 2e-4") -> list[str]:
    lines, data = _section(
        f"moe/{raw}.json", f"Fine-tuned MoE variants: `{recipe}`, moe-tiny fine-tuned on four domains ({how}), "
        "consolidated",
        f"python benchmarks/moe_variants.py --recipe models/recipes/{recipe}.yaml "
        f"--json benchmarks/results/moe/{raw}.json",
        "Four fine-tunes of moe-tiny (embeddings and head frozen), one per text shipped with Python; each consolidated "
        "package measured per variant on held-out text of its own domain (every tenth file or block, never trained "
        "on): perplexity of the unmerged variant, of the package's variant, of the average merge and of the TIES "
        "merge (density 0.2), and greedy-token agreement with the unmerged variant (8 prompts x 16 tokens).")
    if data is None:
        return lines
    moved: dict[str, dict[str, float]] = data["moved"]  # type: ignore[assignment]
    lines += ["How far each variant's experts moved from the first variant's (functional distance per slot): " + "; ".join(
        f"{name}: median {m['median']:.3f}, {m['below_0.05']:.0%} within 0.05" for name, m in moved.items()) + ".", ""]
    lines += ["| setting | threshold | experts stored | size vs 4 copies | variant | ppl base | ppl unmerged | "
              "ppl consolidated | change | ppl average | ppl TIES | same tokens |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    points: list[dict[str, Any]] = data["points"]  # type: ignore[assignment]
    for point in points:
        for i, q in enumerate(point["quality"]):
            head = (f"| {point['setting']} | {point['threshold']:.3f} | {point['stored_experts']} / "
                    f"{point['total_experts']} | {point['memory_ratio']:.0%} |" if i == 0 else "| | | | |")
            change = q["perplexity_consolidated"] / q["perplexity_unmerged"] - 1
            lines.append(f"{head} {q['variant']} | {q['perplexity_base']:.2f} | {q['perplexity_unmerged']:.2f} | "
                         f"{q['perplexity_consolidated']:.2f} "
                         f"| {change:+.1%} | {q['perplexity_average']:.2f} | {q['perplexity_ties']:.2f} | "
                         f"{q['token_agreement']:.0%} |")
    target = points[0]
    worst = max(q["perplexity_consolidated"] / q["perplexity_unmerged"] - 1 for q in target["quality"])
    beats = all(q["perplexity_consolidated"] < min(q["perplexity_average"], q["perplexity_ties"])
                for q in target["quality"])
    lines += ["", f"Targets ({target['setting']}): size <= 40 % of four copies: {target['memory_ratio']:.0%}, "
                  f"{_verdict(target['memory_ratio'] <= 0.4)}; every variant's perplexity within 3 % of unmerged: "
                  f"worst {worst:+.1%}, {_verdict(worst <= 0.03)}; better than both merges for every variant: "
                  f"{_verdict(beats)}."]
    return [*lines, ""]


def section_moe_variant_serving(model: str, command: str, text: str, *, stem: str | None = None,
                                title: str = "") -> list[str]:
    lines, data = _section(
        f"moe/{stem or 'variant_serving_' + model.replace('-', '_')}.json",
        f"Serving four variants at one memory budget: {model}{title}", command, text)
    if data is None:
        return lines
    for point in data["points"]:  # type: ignore[union-attr]
        lines += [f"Workload `{point['dist']}`:", "",
                  "| entry | memory MB | switches | tokens/s | turnaround mean ms | p50 | p99 | first token p50 ms |",
                  "|---|---|---|---|---|---|---|---|"]
        summary = point["summary"]
        for entry, row in summary.items():
            lo, hi = row["turnaround_mean_ms_range"]
            lines.append(f"| {entry} | {row['memory_bytes'] / 1e6:.1f} | {row['switches']:.0f} | "
                         f"{row['tokens_per_s']:.0f} | {row['turnaround_mean_ms']:.0f} [{lo:.0f}-{hi:.0f}] | "
                         f"{row['turnaround_p50_ms']:.0f} | {row['turnaround_p99_ms']:.0f} | {row['ttft_p50_ms']:.0f} |")
        edge, split, single = summary.get("edgecoe"), summary.get("static-split"), summary.get("single-model")
        if edge and split and single:
            lower = 1 - edge["turnaround_mean_ms"] / split["turnaround_mean_ms"]
            tput = edge["tokens_per_s"] / single["tokens_per_s"]
            ttft = edge["ttft_p50_ms"] / single["ttft_p50_ms"] - 1
            lines += ["", f"Targets: mean turnaround >= 85 % lower than static-split: {lower:.0%} lower, "
                          f"{_verdict(lower >= 0.85)}; throughput >= 0.8x a single model: {tput:.2f}x, "
                          f"{_verdict(tput >= 0.8)}; first token within 10 % of a single model's: {ttft:+.0%}, "
                          f"{_verdict(ttft <= 0.10)}.", ""]
    return [*lines, ""]


def section_serve_overhead() -> list[str]:
    lines, data = _section(
        "serve/overhead_pcb_small.json", "What HTTP costs: `edgecoe serve` against the in-process API (pcb-small)",
        "python benchmarks/serve_overhead.py --package models/pcb-small --repeat 3 --concurrency 64 "
        "--json benchmarks/results/serve/overhead_pcb_small.json",
        "Budget 100 % (no switching: what is measured is the path, not the cache). Light load: 400 requests one at "
        "a time, latency as the caller sees it (HTTP: a Python client, raw-bytes bodies, JSON answers). "
        "Saturation: 64 callers each waiting for its answer, 10 s, in-process threads against wrk over HTTP; "
        "server and client share the 2 cores. Repeats alternate which side runs first.")
    if data is None:
        return lines
    lines += ["| repeat | p50 in-process ms | p50 HTTP ms | added ms | req/s in-process | req/s HTTP | HTTP / in-process |",
              "|---|---|---|---|---|---|---|"]
    for i, run in enumerate(data["runs"], start=1):  # type: ignore[index]
        lines.append(f"| {i} | {run['p50_ms']['in-process']:.2f} | {run['p50_ms']['http']:.2f} | "
                     f"{run['p50_added_ms']:.2f} | {run['saturated_rps']['in-process']:,.0f} | "
                     f"{run['saturated_rps']['http']:,.0f} | {run['saturated_ratio']:.2f} |")
    median = data["median"]  # type: ignore[index]
    lines += ["", f"Targets: p50 within 2 ms of in-process at light load: +{median['p50_added_ms']:.2f} ms (median), "
                  f"{_verdict(median['p50_added_ms'] <= 2.0)}; throughput at saturation >= 0.9x in-process: "
                  f"{median['saturated_ratio']:.2f}x, {_verdict(median['saturated_ratio'] >= 0.9)}."]
    return [*lines, ""]


def section_serve_overload() -> list[str]:
    lines, data = _section(
        "serve/overload_pcb_small.json", "`edgecoe serve` under overload (pcb-small)",
        "python benchmarks/serve_overload.py --package models/pcb-small --budget 25% --connections 1024 --seconds 60 "
        "--repeat 3 --json benchmarks/results/serve/overload_pcb_small.json",
        "Capacity first (wrk, 64 connections, 10 s); then 1,024 connections for 60 s against a queue limit of 256 "
        "requests and a 5 s request timeout. Lost: a connection dropped with a request on it (wrk's read, write and "
        "timeout errors). RSS bound: the server's idle RSS after start-up + the expert budget + what the queue "
        "limit lets requests hold.")
    if data is None:
        return lines
    lines += ["| repeat | capacity req/s | answers/s at overload | sent | answered by the server | 200 | 429 | 504 | "
              "dropped | answered after 30 s | peak RSS MB | bound MB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, run in enumerate(data["runs"], start=1):  # type: ignore[index]
        st = run["statuses"]
        sent = run["client_saw"] + run["client_timeouts"]
        lines.append(f"| {i} | {run['capacity_rps']:,.0f} | {run['overload_rps']:,.0f} | {sent:,} | "
                     f"{run['server_answered']:,.0f} | {st.get('200', 0):,.0f} | {st.get('429', 0):,.0f} | "
                     f"{st.get('504', 0):,.0f} | {run['dropped']} | {run['client_timeouts']} | "
                     f"{run['peak_rss_bytes'] / 1e6:.0f} | {run['rss_bound_bytes'] / 1e6:.0f} |")
    runs = data["runs"]  # type: ignore[index]
    dropped = sum(r["dropped"] + r["connect_errors"] for r in runs)
    unanswered = sum(max(0, r["client_saw"] + r["client_timeouts"] - r["server_answered"]) for r in runs)
    late = max(r["client_timeouts"] / (r["client_saw"] + r["client_timeouts"]) for r in runs)
    worst = max(r["peak_rss_bytes"] / r["rss_bound_bytes"] for r in runs)
    lines += ["", "Targets: every request answered (a result, 429 or 504), none lost: "
                  f"{dropped} dropped or refused connections, {unanswered} sent but not answered by the server, "
                  f"{_verdict(dropped == 0 and unanswered == 0)} (but up to {late:.2%} of answers came after wrk's "
                  f"30 s: under 1,024 connections the event loop serves connections unevenly); RSS within the "
                  f"bound: worst {worst:.1%} of it, {_verdict(worst <= 1.0)} (the HTTP layer holds request bodies "
                  "before admission: 1,024 connections x 48 KB are not in the bound)."]
    return [*lines, ""]


def section_published() -> list[str]:
    lines, data = _section(
        "published/bench_30pct.json", "Published models as one package (OCR pipeline, layout, VAD streams, ...)",
        "python benchmarks/published_bench.py --budget 30% --requests 300 --rate 8 --repeat 3 "
        "--json benchmarks/results/published/bench_30pct.json",
        "The `published` package (docs/bring-your-own-models.md): PP-OCR detection -> direction -> recognition with "
        "its glue as transforms (one recogniser item per text box), a fixed-batch layout model, Silero VAD streams, "
        "a page-orientation classifier and Magika, ONNX files as published. 300 requests of real inputs (rendered "
        "pages, audio chunks, file bytes), uniform over the six tasks, Poisson arrivals at 8 requests/s; budget 30 % "
        "of all experts' resident footprint; 3 repeats, medians [min-max].")
    if data is None:
        return lines
    return [*lines, *table(RESULTS / "published/bench_30pct.json").splitlines(), ""]


def render() -> str:
    lines = [
        "# Measured results",
        "",
        "<!-- generated by benchmarks/make_results_page.py from the JSON files in this folder: do not edit -->",
        "",
        "Every figure on this page is computed by `benchmarks/make_results_page.py` from raw JSON committed "
        "in this folder; `bash benchmarks/run_all.sh` re-runs every command (hours on 2 cores) and "
        "regenerates the page. Machines are noisy: policies run side by side on one trace, ratios are taken "
        "within a run, and repeated runs are summarised as medians with [min-max] ranges.",
        "",
        f"Tuning: {TUNING_SEEDS}",
        "",
        "Page-cache mode serves with every expert file in the OS page cache (24 GiB here), so a switch reads "
        "no storage; device-memory mode (`--device-memory auto`) serves under a memory cgroup limit of the "
        "expert budget plus the runtime's fixed overhead, so switches read storage as on a small device.",
        "",
    ]
    lines += section_pcb(
        "pcb-medians/pcb_3000_seeds11-12_x3.json", "pcb, page-cache mode",
        "edgecoe bench models/pcb --policies samba,samba-parallel,coserve,edgecoe,all-resident --requests 3000 "
        "--rate 250 --seeds 11,12 --repeat 3 --json ...",
        "Budget 25 %; the optimized-model cache is warmed before the first entry, so every entry starts alike.",
        device_memory=False)
    lines += section_pcb(
        "device-memory/pcb_3000_seeds11-12_x3.json", "pcb, device-memory mode",
        "edgecoe bench models/pcb --policies samba,samba-parallel,coserve,edgecoe,all-resident --requests 3000 "
        "--rate 250 --seeds 11,12 --repeat 3 --device-memory auto --json ...",
        "Budget 25 %; each entry starts with no expert file cached.",
        device_memory=True)
    lines += section_tail(
        "tail/pcb_sim_rate_sweep.json", "Tail latency across offered load (simulated pcb)",
        "edgecoe bench models/pcb --simulate --profile x86-2core-cpu --policies coserve,edgecoe,all-resident "
        "--requests 3000 --sweep rate=20,40,60,80,100,120,150,200 --seeds 22,23 --slo-ms 2000",
        "Medians over seeds 22 and 23 (the delay bound's default was chosen on seed 21). p50 and p99 in ms; "
        "goodput: requests finished within the objective, per second. edgecoe's own capacity here is about "
        "120-135 req/s (its throughput at overload).", "tail/img/tail.png")
    lines += section_tail(
        "tail/pcb_small_rate_sweep.json", "Tail latency across offered load (real sessions, pcb-small)",
        "edgecoe bench models/pcb-small --policies coserve,edgecoe,all-resident --requests 1000 "
        "--sweep rate=40,80,120,160,200,280 --seeds 22,23 --slo-ms 1000",
        "Real ONNX Runtime sessions on the 20-expert demo, budget 25 %; medians over seeds 22 and 23. Even 280 "
        "req/s did not saturate it on this machine that day: this sweep shows light and moderate load only.",
        "tail/img/tail_pcb_small.png")
    lines += section_moe_generate(
        "moe/moe-tiny.json", "MoE generation: moe-tiny against transformers",
        "python benchmarks/moe_generate.py --package models/moe-tiny --checkpoint models/moe-tiny-hf --prompts 20 "
        "--new-tokens 32 --budgets 100%,50%,25% --repeat 3 --json benchmarks/results/moe/moe-tiny.json",
        "The trained demo (4 layers x 8 experts of 0.39 MB). 20 prompts from the held-out documentation topics, "
        "32 greedy tokens each, one prompt at a time; every engine in a fresh process, 3 repeats in rotated order; "
        "edgecoe entries run the `on-demand` schedule (an expert loads when routed, least recently used out). "
        "ONNX Runtime GenAI 0.18's model builder has no Mixtral or Qwen2-MoE architecture, so it is not in the "
        "table.")
    lines += section_moe_generate(
        "moe/moe-large.json", "MoE generation: moe-large against transformers",
        "python benchmarks/moe_generate.py --package models/moe-large --checkpoint models/moe-large-hf --prompts 20 "
        "--new-tokens 32 --budgets 100%,50%,25% --repeat 3 --json benchmarks/results/moe/moe-large.json",
        "12 layers x 8 experts of 25.2 MB (2.4 GB of experts, seeded random weights); same protocol. Expert files "
        "are in the page cache (24 GiB here): a load is a memory copy, not a storage read.")
    lines += section_moe_quantize()
    lines += section_moe_predictors("moe-tiny")
    lines += section_moe_predictors("moe-large")
    lines += section_moe_schedules()
    lines += section_moe_variants()
    lines += section_moe_variants("moe-tiny-variants-light", "variants_moe_tiny_light", "30 steps at 5e-5: a light touch")
    lines += section_moe_variant_serving(
        "moe-tiny", "python benchmarks/moe_variant_serving.py --package models/moe-tiny-variants --checkpoints "
        "models/moe-tiny-variants-hf --json benchmarks/results/moe/variant_serving_moe_tiny.json",
        "400 requests x 16 greedy tokens, Poisson arrivals at 40 requests/s, each naming a variant (uniform, or zipf "
        "1.2 over the four), prompts from that variant's held-out text; one server, batches of up to 8 prompts of "
        "one variant, another variant served once its oldest request waited 2 s; 3 repeats in rotated order, "
        "medians [min-max]. Memory: the consolidated package's bytes (the 40 % target), except `separate-resident` "
        "(every variant whole: the ceiling) and `single-model` (one variant whole, every request sent to it). "
        "Quality per variant is on the variants section above. At 40 requests/s every entry keeps up with the "
        "offered load, so throughput here does not measure capacity: the next section does.")
    lines += section_moe_variant_serving(
        "moe-tiny", "python benchmarks/moe_variant_serving.py --package models/moe-tiny-variants --checkpoints "
        "models/moe-tiny-variants-hf --rate 2000 --requests 400 "
        "--json benchmarks/results/moe/variant_serving_moe_tiny_saturated.json",
        "The same 400 requests arriving within about 0.2 s (2,000 requests/s offered): every entry runs at its "
        "capacity, so tokens/s is throughput at saturation and turnaround is mostly queueing.",
        stem="variant_serving_moe_tiny_saturated", title=", at saturation")
    lines += section_moe_variant_serving(
        "moe-large", "python benchmarks/moe_variant_serving.py --package models/moe-large-variants --checkpoints "
        "models/moe-large-variants-hf --requests 48 --rate 1 --new-tokens 8 --dists uniform --repeat 3 "
        "--json benchmarks/results/moe/variant_serving_moe_large.json",
        "The same arrangements at moe-large's scale (2.4 GB of experts per variant; synthetic variants, each moving "
        "a seeded 15 % of its experts: `models/recipes/moe-large-variants.yaml`): 48 requests x 8 tokens at 1 "
        "request/s, uniform over the four, 3 repeats in rotated order (other work shared the machine during part "
        "of one repeat: the upper ends of the ranges). Memory: the consolidated package's bytes.")
    lines += section_published()
    lines += section_serve_overhead()
    lines += section_serve_overload()
    lines += section_expert_exec(
        "moe/expert_exec_large.json", "Running an expert: moe-large shape (hidden 1024, FFN 2048)",
        "python benchmarks/moe_expert_exec.py --hidden 1024 --intermediate 2048 --experts 8 --repeat 3 "
        "--json benchmarks/results/moe/expert_exec_large.json")
    lines += section_expert_exec(
        "moe/expert_exec_tiny.json", "Running an expert: moe-tiny shape (hidden 128, FFN 256)",
        "python benchmarks/moe_expert_exec.py --hidden 128 --intermediate 256 --experts 8 --repeat 3 "
        "--json benchmarks/results/moe/expert_exec_tiny.json")
    lines += section_bound_ab()
    lines += section_overhead()
    lines += section_paper()
    lines += section_queue_bound()
    lines += section_earlier()
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed page is not what the JSON gives")
    args = parser.parse_args()
    page = render()
    if args.check:
        if PAGE.read_text(encoding="utf-8") != page:
            sys.exit(f"{PAGE} is out of date: run python benchmarks/make_results_page.py")
        return
    PAGE.write_text(page, encoding="utf-8")
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
