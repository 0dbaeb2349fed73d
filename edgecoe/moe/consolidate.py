"""Consolidating fine-tuned variants of one MoE model into one package that stores shared experts once.

Per (layer, expert slot) the variants' experts are compared three ways:

- ``l2``: relative weight distance ``||W_a - W_b|| / ||W_a||`` over the expert's weights;
- ``cosine``: 1 - cosine similarity of the flattened weights;
- ``functional``: on the calibration tokens variant ``a`` routes to that slot (its own
  domain's text), ``||f_b(X) - f_a(X)|| / ||f_a(X)||``: how much ``a``'s expert output
  changes if ``b``'s expert stands in for it. This decides sharing; a slot ``a``
  routes no calibration token to falls back to ``l2``.

Grouping is greedy in variant order: each variant's expert joins the nearest
stored expert of that slot within the threshold, else it is stored too. The
first variant's experts are therefore always stored as they are (it is exact);
the others share where their experts barely moved. The threshold is given, or
chosen as the smallest one whose package fits ``memory_target`` of separate
copies of every variant (the non-expert parts count: each variant keeps its own
attention, norms and router, and byte-identical files are stored once).

The package is an ordinary MoE package whose ``layers[l].experts`` list every
stored expert of layer l (the first variant's in slot order first, then the
extra copies), plus ``variants``: per variant its dense parts and which stored
expert each slot maps to (:mod:`edgecoe.moe.manifest`).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import edgecoe
from edgecoe.errors import ExportError
from edgecoe.moe.architectures import Architecture, architecture_of
from edgecoe.moe.checkpoint import SafetensorsCheckpoint, read_config
from edgecoe.moe.manifest import (
    Consolidation,
    LayerRecord,
    MoeManifest,
    TensorFile,
    VariantRecord,
)
from edgecoe.package.manifest import FileRecord
from edgecoe.schema import SAFE_NAME_PATTERN

Progress = Callable[[str, int, int], None]

CALIBRATION_TOKENS = 1024
"""Tokens of each variant's own training text its experts' functional distances are measured on."""


@dataclass
class SlotDistances:
    """One (layer, slot): ``[V, V]`` matrices, row ``a`` measured from variant ``a``'s side."""

    functional: np.ndarray
    l2: np.ndarray
    cosine: np.ndarray
    tokens: list[int]  # calibration tokens each variant routed to the slot

    def deciding(self) -> np.ndarray:
        """The distance sharing is decided by: functional where the variant used the slot, else l2."""
        out = self.functional.copy()
        for a, count in enumerate(self.tokens):
            if count == 0:
                out[a] = self.l2[a]
        return out


@dataclass
class Plan:
    """Which stored expert each variant's slot maps to, at one threshold."""

    threshold: float
    groups: list[list[list[int]]]  # [layer][slot] -> per variant, the index of the variant whose expert is stored
    stored: int = 0

    def __post_init__(self) -> None:
        self.stored = sum(len(set(slot)) for layer in self.groups for slot in layer)


def plan_sharing(distances: list[list[SlotDistances]], threshold: float) -> Plan:
    """Greedy grouping in variant order (see the module docstring)."""
    groups = []
    for layer in distances:
        slots = []
        for slot in layer:
            d = slot.deciding()
            reps: list[int] = []
            owner = []
            for a in range(d.shape[0]):
                near = [(float(d[a, r]), r) for r in reps if d[a, r] <= threshold]
                if near:
                    owner.append(min(near)[1])
                else:
                    reps.append(a)
                    owner.append(a)
            slots.append(owner)
        groups.append(slots)
    return Plan(threshold, groups)


def choose_threshold(distances: list[list[SlotDistances]], *, fixed_bytes: int, expert_bytes: int,
                     separate_bytes: int, memory_target: float) -> tuple[Plan, bool]:
    """The smallest threshold whose package fits ``memory_target`` x ``separate_bytes``; (plan, whether it fits).

    ``fixed_bytes``: what the package holds besides the experts. Where even sharing every slot
    does not fit, the plan sharing the most is returned with False.
    """
    limit = memory_target * separate_bytes
    candidates = sorted({0.0, *(float(v) for layer in distances for s in layer for v in s.deciding().ravel())})
    best = plan_sharing(distances, candidates[-1])
    for t in candidates:
        plan = plan_sharing(distances, t)
        if fixed_bytes + plan.stored * expert_bytes <= limit:
            return plan, True
        if plan.stored < best.stored:
            best = plan
    return best, fixed_bytes + best.stored * expert_bytes <= limit


