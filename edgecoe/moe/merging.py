"""Model-merging baselines for variant sets, and the quality figures a consolidated package is judged by.

Two ways users fold several fine-tunes of one model into one model, written to
their published definitions:

- ``average``: every parameter the mean of the variants' (model soup);
- ``ties`` (Yadav et al., TIES-Merging): per variant the task vector
  (fine-tuned minus base); keep each task vector's largest-magnitude
  ``density`` share of entries (trim), elect each entry's sign as the sign of
  the summed trimmed vectors, average only the entries that agree with it
  (disjoint merge), and add the result times ``scale`` to the base.

:func:`variant_quality` measures, per variant and on held-out text of its own
domain, the perplexity of the unmerged variant, of the consolidated package's
variant and of each merge, plus greedy-token agreement with the unmerged
variant. Everything runs on edgecoe's own engine (each checkpoint exported to
a temporary package), so the comparison is one engine throughout.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgecoe.errors import ExportError

TIES_DENSITY = 0.2
TIES_SCALE = 1.0


def read_checkpoint(checkpoint: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors checkpoint, as float32."""
    from edgecoe.moe.checkpoint import SafetensorsCheckpoint

    ckpt = SafetensorsCheckpoint(checkpoint)
    return {name: ckpt.get(name) for name in ckpt.names()}


