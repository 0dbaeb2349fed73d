"""Fine-tuned variants of an MoE demo model, built offline (``kind: moe-variants`` recipes).

A variant set is one base model fine-tuned once per text domain, each domain
shipped with Python itself so the build needs no download and gives the same
bytes on every machine with the same Python:

- ``docs``: the documentation topics (``pydoc_data``) the base was trained on;
- ``code``: the standard library's own source files;
- ``unicode``: the Unicode character names (``unicodedata``), one per line;
- ``markup``: IDLE's HTML help page.

Each domain splits into training text and held-out text (never trained on:
the quality figures of :mod:`edgecoe.moe.consolidate` are measured on it).
Fine-tuning runs on one thread with deterministic algorithms from the base
checkpoint; the recipe names parts to freeze (typically the embeddings and
the LM head, as many fine-tunes do), which then stay byte-identical across
variants and are stored once.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from edgecoe.errors import ExportError, InvalidInputError, Problem, SpecError
from edgecoe.schema import SAFE_NAME_PATTERN, StrictModel, load_document

if TYPE_CHECKING:
    from edgecoe.moe.consolidate import ConsolidationReport

Domain = Literal["docs", "code", "unicode", "markup"]
DOMAINS: tuple[Domain, ...] = ("docs", "code", "unicode", "markup")

HELD_OUT_EVERY = 10
"""Every tenth text of a domain (file, block of names, stretch of markup) is held out."""

Progress = Callable[[str, int, int], None]

CALIBRATION_CHARS = 200_000
"""Characters of each domain's training text handed to consolidation (it reads the first tokens only)."""


class VariantSpec(StrictModel):
    name: str = Field(pattern=SAFE_NAME_PATTERN)
    domain: Domain


class VariantsRecipe(StrictModel):
    """Everything that determines a variant set's bytes."""

    kind: Literal["moe-variants"]
    name: str = Field(pattern=SAFE_NAME_PATTERN)
    description: str = ""
    base: str = Field(pattern=SAFE_NAME_PATTERN, description="the MoE recipe (models/recipes/NAME.yaml) fine-tuned")
    seed: int = Field(ge=0)
    method: Literal["fine-tune", "perturb"] = Field(default="fine-tune", description=(
        "fine-tune on each variant's domain, or (for speed and memory work on untrained models) move a "
        "seeded share of each variant's experts far and the rest barely"))
    train_steps: int = Field(default=0, ge=0, le=100_000)
    moved_share: float = Field(default=0.15, gt=0, le=1, description="perturb: share of experts moved far")
    perturb_scale: float = Field(default=0.3, gt=0, le=10, description=(
        "perturb: a moved expert's change, relative to its weights' mean magnitude"))
    batch_size: int = Field(default=16, ge=1)
    seq_len: int = Field(default=128, ge=16)
    learning_rate: float = Field(default=1e-3, gt=0, lt=1)
    freeze: list[Literal["embed", "head"]] = Field(default=["embed", "head"], description=(
        "parts not fine-tuned (byte-identical across variants, so stored once)"))
    variants: list[VariantSpec] = Field(min_length=2, max_length=16)
    memory_target: float = Field(default=0.4, gt=0, le=1, description=(
        "consolidated bytes as a share of separate copies of every variant"))

    @model_validator(mode="after")
    def _unique(self) -> VariantsRecipe:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names repeat: {names}")
        if self.method == "fine-tune" and self.train_steps < 1:
            raise ValueError("method fine-tune needs train_steps >= 1")
        return self


def is_variants_recipe(path: Path) -> bool:
    """Whether the recipe file declares ``kind: moe-variants``."""
    from edgecoe.moe.demo import recipe_declares

    return recipe_declares(path, "moe-variants")


def load_variants_recipe(path: str | Path) -> VariantsRecipe:
    """Read and validate a variant-set recipe (YAML).

    Raises:
        SpecError: naming the file and each invalid field.
    """
    return load_document(path, VariantsRecipe, error=SpecError, max_bytes=64 * 1024)