# -- measuring ----------------------------------------------------------------------------------
def _expert(ckpt: SafetensorsCheckpoint, arch: Architecture, layer: int, slot: int, hidden: int,
            inter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    names = arch.expert(layer, slot)
    return (ckpt.get(names.gate, (inter, hidden)), ckpt.get(names.up, (inter, hidden)),
            ckpt.get(names.down, (hidden, inter)))


def _widened(weights: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gate, up, down = weights
    return gate.astype(np.float64), up.astype(np.float64), down.astype(np.float64)


def expert_output(weights: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The SwiGLU expert FFN on rows ``x [N, H]`` (float64 for the comparison)."""
    gate, up, down = (np.asarray(w, dtype=np.float64) for w in weights)  # no copy when already float64
    g = x @ gate.T
    return ((g / (1.0 + np.exp(-g))) * (x @ up.T)) @ down.T


def routed_inputs(checkpoint: Path, text: str, *, tokens: int = CALIBRATION_TOKENS,
                  seq_len: int = 128) -> list[dict[int, np.ndarray]]:
    """Per layer, slot -> the routed-expert inputs ``[N, H]`` the checkpoint sends that slot on ``text``.

    Runs the checkpoint in transformers (the export extra) with hooks on each sparse block.
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    except ImportError as exc:
        raise ExportError(f"consolidation needs the export extra (torch, transformers) ({exc})") from None
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(checkpoint / "tokenizer.json"))
    ids = tokenizer(text)["input_ids"][:tokens]
    model: Any = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model.eval()
    config = model.config
    top_k = int(config.num_experts_per_tok)
    captured: list[list[np.ndarray]] = [[] for _ in range(config.num_hidden_layers)]
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def hook(_module: Any, args: tuple[Any, ...], i: int = i) -> None:
            captured[i].append(args[0].detach().reshape(-1, args[0].shape[-1]).numpy().astype(np.float64))
        hooks.append(layer.block_sparse_moe.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for start in range(0, len(ids), seq_len):
                chunk = ids[start:start + seq_len]
                if len(chunk) > 1:
                    model(input_ids=torch.tensor([chunk]))
    finally:
        for h in hooks:
            h.remove()
    out = []
    for i, layer in enumerate(model.model.layers):
        x = np.concatenate(captured[i]) if captured[i] else np.zeros((0, config.hidden_size))
        router = layer.block_sparse_moe.gate.weight.detach().numpy().astype(np.float64)
        chosen = np.argsort(-(x @ router.T), axis=-1, kind="stable")[:, :top_k]
        out.append({e: x[np.any(chosen == e, axis=-1)] for e in range(config.num_local_experts)})
    return out


def measure_distances(checkpoints: list[Path], texts: list[str], *,
                      progress: Progress | None = None) -> list[list[SlotDistances]]:
    """Every slot's distances between the variants (see the module docstring)."""
    report = progress or (lambda what, done, total: None)
    config = read_config(checkpoints[0])
    arch = architecture_of(config)
    if arch.name != "mixtral":
        raise ExportError(f"consolidation covers mixtral checkpoints, not {arch.name}")
    shape, moe = arch.model_shape(config), arch.moe_shape(config)
    ckpts = [SafetensorsCheckpoint(c) for c in checkpoints]
    inputs = []
    for i, (checkpoint, text) in enumerate(zip(checkpoints, texts, strict=True)):
        report(f"calibration activations {checkpoint.name}", i + 1, len(checkpoints))
        inputs.append(routed_inputs(checkpoint, text))
    v = len(checkpoints)
    out = []
    for layer in range(shape.num_layers):
        row = []
        for slot in range(moe.num_experts):
            # each variant's weights widened once per slot, not once per pair
            weights = [_widened(_expert(c, arch, layer, slot, shape.hidden_size, moe.intermediate_size))
                       for c in ckpts]
            flat = [np.concatenate([w.ravel() for w in ws]) for ws in weights]
            norms = [float(np.linalg.norm(f)) for f in flat]
            l2 = np.zeros((v, v))
            cosine = np.zeros((v, v))
            functional = np.zeros((v, v))
            for a in range(v):
                x = inputs[a][layer][slot]
                ref = expert_output(weights[a], x) if len(x) else None
                for b in range(v):
                    l2[a, b] = float(np.linalg.norm(flat[a] - flat[b]) / max(norms[a], 1e-30))
                    cosine[a, b] = float(1.0 - flat[a] @ flat[b] / max(norms[a] * norms[b], 1e-30))
                    if ref is not None:
                        other = expert_output(weights[b], x)
                        functional[a, b] = float(np.linalg.norm(other - ref) / max(np.linalg.norm(ref), 1e-30))
            row.append(SlotDistances(functional, l2, cosine, [len(inputs[a][layer][slot]) for a in range(v)]))
        out.append(row)
    return out


# -- writing ----------------------------------------------------------------------------------
@dataclass
class ConsolidationReport:
    package: Path
    variants: list[str]
    threshold: float
    fits: bool
    stored_experts: int
    total_experts: int
    consolidated_bytes: int
    separate_bytes: int
    shared: dict[str, float] = field(default_factory=dict)  # variant -> share of its slots not stored for it

    @property
    def memory_ratio(self) -> float:
        return self.consolidated_bytes / self.separate_bytes


def _variant_files(ckpt: SafetensorsCheckpoint, arch: Architecture, checkpoint: Path) -> dict[str, bytes]:
    """A variant's non-expert files (relative name -> bytes), built as ``edgecoe export`` builds them."""
    from edgecoe.moe.export import _dense
    from edgecoe.moe.graphs import head_graph

    config = read_config(checkpoint)
    shape, moe = arch.model_shape(config), arch.moe_shape(config)
    embed = ckpt.get(arch.embed, (shape.vocab_size, shape.hidden_size))
    lm_head = ckpt.get(arch.lm_head, (shape.vocab_size, shape.hidden_size)) if arch.lm_head in ckpt else embed
    files = {"embed.bin": embed.astype("<f4").tobytes(),
             "head.onnx": head_graph(shape, final_norm=ckpt.get(arch.final_norm, (shape.hidden_size,)),
                                     lm_head=lm_head).SerializeToString()}
    for i in range(shape.num_layers):
        files[f"layer_{i:03d}.onnx"] = _dense(ckpt, arch, shape, moe, i).SerializeToString()
    return files


def consolidate(checkpoints: Mapping[str, Path], calibration: Mapping[str, str], dest: Path, *,
                name: str | None = None, domains: Mapping[str, str] | None = None,
                memory_target: float | None = 0.4, threshold: float | None = None, overwrite: bool = False,
                progress: Progress | None = None) -> ConsolidationReport:
    """Consolidate the variants' checkpoints (first = the exact one) into one MoE package at ``dest``.

    Args:
        checkpoints: variant name -> its Hugging Face checkpoint (one architecture and shape).
        calibration: variant name -> text like what it serves (its functional distances are measured
            on the first :data:`CALIBRATION_TOKENS` tokens).
        domains: variant name -> what it was tuned on (recorded only).
        threshold: share experts within this functional distance; None: the smallest meeting
            ``memory_target``.

    Raises:
        ExportError: fewer than two variants, differing shapes, or an unsupported checkpoint.
    """
    from edgecoe.moe.export import export_moe

    report = progress or (lambda what, done, total: None)
    names = list(checkpoints)
    if len(names) < 2:
        raise ExportError(f"consolidation needs at least two variants, got {names}")
    bad = [n for n in names if not re.match(SAFE_NAME_PATTERN, n)]
    if bad:
        raise ExportError(f"variant names {bad} must match {SAFE_NAME_PATTERN}")
    paths = [Path(checkpoints[n]) for n in names]
    configs = [read_config(p) for p in paths]
    arch = architecture_of(configs[0])
    shapes = [(arch.model_shape(c), arch.moe_shape(c)) for c in configs]
    differ = [n for n, s in zip(names, shapes, strict=True) if s != shapes[0]]
    if differ:
        raise ExportError(f"variants {differ} differ in shape from {names[0]}; consolidation needs one architecture")
    missing = [n for n in names if not calibration.get(n, "").strip()]
    if missing:
        raise ExportError(f"variants {missing} have no calibration text")
    texts = [calibration[n] for n in names]
    distances = measure_distances(paths, texts, progress=report)

    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="edgecoe-consolidate-") as tmp:
        # the first variant as an ordinary package: its files, experts and manifest are the base
        base = export_moe(paths[0], Path(tmp) / "base", name=name or dest.name, progress=report)
        return _write_consolidated(base.package, dest, names, paths, arch, distances, domains=domains,
                                   memory_target=memory_target, threshold=threshold, overwrite=overwrite)


def _write_consolidated(base_package: Path, dest: Path, names: list[str], paths: list[Path], arch: Architecture,
                        distances: list[list[SlotDistances]], *, domains: Mapping[str, str] | None,
                        memory_target: float | None, threshold: float | None,
                        overwrite: bool) -> ConsolidationReport:
    from edgecoe.moe.package import load_moe_package
    from edgecoe.package.writer import PackageWriter

    manifest = load_moe_package(base_package).manifest
    expert_bytes = manifest.expert_bytes
    ckpts = [SafetensorsCheckpoint(p) for p in paths]
    variant_files = [_variant_files(c, arch, p) for c, p in zip(ckpts, paths, strict=True)]
    single_bytes = sum(f.bytes for f in manifest.files())
    separate = single_bytes * len(names)
    # non-expert bytes once byte-identical files are stored once
    unique = {hashlib.sha256(data).hexdigest(): len(data) for files in variant_files for data in files.values()}
    tokenizer_bytes = sum(f.bytes for f in manifest.tokenizer)
    fixed = tokenizer_bytes + sum(unique.values())
    if threshold is None:
        plan, fits = choose_threshold(distances, fixed_bytes=fixed, expert_bytes=expert_bytes,
                                      separate_bytes=separate, memory_target=memory_target or 1.0)
    else:
        plan = plan_sharing(distances, threshold)
        fits = memory_target is None or fixed + plan.stored * expert_bytes <= memory_target * separate

    shape, moe = manifest.model, manifest.moe
    with PackageWriter(dest, overwrite=overwrite) as writer:
        # copy the base package's files, then add what the other variants need
        for record in manifest.files():
            writer.write_bytes(record.path, (base_package / record.path).read_bytes())
        by_hash: dict[str, FileRecord] = {}
        base_names = {"embed.bin": manifest.embed.file, "head.onnx": manifest.head,
                      **{f"layer_{i:03d}.onnx": layer.dense for i, layer in enumerate(manifest.layers)}}
        for rel, data in variant_files[0].items():
            by_hash[hashlib.sha256(data).hexdigest()] = base_names[rel]
        records: list[dict[str, FileRecord]] = [base_names]
        for vname, files in zip(names[1:], variant_files[1:], strict=True):
            mine = {}
            for rel, data in files.items():
                digest = hashlib.sha256(data).hexdigest()
                if digest not in by_hash:
                    by_hash[digest] = writer.write_bytes(f"variants/{vname}/{rel}", data)
                mine[rel] = by_hash[digest]
            records.append(mine)
        layers = []
        maps: list[list[list[int]]] = [[] for _ in names]  # variant -> layer -> slot -> stored index
        for i in range(shape.num_layers):
            stored = list(manifest.layers[i].experts)
            index_of: dict[tuple[int, int], int] = {(0, e): e for e in range(moe.num_experts)}  # (owner, slot)
            for slot in range(moe.num_experts):
                for owner in sorted(set(plan.groups[i][slot]) - {0}):
                    ws = _expert(ckpts[owner], arch, i, slot, shape.hidden_size, moe.intermediate_size)
                    data = np.concatenate([ws[0], ws[1]]).astype("<f4").tobytes() + ws[2].astype("<f4").tobytes()
                    index_of[(owner, slot)] = len(stored)
                    stored.append(writer.write_bytes(f"experts/L{i:03d}/E{len(stored):03d}.bin", data))
            layers.append(LayerRecord(dense=manifest.layers[i].dense, experts=stored))
            for v in range(len(names)):
                maps[v].append([index_of[(plan.groups[i][slot][v], slot)] for slot in range(moe.num_experts)])
        variants = [VariantRecord(
            name=vname, domain=(domains or {}).get(vname, ""),
            embed=TensorFile(file=records[v]["embed.bin"], dtype="float32", shape=manifest.embed.shape),
            head=records[v]["head.onnx"], dense=[records[v][f"layer_{i:03d}.onnx"] for i in range(shape.num_layers)],
            experts=maps[v]) for v, vname in enumerate(names)]
        draft = manifest.model_copy(update={"layers": layers, "variants": variants})
        consolidated = sum(f.bytes for f in draft.files())  # every file once, as written
        total_slots = shape.num_layers * moe.num_experts
        shared = {vname: sum(plan.groups[i][s][v] != v for i in range(shape.num_layers)
                             for s in range(moe.num_experts)) / total_slots for v, vname in enumerate(names)}
        out = manifest.model_copy(update={
            "layers": layers, "variants": variants, "description": f"{len(names)} variants of {arch.name} MoE",
            "created_by": f"edgecoe {edgecoe.__version__} consolidate",
            "consolidation": Consolidation(
                metric="functional", threshold=plan.threshold, memory_target=memory_target,
                separate_bytes=separate, consolidated_bytes=consolidated, stored_experts=plan.stored,
                shared=shared, calibration_tokens=CALIBRATION_TOKENS)})
        out = MoeManifest.model_validate(out.model_dump())
        path = writer.commit(out, validate=lambda r: load_moe_package(r, verify="full"))
    return ConsolidationReport(path, names, plan.threshold, fits, plan.stored, total_slots * len(names),
                               consolidated, separate, shared)