def write_checkpoint(tensors: Mapping[str, np.ndarray], like: Path, dest: Path) -> Path:
    """A checkpoint at ``dest`` holding ``tensors``, with ``like``'s config and tokenizer files."""
    try:
        from safetensors.numpy import save_file
    except ImportError as exc:
        raise ExportError(f"merging needs the export extra (safetensors) ({exc})") from None
    dest.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
              str(dest / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        if (like / name).is_file():
            shutil.copyfile(like / name, dest / name)
    return dest


def average_merge(checkpoints: list[Path], dest: Path) -> Path:
    """Every parameter the mean of the checkpoints' (written to ``dest``)."""
    states = [read_checkpoint(c) for c in checkpoints]
    merged = {name: np.mean([s[name] for s in states], axis=0) for name in states[0]}
    return write_checkpoint(merged, checkpoints[0], dest)


def ties_merge(base: Path, checkpoints: list[Path], dest: Path, *, density: float = TIES_DENSITY,
               scale: float = TIES_SCALE) -> Path:
    """TIES-Merging of the checkpoints onto ``base`` (see the module docstring)."""
    if not 0 < density <= 1:
        raise ExportError(f"TIES density {density} must be in (0, 1]")
    base_state = read_checkpoint(base)
    states = [read_checkpoint(c) for c in checkpoints]
    merged = {name: ties_tensor(theta, [s[name] for s in states], density=density, scale=scale)
              for name, theta in base_state.items()}
    return write_checkpoint(merged, checkpoints[0], dest)


def ties_tensor(base: np.ndarray, tuned: list[np.ndarray], *, density: float = TIES_DENSITY,
                scale: float = TIES_SCALE) -> np.ndarray:
    """One parameter TIES-merged: trim each task vector, elect signs, average the agreeing entries."""
    taus = np.stack([t.astype(np.float64) - base for t in tuned]).reshape(len(tuned), -1)
    magnitude = np.abs(taus)
    keep = max(1, round(density * taus.shape[1]))
    # trim: per task vector, its `keep` largest magnitudes survive (ties at the cut survive too)
    cut = -np.partition(-magnitude, keep - 1, axis=1)[:, keep - 1:keep]
    trimmed = np.where(magnitude >= cut, taus, 0.0)
    sign = np.sign(trimmed.sum(axis=0))
    agree = (np.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(axis=0)
    mean = np.where(count > 0, (trimmed * agree).sum(axis=0) / np.maximum(count, 1), 0.0)
    return (base.astype(np.float64) + scale * mean.reshape(base.shape)).astype(np.float32)


@dataclass
class VariantQuality:
    """One variant's quality figures (perplexity on held-out text of its domain; agreement on greedy tokens)."""

    variant: str
    domain: str
    tokens: int
    perplexity_base: float  # the model before fine-tuning: what the fine-tune gained
    perplexity_unmerged: float
    perplexity_consolidated: float
    perplexity_average: float
    perplexity_ties: float
    token_agreement: float  # consolidated vs unmerged, share of greedy tokens equal, position by position

    @property
    def consolidated_vs_unmerged(self) -> float:
        return self.perplexity_consolidated / self.perplexity_unmerged


def domain_prompts(text: str, count: int, chars: int = 48) -> list[str]:
    """``count`` prompts spread over ``text``: the starts of its longer lines."""
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) > 24]
    step = max(1, len(lines) // max(count, 1))
    return [line[:chars] for line in lines[::step][:count]]


def variant_quality(package: Path, checkpoints: Mapping[str, Path], domains: Mapping[str, str], base: Path, *,
                    max_tokens: int = 2048, prompts: int = 8, new_tokens: int = 16) -> list[VariantQuality]:
    """Quality of each variant of the consolidated ``package`` against its unmerged checkpoint and the merges."""
    from edgecoe.moe.evaluate import perplexity
    from edgecoe.moe.export import export_moe
    from edgecoe.moe.generate import Generator, SamplingParams
    from edgecoe.moe.model import MoeConfig, MoeModel
    from edgecoe.moe.package import load_moe_package
    from edgecoe.moe.variants import held_out_text

    names = list(checkpoints)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    out = []
    with tempfile.TemporaryDirectory(prefix="edgecoe-merge-") as tmp:
        root = Path(tmp)
        paths = [Path(checkpoints[n]) for n in names]
        merges = {"average": average_merge(paths, root / "average-hf"),
                  "ties": ties_merge(base, paths, root / "ties-hf")}
        merges["base"] = base
        merged_packages = {k: export_moe(v, root / k, name=k).package for k, v in merges.items()}

        def measure(pkg: Path, variant: str | None, text: str, asks: list[str]) -> tuple[float, int, list[list[int]]]:
            model = MoeModel(load_moe_package(pkg), MoeConfig(variant=variant))
            try:
                generator = Generator(model)
                ids = generator.encode(text)[:max_tokens]
                tokens = [list(generator.generate([p], params).token_ids[0]) for p in asks]
                return perplexity(model, ids), len(ids) - 1, tokens
            finally:
                model.close()

        for name in names:
            domain = domains[name]
            text = held_out_text(domain)  # type: ignore[arg-type]
            asks = domain_prompts(text, prompts)
            unmerged_pkg = export_moe(checkpoints[name], root / f"unmerged-{name}", name=f"unmerged-{name}").package
            ppl_u, count, want = measure(unmerged_pkg, None, text, asks)
            ppl_c, _, got = measure(package, name, text, asks)
            ppl_a, _, _ = measure(merged_packages["average"], None, text, [])
            ppl_t, _, _ = measure(merged_packages["ties"], None, text, [])
            ppl_b, _, _ = measure(merged_packages["base"], None, text, [])
            same = sum(a == b for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=False))
            total = sum(len(w) for w in want)
            out.append(VariantQuality(name, str(domain), count, ppl_b, ppl_u, ppl_c, ppl_a, ppl_t,
                                      same / total if total else 1.0))
    return out


def record_quality(package: Path, quality: list[VariantQuality]) -> None:
    """Write the figures into the package's manifest (``variants[].quality``), atomically."""
    import os

    from edgecoe.moe.manifest import MoeManifest
    from edgecoe.package.manifest import MANIFEST_NAME

    path = package / MANIFEST_NAME
    manifest = MoeManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    by_name = {q.variant: q for q in quality}
    variants = []
    for v in manifest.variants:
        q = by_name.get(v.name)
        figures = {k: float(x) for k, x in asdict(q).items() if isinstance(x, float)} if q else {}
        variants.append(v.model_copy(update={"quality": figures}))
    updated = manifest.model_copy(update={"variants": variants})
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp")
    tmp.write_text(MoeManifest.model_validate(updated.model_dump()).to_json(), encoding="utf-8")
    os.replace(tmp, path)
