"""Perplexity of an MoE package on text: the quality figure quantization is judged by."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgecoe.moe.generate import Generator
from edgecoe.moe.model import MoeModel
from edgecoe.moe.package import load_moe_package

MAX_EVAL_TOKENS = 2048
WINDOW_TOKENS = 256


def default_eval_text() -> str:
    """Held-out text shipped with Python: the last documentation topics (the moe-tiny demo trains on the others)."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    return "\n".join(topics[k] for k in keys[-8:])


def perplexity(model: MoeModel, ids: list[int], *, window: int = WINDOW_TOKENS) -> float:
    """exp(mean negative log-likelihood) of ``ids``, in independent windows of ``window`` tokens."""
    total_nll = 0.0
    count = 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window + 1]
        if len(chunk) < 2:
            break
        tokens = np.array([chunk[:-1]], np.int64)
        logits = model.forward(tokens, np.arange(tokens.shape[1])[None], np.ones_like(tokens),
                               model.empty_cache(1), all_logits=True)[0].astype(np.float64)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        targets = np.array(chunk[1:])
        total_nll -= float(log_probs[np.arange(len(targets)), targets].sum())
        count += len(targets)
    return math.exp(total_nll / max(count, 1))


def held_out_perplexity(package_dir: Path, text: str | None, *,
                        max_tokens: int = MAX_EVAL_TOKENS) -> tuple[float, int]:
    """(perplexity, tokens measured) of the package at ``package_dir`` on ``text`` (default: :func:`default_eval_text`)."""
    model = MoeModel(load_moe_package(package_dir))
    try:
        generator = Generator(model)
        ids = generator.encode(text if text is not None else default_eval_text())[:max_tokens]
        return perplexity(model, ids), max(len(ids) - 1, 0)
    finally:
        model.close()
