"""``edgecoe bench`` on an MoE package: expert schedules and peer runtimes side by side, at one budget.

Entries (each in a fresh process, so one entry's page cache, threads or crash
never reaches the next; the entries of a repeat run one after another, in an
order rotated per repeat):

- ``all-resident``: every expert loaded up front, no limit (the ceiling);
- ``on-demand``, ``mixtral-offload``, ``moe-infinity``, ``edgecoe``: the schedules of
  :mod:`edgecoe.moe.schedules` at the expert budget (``edgecoe`` with its decode
  prefetch as ``auto`` sets it for the device; ``edgecoe+prefetch`` with it on);
- ``accelerate``, ``llama.cpp``: the peers of :mod:`edgecoe.moe.peers`, on the
  checkpoint the package was exported from (``accelerate``) and its GGUF (``llama.cpp``).

Modes: ``page-cache`` (expert files stay in the OS page cache: a load is a
memory copy, as on a NUMA box whose host memory holds the experts) and
``device-memory`` (each entry runs under a memory limit counting the page cache:
the expert budget plus the runtime's own fixed overhead plus an in-flight
allowance, so loads read storage). ``llama.cpp`` memory-maps the whole model, so
it runs in device-memory mode only (in page-cache mode it would hold every expert).

Per entry and mode: medians over repeats (of each repeat's median over prompts)
of time to first token, decode tokens/s and end-to-end latency, their ranges,
p50/p99 end-to-end latency over every prompt, ratios against ``on-demand``
and ``all-resident`` taken within each repeat, peak expert bytes (overall and
during prefill), peak RSS, loads, prefetches, hit rate, storage bytes read, and
from the timeline how much load time overlapped compute.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecoe.errors import InvalidInputError

SCHEDULE_ENTRIES = ("all-resident", "on-demand", "mixtral-offload", "moe-infinity", "edgecoe", "edgecoe+prefetch")
PEER_ENTRIES = ("accelerate", "llama.cpp")
ENTRIES = SCHEDULE_ENTRIES + PEER_ENTRIES
MODES = ("page-cache", "device-memory")
TIMED = ("ttft_ms", "decode_tokens_per_s", "e2e_ms")


@dataclass(frozen=True)
class MoeBenchSpec:
    """One MoE bench run.

    Attributes:
        package: the MoE package.
        budget: the expert budget (``"25%"``, bytes or a size).
        prompts: the prompts (held out from whatever trained the package's predictor).
        new_tokens: tokens generated per prompt (end-of-sequence ignored, so every entry makes as many).
        repeat: repeats of the whole side-by-side run.
        modes / entries: what runs.
        checkpoint: the Hugging Face checkpoint the package came from (for ``accelerate``).
        gguf: that checkpoint as GGUF (for ``llama.cpp``; :func:`edgecoe.moe.peers.write_gguf`).
        timeline_dir: write each entry's first-repeat timeline there (Chrome trace JSON).
        concurrent_chunks: also run every prompt arriving together through the continuous batcher
            with the ``edgecoe`` schedule in page-cache mode, once per prefill chunk size listed.
        threads: intra-op threads (0: the runtime decides).
    """

    package: Path
    budget: str = "25%"
    prompts: tuple[str, ...] = ()
    new_tokens: int = 24
    repeat: int = 3
    modes: tuple[str, ...] = MODES
    entries: tuple[str, ...] = SCHEDULE_ENTRIES
    checkpoint: Path | None = None
    gguf: Path | None = None
    timeline_dir: Path | None = None
    concurrent_chunks: tuple[int, ...] = ()
    threads: int = 0

    def validate(self) -> None:
        unknown = [e for e in self.entries if e not in ENTRIES]
        if unknown:
            raise InvalidInputError(f"unknown MoE bench entries {unknown}; valid: {', '.join(ENTRIES)}")
        bad_modes = [m for m in self.modes if m not in MODES]
        if bad_modes or not self.modes:
            raise InvalidInputError(f"modes {list(self.modes)}: choose from {', '.join(MODES)}")
        if not self.prompts:
            raise InvalidInputError("no prompts to bench")
        if not 1 <= self.new_tokens <= 4096 or not 1 <= self.repeat <= 100:
            raise InvalidInputError(f"new_tokens={self.new_tokens} must be in [1, 4096] and repeat={self.repeat} "
                                    "in [1, 100]")
        if "accelerate" in self.entries and self.checkpoint is None:
            raise InvalidInputError("the accelerate entry needs the Hugging Face checkpoint (--checkpoint DIR)")
        if "llama.cpp" in self.entries and self.gguf is None:
            raise InvalidInputError("the llama.cpp entry needs the model as GGUF (--gguf FILE; "
                                    "benchmarks/moe_schedules.py writes one from the checkpoint)")
        if any(c < 0 for c in self.concurrent_chunks):
            raise InvalidInputError(f"concurrent chunk sizes {list(self.concurrent_chunks)} must be >= 0")

    def keys(self) -> list[str]:
        """The ``mode/entry`` runs of one repeat (``all-resident`` once, in page-cache mode)."""
        keys = []
        for mode in self.modes:
            for entry in self.entries:
                if entry == "all-resident" and mode != "page-cache" and "page-cache" in self.modes:
                    continue
                if entry == "llama.cpp" and mode == "page-cache":
                    continue
                keys.append(f"{mode}/{entry}")
        keys += [f"concurrent/edgecoe chunk={c}" for c in self.concurrent_chunks]
        return keys

    def to_json(self) -> str:
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> MoeBenchSpec:
        raw = json.loads(text)
        for name in ("package", "checkpoint", "gguf", "timeline_dir"):
            if raw.get(name) is not None:
                raw[name] = Path(raw[name])
        for name in ("prompts", "modes", "entries", "concurrent_chunks"):
            raw[name] = tuple(raw[name])
        return cls(**raw)


# -- one entry, in its own process ------------------------------------------------------------------
def run_entry(spec: MoeBenchSpec, key: str, *, timeline_path: Path | None = None) -> dict[str, Any]:
    """Run one ``mode/entry`` in this process; per-prompt figures and what the process used."""
    from edgecoe.memory import peak_rss_bytes

    mode, entry = key.split("/", 1)
    if mode == "concurrent":
        result = _run_concurrent(spec, int(entry.split("=")[1]))
    elif entry in PEER_ENTRIES:
        result = _run_peer(spec, mode, entry)
    else:
        result = _run_schedule(spec, mode, entry, timeline_path)
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def _run_schedule(spec: MoeBenchSpec, mode: str, entry: str, timeline_path: Path | None) -> dict[str, Any]:
    from edgecoe.moe.generate import Generator, SamplingParams
    from edgecoe.moe.model import MoeConfig, MoeModel, moe_under_device_memory
    from edgecoe.moe.package import load_moe_package
    from edgecoe.moe.timeline import Timeline

    package = load_moe_package(spec.package)
    resident = entry == "all-resident"
    policy, _, variant = entry.partition("+")
    config = MoeConfig(budget="100%" if resident else spec.budget, policy="on-demand" if resident else policy,
                       intra_op_threads=spec.threads, decode_prefetch="on" if variant == "prefetch" else "auto")
    params = SamplingParams(max_new_tokens=spec.new_tokens, ignore_eos=True)
    prompts: list[dict[str, Any]] = []
    out: dict[str, Any] = {"prompts": prompts, "device_memory": None}

    def run(model: MoeModel) -> None:
        generator = Generator(model)
        timeline = Timeline()
        model.timeline = timeline
        for prompt in spec.prompts:
            started = time.perf_counter()
            ids: list[int] = []
            for event in generator.stream([prompt], params):
                ids.append(event.token_id)
            e2e = (time.perf_counter() - started) * 1e3
            report = generator.last_report
            prompts.append({"ttft_ms": report.ttft_ms, "decode_tokens_per_s": report.decode_tokens_per_s,
                            "e2e_ms": e2e, "prefill_peak_expert_bytes": model.last_prefill_peak_bytes,
                            "peak_expert_bytes": report.peak_expert_bytes, "loads": report.num_expert_loads,
                            "prefetched": report.num_prefetched, "hit_rate": report.expert_hit_rate,
                            "storage_read_bytes": report.storage_read_bytes, "token_ids": ids})
        model.timeline = None
        out["load_ms"] = sum(s.duration_us for s in timeline.spans if s.category == "load") / 1e3
        out["load_overlapping_compute_ms"] = (timeline.overlap_ms("load", "dense") +
                                              timeline.overlap_ms("load", "expert"))
        if timeline_path is not None:
            timeline.write(timeline_path)
        out["expert_budget_bytes"] = model.cache.budget_bytes
        out["total_expert_bytes"] = package.manifest.total_expert_bytes

    if mode == "device-memory" and not resident:
        with moe_under_device_memory(package, config, "auto") as (model, memory):
            run(model)
            out["device_memory"] = memory.describe()
    else:
        model = MoeModel(package, config)
        try:
            run(model)
        finally:
            model.close()
    return out


def _prompt_ids(spec: MoeBenchSpec) -> list[list[int]]:
    from tokenizers import Tokenizer

    from edgecoe.moe.package import load_moe_package

    package = load_moe_package(spec.package)
    tokenizer = Tokenizer.from_file(str(package.path(package.manifest.tokenizer[0])))
    return [tokenizer.encode(p).ids for p in spec.prompts]


def _run_peer(spec: MoeBenchSpec, mode: str, entry: str) -> dict[str, Any]:
    """A peer at the same expert budget: its weights in memory capped at the budget plus the dense parts;
    in device-memory mode, also under a limit counting the page cache: the budget, the dense parts, what
    the process holds once the peer's libraries are imported, and the in-flight allowance (the same
    terms as edgecoe's ``auto`` limit)."""
    import contextlib
    import importlib

    from edgecoe.config import parse_budget
    from edgecoe.devicemem import IN_FLIGHT_ALLOWANCE_BYTES, limit_device_memory
    from edgecoe.memory import rss_bytes
    from edgecoe.moe import peers
    from edgecoe.moe.package import load_moe_package

    manifest = load_moe_package(spec.package).manifest
    budget = parse_budget(spec.budget, total_bytes=manifest.total_expert_bytes)
    dense = manifest.non_expert_bytes
    ids = _prompt_ids(spec)
    out: dict[str, Any] = {"expert_budget_bytes": budget, "total_expert_bytes": manifest.total_expert_bytes,
                           "device_memory": None}
    with tempfile.TemporaryDirectory(prefix="edgecoe-offload-") as tmp:
        checkpoint, gguf = spec.checkpoint, spec.gguf
        if entry == "accelerate":
            assert checkpoint is not None
            runner: Callable[[], list[dict[str, Any]]] = lambda: peers.run_accelerate(  # noqa: E731
                checkpoint, ids, max_new_tokens=spec.new_tokens, memory_bytes=budget + dense,
                offload_folder=Path(tmp), threads=spec.threads)
            files = sorted(checkpoint.glob("*.safetensors"))
        else:
            assert gguf is not None
            runner = lambda: peers.run_llama_cpp(gguf, ids, max_new_tokens=spec.new_tokens,  # noqa: E731
                                                 threads=spec.threads)
            files = [gguf]
        limit_cm: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if mode == "device-memory":
            for module in (("torch", "transformers", "accelerate") if entry == "accelerate" else ("llama_cpp",)):
                importlib.import_module(module)  # the libraries' own memory is the runtime's fixed overhead
            limit = budget + dense + rss_bytes() + IN_FLIGHT_ALLOWANCE_BYTES
            limit_cm = limit_device_memory(limit, files)
        from edgecoe.devicemem import storage_read_bytes

        with limit_cm as device:
            before = storage_read_bytes()
            rows = runner()
            after = storage_read_bytes()
            if device is not None:
                out["device_memory"] = device.describe()
    reads = (after - before) if before is not None and after is not None else None
    out["prompts"] = [{**row, "prefill_peak_expert_bytes": None, "peak_expert_bytes": None, "loads": None,
                       "prefetched": None, "hit_rate": None,
                       "storage_read_bytes": reads // len(rows) if reads is not None and rows else None}
                      for row in rows]
    return out


def _run_concurrent(spec: MoeBenchSpec, chunk: int) -> dict[str, Any]:
    """Every prompt submitted at once to the continuous batcher (edgecoe schedule, page-cache mode)."""
    from edgecoe.moe.batching import BatchingParams, ContinuousBatcher
    from edgecoe.moe.generate import Generator, SamplingParams
    from edgecoe.moe.model import MoeConfig, MoeModel
    from edgecoe.moe.package import load_moe_package

    package = load_moe_package(spec.package)
    model = MoeModel(package, MoeConfig(budget=spec.budget, policy="edgecoe", intra_op_threads=spec.threads))
    try:
        batcher = ContinuousBatcher(Generator(model), SamplingParams(max_new_tokens=spec.new_tokens, ignore_eos=True),
                                    BatchingParams(prefill_chunk_tokens=chunk))
        started = time.perf_counter()
        for prompt in spec.prompts:
            batcher.submit(prompt)
        tokens = len(batcher.run())
        wall = time.perf_counter() - started
    finally:
        model.close()
    rows = []
    for timing in batcher.timings.values():
        tpot = timing.time_per_output_token_ms
        rows.append({"ttft_ms": timing.first_token_ms, "e2e_ms": timing.finished_ms,
                     "decode_tokens_per_s": 1e3 / tpot if tpot else 0.0, "time_per_output_token_ms": tpot,
                     "prefill_peak_expert_bytes": None, "peak_expert_bytes": None, "loads": None, "prefetched": None,
                     "hit_rate": None, "storage_read_bytes": None})
    return {"prompts": rows, "tokens_per_s": tokens / wall, "expert_budget_bytes": model.cache.budget_bytes,
            "total_expert_bytes": package.manifest.total_expert_bytes, "device_memory": None}


# -- the side-by-side run ------------------------------------------------------------------------------
@dataclass
class MoeBenchResult:
    spec: MoeBenchSpec
    summary: dict[str, dict[str, Any]]
    runs: list[dict[str, dict[str, Any]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": json.loads(self.spec.to_json()), "summary": self.summary, "runs": self.runs}


def run_moe_bench(spec: MoeBenchSpec, *, on_result: Callable[[int, str, dict[str, Any]], None] | None = None,
                  python: str = sys.executable) -> MoeBenchResult:
    """Every entry of ``spec``, each in a fresh process, ``spec.repeat`` times; see the module docstring.

    Raises:
        InvalidInputError: a bad spec.
        RuntimeError: an entry's process failed (its stderr's last lines in the message).
    """
    spec.validate()
    keys = spec.keys()
    runs: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="edgecoe-moe-bench-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(spec.to_json(), encoding="utf-8")
        for rep in range(spec.repeat):
            order = keys[rep % len(keys):] + keys[:rep % len(keys)]
            run: dict[str, dict[str, Any]] = {}
            for key in order:
                out = Path(tmp) / "out.json"
                out.unlink(missing_ok=True)
                timeline = ""
                if spec.timeline_dir is not None and rep == 0 and not key.startswith("concurrent"):
                    spec.timeline_dir.mkdir(parents=True, exist_ok=True)
                    timeline = str(spec.timeline_dir / f"timeline-{key.replace('/', '-')}.json")
                done = subprocess.run([python, "-m", "edgecoe.moe.bench", str(spec_path), key, str(out), timeline],
                                      capture_output=True, text=True)
                if done.returncode != 0 or not out.is_file():
                    tail = "\n".join(done.stderr.strip().splitlines()[-8:])
                    raise RuntimeError(f"bench entry {key} (repeat {rep + 1}) failed with exit status "
                                       f"{done.returncode}:\n{tail}")
                run[key] = json.loads(out.read_text(encoding="utf-8"))
                if on_result is not None:
                    on_result(rep, key, run[key])
            runs.append({k: run[k] for k in keys})
    return MoeBenchResult(spec, summarize(runs), runs)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` by nearest rank (a value that occurred; 0 for none)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return float(ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))])


def summarize(runs: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per ``mode/entry``: medians and ranges over repeats, ratios within repeats, counts (see the module docstring)."""
    out: dict[str, dict[str, Any]] = {}
    for key in runs[0]:
        per_run = [run[key] for run in runs]

        def metric(name: str, runs_: list[dict[str, Any]] = per_run) -> list[float]:
            return [_median([p[name] for p in r["prompts"] if p[name] is not None]) for r in runs_]

        row: dict[str, Any] = {}
        for name in TIMED:
            values = metric(name)
            row[name] = _median(values)
            row[f"{name}_range"] = [min(values), max(values)]
        every_e2e = [p["e2e_ms"] for r in per_run for p in r["prompts"] if p["e2e_ms"] is not None]
        row["e2e_p50_ms"] = nearest_rank(every_e2e, 0.5)
        row["e2e_p99_ms"] = nearest_rank(every_e2e, 0.99)
        mode = key.split("/")[0]
        for ref in ("on-demand", "all-resident"):
            ref_key = f"{mode}/on-demand" if ref == "on-demand" else "page-cache/all-resident"
            if mode == "concurrent" or ref_key not in runs[0] or ref_key == key:
                continue
            for name in TIMED:
                ratios = [a / b for a, b in zip(metric(name), metric(name, [run[ref_key] for run in runs]),
                                                strict=True) if b]
                row[f"{name}_ratio_vs_{ref.replace('-', '_')}"] = _median(ratios)
                row[f"{name}_ratio_vs_{ref.replace('-', '_')}_range"] = [min(ratios), max(ratios)] if ratios else None
        last = per_run[-1]
        prompts = last["prompts"]
        for name, fold in (("prefill_peak_expert_bytes", max), ("peak_expert_bytes", max), ("loads", sum),
                           ("prefetched", sum), ("storage_read_bytes", sum)):
            values = [p[name] for p in prompts if p.get(name) is not None]
            row[name] = fold(values) if values else None
        hits = [p["hit_rate"] for p in prompts if p.get("hit_rate") is not None]
        row["hit_rate"] = _median(hits) if hits else None
        for name in ("expert_budget_bytes", "total_expert_bytes", "tokens_per_s", "load_ms",
                     "load_overlapping_compute_ms"):
            if name in last:
                row[name] = last[name]
        if last.get("device_memory"):
            row["device_memory_limit_bytes"] = last["device_memory"].get("limit_bytes")
        row["peak_rss_bytes"] = max(int(r["peak_rss_bytes"]) for r in per_run)
        tpots = [p["time_per_output_token_ms"] for r in per_run for p in r["prompts"]
                 if p.get("time_per_output_token_ms") is not None]
        if tpots:
            row["tpot_p50_ms"] = nearest_rank(tpots, 0.5)
            row["tpot_p99_ms"] = nearest_rank(tpots, 0.99)
            ttfts = [p["ttft_ms"] for r in per_run for p in r["prompts"] if p["ttft_ms"] is not None]
            row["ttft_p50_ms"] = nearest_rank(ttfts, 0.5)
            row["ttft_p99_ms"] = nearest_rank(ttfts, 0.99)
        out[key] = row
    return out


def token_agreement(runs: list[dict[str, dict[str, Any]]], reference: str = "page-cache/all-resident") -> dict[str, float]:
    """Per entry, the share of prompts whose generated tokens equal the reference entry's (first repeat)."""
    first = runs[0]
    if reference not in first:
        return {}
    want = [p.get("token_ids") for p in first[reference]["prompts"]]
    agreement = {}
    for key, result in first.items():
        got = [p.get("token_ids") for p in result["prompts"]]
        if all(g is not None for g in got) and len(got) == len(want):
            agreement[key] = sum(g == w for g, w in zip(got, want, strict=True)) / len(want)
    return agreement


def write_plots(summary: dict[str, dict[str, Any]], directory: Path) -> list[Path]:
    """Bar charts of decode tokens/s, time to first token and end-to-end latency per entry and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    keys = [k for k in summary if not k.startswith("concurrent")]
    for name, label in (("decode_tokens_per_s", "decode tokens/s"), ("ttft_ms", "time to first token (ms)"),
                        ("e2e_ms", "end-to-end per prompt (ms)")):
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(keys) + 1.2))
        values = [summary[k][name] for k in keys]
        lows = [values[i] - summary[k][f"{name}_range"][0] for i, k in enumerate(keys)]
        highs = [summary[k][f"{name}_range"][1] - values[i] for i, k in enumerate(keys)]
        ax.barh(keys, values, xerr=[lows, highs], color="#4477aa")
        ax.invert_yaxis()
        ax.set_xlabel(f"{label}, median of repeats (bars: range)")
        fig.tight_layout()
        path = directory / f"moe-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _worker(argv: list[str]) -> None:
    spec_path, key, out, timeline = argv
    spec = MoeBenchSpec.from_json(Path(spec_path).read_text(encoding="utf-8"))
    result = run_entry(spec, key, timeline_path=Path(timeline) if timeline else None)
    Path(out).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    _worker(sys.argv[1:])
