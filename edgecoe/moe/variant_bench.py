"""Serving several fine-tuned variants at one memory budget, side by side (the variant bench).

Entries, each replaying the same workload (requests of mixed variants, Poisson
arrivals) through :class:`~edgecoe.moe.variant_serving.VariantServer`:

- ``single-model``: every request sent to the first variant, fully resident:
  what serving one model costs (the throughput and first-token reference);
- ``separate-resident``: every variant whole in memory, no switching (the
  ceiling; it needs every variant's bytes, more than the budget);
- ``static-split``: the budget split evenly, each variant served by a model
  of its own within its share (the analogue of partitioning a GPU per model);
- ``swap-whole``: one variant resident at a time; a switch loads the whole
  model anew;
- ``merged``: one model averaging every variant's weights (no switching, and
  the quality of a merge);
- ``edgecoe``: the consolidated package, one model switching variants
  (shared experts stay resident; a variant's non-expert parts are a load).

The single-variant entries run the variants' own packages (each checkpoint
exported as it is); the merge is built with
:func:`~edgecoe.moe.merging.average_merge`. Memory per entry is what its
models may hold (expert budgets plus non-expert parts), the figure the budget
bounds; quality per variant comes from what the consolidated package recorded
at build time.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecoe.errors import InvalidInputError
from edgecoe.moe.bench import nearest_rank
from edgecoe.moe.generate import Generator, SamplingParams
from edgecoe.moe.model import MoeConfig, MoeModel
from edgecoe.moe.package import MoePackage, load_moe_package
from edgecoe.moe.variant_serving import Batch, ModelBackend, VariantRequest, VariantServer

ENTRIES = ("single-model", "separate-resident", "static-split", "swap-whole", "merged", "edgecoe")


@dataclass(frozen=True)
class VariantWorkload:
    """Requests of mixed variants: ``dist`` ``uniform`` or ``zipf:S`` over the variants in package order."""

    num_requests: int = 120
    rate_rps: float = 4.0
    dist: str = "uniform"
    seed: int = 1
    prompts_per_variant: int = 16

    def generate(self, variants: Sequence[str], prompts: Mapping[str, Sequence[str]]) -> list[VariantRequest]:
        """The requests (seeded; each variant's prompts drawn in turn from its own list)."""
        rng = np.random.default_rng(self.seed)
        weights: np.ndarray
        if self.dist == "uniform":
            weights = np.ones(len(variants))
        elif self.dist.startswith("zipf:"):
            weights = 1.0 / np.arange(1, len(variants) + 1, dtype=np.float64) ** float(self.dist[5:])
        else:
            raise InvalidInputError(f"dist {self.dist!r}: expected uniform or zipf:S")
        picks = rng.choice(len(variants), size=self.num_requests, p=weights / weights.sum())
        gaps = rng.exponential(1.0 / self.rate_rps, size=self.num_requests)
        arrivals = np.cumsum(gaps) - gaps[0]
        seen: dict[str, int] = {}
        out = []
        for i, (v, at) in enumerate(zip(picks, arrivals, strict=True)):
            name = variants[int(v)]
            k = seen.get(name, 0)
            seen[name] = k + 1
            out.append(VariantRequest(i, name, prompts[name][k % len(prompts[name])], float(at)))
        return out


class SingleModels:
    """A model per variant (``separate-resident``, ``static-split``, ``merged``, ``single-model``)."""

    def __init__(self, models: Mapping[str, MoeModel], *, route: Callable[[str], str] = lambda v: v) -> None:
        self.models = dict(models)
        self.generators = {v: Generator(m) for v, m in self.models.items()}
        self.route = route

    def serve(self, variant: str, prompts: Sequence[str], params: SamplingParams) -> Batch:
        generator = self.generators[self.route(variant)]
        result = generator.generate(list(prompts), params)
        return Batch(result.token_ids, result.report.ttft_ms)

    @property
    def switches(self) -> int:
        return 0

    def close(self) -> None:
        for model in self.models.values():
            model.close()


class SwapWhole:
    """One variant's whole model resident at a time; a switch builds and preloads the next one."""

    def __init__(self, packages: Mapping[str, MoePackage], budget: Mapping[str, int | None], policy: str) -> None:
        self.packages, self.budget, self.policy = packages, budget, policy
        self.current: str | None = None
        self.model: MoeModel | None = None
        self._switches = 0

    def serve(self, variant: str, prompts: Sequence[str], params: SamplingParams) -> Batch:
        if variant != self.current:
            if self.model is not None:
                self.model.close()
                self._switches += 1
            self.model = MoeModel(self.packages[variant], MoeConfig(budget=self.budget[variant], policy=self.policy))
            self.current = variant
        assert self.model is not None
        result = Generator(self.model).generate(list(prompts), params)
        return Batch(result.token_ids, result.report.ttft_ms)

    @property
    def switches(self) -> int:
        return self._switches

    def close(self) -> None:
        if self.model is not None:
            self.model.close()


def _expert_budget(package: MoePackage, memory: int) -> int | None:
    """The expert budget that keeps ``package``'s model within ``memory`` (None: it fits whole)."""
    room = memory - package.manifest.non_expert_bytes
    if room >= package.manifest.total_expert_bytes:
        return None
    if room < package.manifest.expert_bytes:
        raise InvalidInputError(f"{memory} bytes cannot hold {package.name}'s non-expert parts and one expert")
    return room


@dataclass
class EntryResult:
    entry: str
    memory_bytes: int
    switches: int
    tokens_per_s: float
    turnaround_p50_ms: float
    turnaround_p99_ms: float
    turnaround_mean_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    served: int
    refused: int


def run_entry(entry: str, consolidated: MoePackage, singles: Mapping[str, MoePackage], merged: MoePackage,
              workload: list[VariantRequest], params: SamplingParams, *, memory: int, policy: str = "on-demand",
              max_batch: int = 8, max_wait_ms: float = 2000.0) -> EntryResult:
    """One entry over ``workload``; see the module docstring."""
    variants = list(singles)
    backend: Any
    if entry == "edgecoe":
        backend = ModelBackend(MoeModel(consolidated, MoeConfig(budget=memory - _shared_files_bytes(consolidated),
                                                                policy=policy, variant=variants[0])))
        held = memory
    elif entry in ("separate-resident", "single-model"):
        chosen = variants if entry == "separate-resident" else variants[:1]
        backend = SingleModels({v: MoeModel(singles[v], MoeConfig(policy=policy)) for v in chosen},
                               route=(lambda v: v) if entry == "separate-resident" else (lambda v: variants[0]))
        held = sum(singles[v].manifest.total_expert_bytes + singles[v].manifest.non_expert_bytes for v in chosen)
    elif entry == "static-split":
        share = memory // len(variants)
        try:
            budgets = {v: _expert_budget(singles[v], share) for v in variants}
        except InvalidInputError as exc:
            raise InvalidInputError(f"static-split gives each variant {share} bytes: {exc}; raise the memory or "
                                    "leave the entry out") from None
        backend = SingleModels({v: MoeModel(singles[v], MoeConfig(budget=budgets[v], policy=policy)) for v in variants})
        held = share * len(variants)
    elif entry == "swap-whole":
        backend = SwapWhole(singles, {v: _expert_budget(singles[v], memory) for v in variants}, policy)
        held = memory
    elif entry == "merged":
        budget = _expert_budget(merged, memory)
        backend = SingleModels({"merged": MoeModel(merged, MoeConfig(budget=budget, policy=policy))},
                               route=lambda v: "merged")
        held = merged.manifest.non_expert_bytes + (budget if budget is not None else
                                                   merged.manifest.total_expert_bytes)
    else:
        raise InvalidInputError(f"unknown variant bench entry {entry!r}; valid: {', '.join(ENTRIES)}")
    server = VariantServer(backend, params, max_batch=max_batch, max_wait_ms=max_wait_ms)
    started = time.perf_counter()
    try:
        timings = server.run(workload)
    finally:
        backend.close()
    wall = time.perf_counter() - started
    turnaround = [t.turnaround_ms for t in timings]
    ttft = [t.first_token_ms for t in timings]
    return EntryResult(entry, held, backend.switches, sum(t.tokens for t in timings) / wall,
                       nearest_rank(turnaround, 0.5), nearest_rank(turnaround, 0.99),
                       statistics.fmean(turnaround) if turnaround else 0.0, nearest_rank(ttft, 0.5),
                       nearest_rank(ttft, 0.99), len(timings), len(server.refused))


def _shared_files_bytes(package: MoePackage) -> int:
    """Bytes of a consolidated package outside the cache: the tokenizer (the experts and every
    variant's non-expert parts are cache entries)."""
    return sum(f.bytes for f in package.manifest.tokenizer)


def variant_prompts(package: MoePackage, count: int) -> dict[str, list[str]]:
    """Per variant, ``count`` prompts from held-out text of its domain."""
    from edgecoe.moe.merging import domain_prompts
    from edgecoe.moe.variants import DOMAINS, held_out_text

    out = {}
    for v in package.manifest.variants:
        if v.domain not in DOMAINS:
            raise InvalidInputError(f"variant {v.name!r} records domain {v.domain!r}, which has no bundled held-out "
                                    "text; give prompts (edgecoe bench --prompts FILE)")
        out[v.name] = domain_prompts(held_out_text(v.domain), count)  # type: ignore[arg-type]
    return out


def run_variant_bench(package_dir: Path, checkpoints: Mapping[str, Path], *, workload: VariantWorkload,
                      new_tokens: int = 16, memory: int | None = None, repeat: int = 3,
                      entries: Sequence[str] = ENTRIES, policy: str = "on-demand", max_batch: int = 8,
                      max_wait_ms: float = 2000.0, prompts: Sequence[str] | None = None,
                      on_result: Callable[[int, EntryResult], None] | None = None) -> dict[str, Any]:
    """Every entry on one workload, ``repeat`` times in rotated order; raw results and medians.

    ``prompts``: used for every variant; default: held-out text of each variant's recorded domain.
    """
    from edgecoe.moe.export import export_moe
    from edgecoe.moe.merging import average_merge

    consolidated = load_moe_package(package_dir)
    manifest = consolidated.manifest
    if not manifest.variants:
        raise InvalidInputError(f"{package_dir} holds no variants (build one with edgecoe consolidate)")
    names = [v.name for v in manifest.variants]
    memory = memory or sum(f.bytes for f in manifest.files())
    per_variant = ({n: list(prompts) for n in names} if prompts
                   else variant_prompts(consolidated, workload.prompts_per_variant))
    requests = workload.generate(names, per_variant)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgecoe-variant-bench-") as tmp:
        root = Path(tmp)
        singles = {n: load_moe_package(export_moe(checkpoints[n], root / n, name=n).package) for n in names}
        merged = load_moe_package(export_moe(average_merge([checkpoints[n] for n in names], root / "merged-hf"),
                                             root / "merged", name="merged").package)
        for rep in range(repeat):
            order = list(entries[rep % len(entries):]) + list(entries[:rep % len(entries)])
            run = {}
            for entry in order:
                result = run_entry(entry, consolidated, singles, merged, requests, params, memory=memory,
                                   policy=policy, max_batch=max_batch, max_wait_ms=max_wait_ms)
                run[entry] = asdict(result)
                if on_result is not None:
                    on_result(rep, result)
            runs.append({e: run[e] for e in entries})
    summary: dict[str, dict[str, Any]] = {}
    for entry in entries:
        rows = [r[entry] for r in runs]
        row: dict[str, Any] = {"memory_bytes": rows[0]["memory_bytes"]}
        for key in ("tokens_per_s", "turnaround_p50_ms", "turnaround_p99_ms", "turnaround_mean_ms", "ttft_p50_ms",
                    "ttft_p99_ms", "switches"):
            values = [float(r[key]) for r in rows]
            row[key] = statistics.median(values)
            row[f"{key}_range"] = [min(values), max(values)]
        summary[entry] = row
    quality = {v.name: v.quality for v in manifest.variants}
    return {"memory_bytes": memory, "variants": names, "workload": asdict(workload), "new_tokens": new_tokens,
            "policy": policy, "max_batch": max_batch, "max_wait_ms": max_wait_ms, "repeat": repeat,
            "runs": runs, "summary": summary, "quality": quality}
