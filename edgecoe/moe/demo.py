"""MoE demo models built offline: a Mixtral trained on Python's own documentation, and a large one.

``edgecoe demo build moe-tiny`` trains a small Mixtral-architecture model (a
byte-level BPE tokenizer from the ``tokenizers`` library, then a few hundred
AdamW steps with the router's load-balancing loss) on the documentation text
that ships with Python (``pydoc_data``), so its routing is learned, not
random. The last topics are held out: they are the default text perplexity is
measured on. ``moe-large`` is the same architecture at a size for memory and
speed work (seeded random weights unless the recipe asks for training).

Each recipe writes a Hugging Face checkpoint (``models/NAME-hf``: safetensors,
config, tokenizer; loadable with ``AutoModelForCausalLM``/``AutoTokenizer``)
and exports it to the edgecoe package ``models/NAME``. A seed gives the same
bytes: training runs on one thread with deterministic algorithms.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgecoe.errors import ExportError, SpecError
from edgecoe.schema import StrictModel, load_document

HELD_OUT_TOPICS = 8
"""The last documentation topics (sorted by name) are never trained on: evaluation text."""


class MoeRecipe(StrictModel):
    """Everything that determines an MoE demo's bytes."""

    kind: Literal["moe"]
    name: str
    description: str = ""
    seed: int = Field(ge=0)
    architecture: Literal["mixtral"] = "mixtral"
    vocab_size: int = Field(ge=300, le=65536)
    hidden_size: int = Field(ge=8)
    intermediate_size: int = Field(ge=8)
    num_layers: int = Field(ge=1, le=64)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    num_experts: int = Field(ge=2, le=64)
    top_k: int = Field(ge=1)
    max_position_embeddings: int = Field(default=1024, ge=64)
    train_steps: int = Field(ge=0, description="0: seeded random weights, no training")
    batch_size: int = Field(default=16, ge=1)
    seq_len: int = Field(default=128, ge=16)
    learning_rate: float = Field(default=3e-3, gt=0, lt=1)
    router_aux_loss_coef: float = Field(default=0.02, ge=0)


def recipe_declares(path: Path, kind: str) -> bool:
    """Whether the recipe file declares ``kind: KIND`` (read as text: recipes are small)."""
    try:
        return any(line.strip() == f"kind: {kind}" for line in path.read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError):
        return False


def is_moe_recipe(path: Path) -> bool:
    """Whether the recipe file declares ``kind: moe``."""
    return recipe_declares(path, "moe")


def load_moe_recipe(path: str | Path) -> MoeRecipe:
    """Read and validate an MoE demo recipe (YAML).

    Raises:
        SpecError: naming the file and each invalid field.
    """
    return load_document(path, MoeRecipe, error=SpecError, max_bytes=64 * 1024)


def documentation_text() -> tuple[list[str], list[str]]:
    """(training topics, held-out topics) of Python's bundled documentation, in name order."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    texts = [topics[k] for k in keys]
    return texts[:-HELD_OUT_TOPICS], texts[-HELD_OUT_TOPICS:]


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (``<pad>`` 0, ``<s>`` 1, ``</s>`` 2; ``<s>`` prepended on encode)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer


def build_checkpoint(recipe: MoeRecipe, dest: Path, *, progress: Callable[[str, int, int], None]) -> Path:
    """Train (or initialise) the recipe's model and save it as a Hugging Face checkpoint at ``dest``."""
    try:
        import torch
        from transformers import MixtralConfig, MixtralForCausalLM, PreTrainedTokenizerFast
    except ImportError as exc:
        raise ExportError(f"MoE demos need the export extra (torch, transformers): pip install "
                          f"'edgecoe[export]' ({exc})") from None
    train, _ = documentation_text()
    tokenizer = train_tokenizer(train, recipe.vocab_size)
    config = MixtralConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads, num_key_value_heads=recipe.num_kv_heads,
        num_local_experts=recipe.num_experts, num_experts_per_tok=recipe.top_k,
        max_position_embeddings=recipe.max_position_embeddings, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=False, router_aux_loss_coef=recipe.router_aux_loss_coef, sliding_window=None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: reductions in one order, so the same seed gives the same bytes
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(recipe.seed)
        model = MixtralForCausalLM(config)
        if recipe.train_steps:
            _train(model, tokenizer, train, recipe, progress)
        model.eval()
        tmp = dest.parent / f".{dest.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                pad_token="<pad>", model_input_names=["input_ids", "attention_mask"]).save_pretrained(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    return dest


def _train(model: Any, tokenizer: Any, texts: list[str], recipe: MoeRecipe,
           progress: Callable[[str, int, int], None]) -> None:
    import math

    import numpy as np
    import torch

    ids = np.array([t for text in texts for t in [*tokenizer.encode(text).ids[1:], 2]], np.int64)
    rng = np.random.default_rng(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
    warmup = max(1, recipe.train_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1.0 + math.cos(math.pi * s / recipe.train_steps)))  # linear warm-up, cosine decay
    model.train()
    span = recipe.seq_len
    for step in range(recipe.train_steps):
        starts = rng.integers(0, len(ids) - span - 1, recipe.batch_size)
        batch = torch.from_numpy(np.stack([ids[s:s + span] for s in starts]))
        out = model(input_ids=batch, labels=batch, output_router_logits=True)
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        progress(f"train loss {out.loss.detach().item():.2f}", step + 1, recipe.train_steps)


def build_moe_demo(recipe_path: Path, *, models_dir: Path, dest: Path | None = None, force: bool = False,
                   progress: Callable[[str, int, int], None] | None = None) -> tuple[Path, Path]:
    """Build an MoE demo recipe: the checkpoint at ``models_dir/NAME-hf``, the package at ``dest``.

    Returns:
        (package directory, checkpoint directory)
    """
    from edgecoe.moe.export import export_moe

    recipe = load_moe_recipe(recipe_path)
    report = progress or (lambda what, done, total: None)
    package = dest or models_dir / recipe.name
    checkpoint = models_dir / f"{recipe.name}-hf"
    if force or not (checkpoint / "config.json").is_file():
        build_checkpoint(recipe, checkpoint, progress=report)
    _, held_out = documentation_text()
    export_moe(checkpoint, package, name=recipe.name, overwrite=True, eval_text="\n".join(held_out),
               progress=report)
    return package, checkpoint


def held_out_prompts(count: int = 20, *, chars: int = 60) -> list[str]:
    """``count`` prompts from the held-out documentation topics (never trained on, never tuned on)."""
    _, held_out = documentation_text()
    lines = [line.strip() for text in held_out for line in text.splitlines() if len(line.strip()) > 30]
    return [line[:chars] for line in lines[:count]]


def calibration_prompts(count: int = 20, *, chars: int = 60) -> list[str]:
    """``count`` prompts from the training topics: for tuning and calibration, never for reported figures."""
    train, _ = documentation_text()
    lines = [line.strip() for text in train[::7] for line in text.splitlines() if len(line.strip()) > 30]
    return [line[:chars] for line in lines[:count]]