# -- the domains --------------------------------------------------------------------------------
def _split(texts: list[str]) -> tuple[list[str], list[str]]:
    held = [t for i, t in enumerate(texts) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    train = [t for i, t in enumerate(texts) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    return train, held


def domain_text(domain: Domain) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts) of ``domain``; see the module docstring.

    Raises:
        ExportError: an unknown domain, or this Python lacks the domain's text.
    """
    if domain == "docs":
        from edgecoe.moe.demo import documentation_text

        return documentation_text()
    if domain == "code":
        import sysconfig

        files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
        texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
        if not texts:
            raise ExportError("the code domain reads the standard library's .py files; this Python has none")
        return _split(texts)
    if domain == "unicode":
        import unicodedata

        # names ending in a code point (CJK UNIFIED IDEOGRAPH-4E00 and the like) say nothing: left out
        names = [n for n in (unicodedata.name(chr(i), "") for i in range(0x110000))
                 if n and not n[-1].isdigit() and "-" not in n[-6:]]
        return _split(["\n".join(names[i:i + 64]) for i in range(0, len(names), 64)])
    if domain == "markup":
        import sysconfig

        path = Path(sysconfig.get_paths()["stdlib"]) / "idlelib" / "help.html"
        if not path.is_file():
            raise ExportError(f"the markup domain reads {path}, which this Python lacks")
        lines = path.read_text(encoding="utf-8").splitlines()
        return _split(["\n".join(lines[i:i + 40]) for i in range(0, len(lines), 40)])
    raise ExportError(f"unknown text domain {domain!r}; valid: {', '.join(DOMAINS)}")


def held_out_text(domain: Domain) -> str:
    """The domain's held-out texts, joined."""
    return "\n".join(domain_text(domain)[1])


# -- fine-tuning ---------------------------------------------------------------------------------
def fine_tune(base: Path, dest: Path, *, domain: Domain, recipe: VariantsRecipe, seed: int,
              progress: Progress) -> Path:
    """Fine-tune the checkpoint at ``base`` on ``domain``'s training text; save it at ``dest``.

    Raises:
        ExportError: the export extra (torch, transformers) is missing.
    """
    try:
        import numpy as np
        import torch
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    except ImportError as exc:
        raise ExportError(f"variant sets need the export extra (torch, transformers): pip install "
                          f"'edgecoe[export]' ({exc})") from None
    train, _ = domain_text(domain)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(base / "tokenizer.json"))
    eos = 2
    ids = np.array([t for text in train for t in [*tokenizer(text)["input_ids"][1:], eos]], np.int64)
    if len(ids) < recipe.seq_len + 2:
        raise ExportError(f"domain {domain!r} has {len(ids)} training tokens, fewer than seq_len={recipe.seq_len}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread, deterministic kernels: the same seed gives the same bytes
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(seed)
        model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        frozen = {"embed": model.get_input_embeddings(), "head": model.get_output_embeddings()}
        for part in recipe.freeze:
            for param in frozen[part].parameters():
                param.requires_grad_(False)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=recipe.learning_rate, weight_decay=0.0)
        rng = np.random.default_rng(seed)
        model.train()
        for step in range(recipe.train_steps):
            starts = rng.integers(0, len(ids) - recipe.seq_len - 1, recipe.batch_size)
            batch = torch.from_numpy(np.stack([ids[s:s + recipe.seq_len] for s in starts]))
            out = model(input_ids=batch, labels=batch, output_router_logits=True)
            optimizer.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            progress(f"{dest.name}: loss {out.loss.detach().item():.2f}", step + 1, recipe.train_steps)
        model.eval()
        tmp = dest.parent / f".{dest.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (base / name).is_file():
                shutil.copyfile(base / name, tmp / name)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    return dest


BARELY = 1e-4
"""A perturbed variant's unmoved experts (and its attention) change by this, relative to their mean magnitude."""


def perturb(base: Path, dest: Path, *, recipe: VariantsRecipe, seed: int, progress: Progress) -> Path:
    """A synthetic variant of ``base``: a seeded ``moved_share`` of its experts moved by ``perturb_scale``,
    the rest of its experts and its attention by :data:`BARELY`; embeddings, norms and head as they are."""
    import re

    import numpy as np

    from edgecoe.moe.merging import read_checkpoint, write_checkpoint

    state = read_checkpoint(base)
    rng = np.random.default_rng(seed)
    expert = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.")
    slots = sorted({(int(m[1]), int(m[2])) for name in state if (m := expert.match(name))})
    if not slots:
        raise ExportError(f"{base}: no Mixtral expert weights to perturb")
    moved = {slots[i] for i in rng.choice(len(slots), size=max(1, round(recipe.moved_share * len(slots))),
                                          replace=False)}
    out = {}
    for i, (name, value) in enumerate(sorted(state.items())):
        m = expert.match(name)
        if m is not None:
            size = recipe.perturb_scale if (int(m[1]), int(m[2])) in moved else BARELY
        elif "self_attn" in name:
            size = BARELY
        else:
            out[name] = value
            continue
        noise = rng.standard_normal(value.shape, dtype=np.float32)
        out[name] = value + np.float32(size * float(np.abs(value).mean())) * noise
        progress(f"{dest.name}: perturbing", i + 1, len(state))
    return write_checkpoint(out, base, dest)


def build_variants(recipe_path: Path, *, models_dir: Path, dest: Path | None = None, force: bool = False,
                   measure_quality: bool = True,
                   progress: Progress | None = None) -> tuple[ConsolidationReport, dict[str, Path]]:
    """Build a variant-set recipe: the base demo (if missing), one fine-tuned checkpoint per variant
    under ``models_dir/NAME-hf/``, and the consolidated package at ``dest`` (default ``models_dir/NAME``),
    with each variant's quality measured and recorded in it (``measure_quality``).

    Returns:
        (what consolidation did, variant name -> checkpoint directory)
    """
    from edgecoe.demo import find_recipe
    from edgecoe.moe.consolidate import consolidate
    from edgecoe.moe.demo import build_moe_demo

    recipe = load_variants_recipe(recipe_path)
    report = progress or (lambda what, done, total: None)
    try:
        base_recipe = find_recipe(recipe.base)
    except InvalidInputError as exc:
        raise SpecError(recipe_path, [Problem("base", str(exc))]) from None
    base = models_dir / f"{recipe.base}-hf"
    if not (base / "config.json").is_file():
        build_moe_demo(base_recipe, models_dir=models_dir, progress=report)
    root = models_dir / f"{recipe.name}-hf"
    root.mkdir(parents=True, exist_ok=True)
    checkpoints: dict[str, Path] = {}
    for i, variant in enumerate(recipe.variants):
        out = root / variant.name
        if force or not (out / "config.json").is_file():
            if recipe.method == "perturb":
                perturb(base, out, recipe=recipe, seed=recipe.seed + i, progress=report)
            else:
                fine_tune(base, out, domain=variant.domain, recipe=recipe, seed=recipe.seed + i, progress=report)
        checkpoints[variant.name] = out
    package = dest or models_dir / recipe.name
    report_ = consolidate({v.name: checkpoints[v.name] for v in recipe.variants},
                          {v.name: "\n".join(domain_text(v.domain)[0])[:CALIBRATION_CHARS] for v in recipe.variants},
                          package, name=recipe.name, domains={v.name: v.domain for v in recipe.variants},
                          memory_target=recipe.memory_target, overwrite=True, progress=report)
    if measure_quality and recipe.method == "fine-tune":  # perturbed untrained models say nothing
        from edgecoe.moe.merging import record_quality, variant_quality

        report("quality", 0, 1)
        record_quality(package, variant_quality(package, checkpoints, {v.name: v.domain for v in recipe.variants},
                                                base))
    return report_, checkpoints
