"""Text generation on an MoE package: tokenize, prefill, decode, stream.

:class:`Generator` drives :class:`~edgecoe.moe.model.MoeModel`: prompts are
left-padded into one batch (positions and masks as transformers builds them,
so batched and single-prompt outputs agree), greedy or seeded sampling picks
each next token, stop tokens and ``max_new_tokens`` end each sequence, and
:meth:`Generator.stream` yields every token as it is chosen. The report holds
the figures an edge user compares runtimes by (time to first token, decode
tokens per second, expert loads and bytes, peak memory) under the keys
``edgecoe generate --report`` writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecoe.devicemem import storage_read_bytes
from edgecoe.engine import CacheTotals
from edgecoe.errors import InvalidInputError
from edgecoe.memory import peak_rss_bytes, rss_bytes
from edgecoe.moe.model import MoeModel

MAX_PROMPTS = 256
"""Prompts in one call: a bound on the batch (and on memory) whatever a prompts file holds."""


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen and when a sequence ends.

    Attributes:
        max_new_tokens: tokens generated per prompt at most.
        temperature: 0 picks the most likely token (greedy); above 0 samples.
        top_k: sample among the ``top_k`` most likely tokens (0: all).
        top_p: sample among the most likely tokens whose probabilities add up to ``top_p``.
        seed: seeds sampling; prompt ``i`` draws from its own stream (``[seed, i]``), so
            a prompt's tokens do not depend on what it is batched with.
        stop_token_ids: end a sequence at any of these (besides the package's end-of-sequence tokens).
        ignore_eos: do not stop at the package's end-of-sequence tokens (benchmarks: fixed lengths).
    """

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def validate(self) -> None:
        if not 1 <= self.max_new_tokens <= 1 << 20:
            raise InvalidInputError(f"max_new_tokens={self.max_new_tokens} must be in [1, 1048576]")
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise InvalidInputError(f"temperature={self.temperature} must be a finite number >= 0")
        if self.top_k < 0:
            raise InvalidInputError(f"top_k={self.top_k} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise InvalidInputError(f"top_p={self.top_p} must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token of prompt ``prompt_index``; ``text`` is what it adds to the decoded output."""

    prompt_index: int
    token_id: int
    text: str
    finished: bool


@dataclass
class GenerationReport:
    """Figures of one generate call (the keys ``--report`` writes)."""

    num_prompts: int = 0
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    ttft_ms: float = 0.0
    decode_tokens_per_s: float = 0.0
    e2e_ms: float = 0.0
    peak_expert_bytes: int = 0
    expert_budget_bytes: int = 0
    num_expert_loads: int = 0
    expert_hit_rate: float = 0.0
    bytes_loaded: int = 0
    expert_load_ms: float = 0.0
    peak_rss_bytes: int = 0
    rss_bytes: int = 0
    storage_read_bytes: int | None = None  # read from storage while generating (kernel I/O accounting)
    num_prefetched: int = 0  # expert loads the schedule's loader thread made ahead of need
    device: str = "cpu"
    policy: str = "lru"
    package: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenerationResult:
    texts: list[str]
    token_ids: list[list[int]]  # generated ids per prompt (the prompt excluded)
    prompt_token_ids: list[list[int]]
    report: GenerationReport = field(default_factory=GenerationReport)


class Generator:
    """Generates text from prompts on one :class:`MoeModel`; not thread-safe (one call at a time).

    Args:
        model: the MoE engine.
        tokenizer: a ``tokenizers.Tokenizer``; default: the package's ``tokenizer/tokenizer.json``.
    """

    def __init__(self, model: MoeModel, tokenizer: Any | None = None) -> None:
        self.model = model
        if tokenizer is None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(model.package.path(model.manifest.tokenizer[0])))
        self.tokenizer = tokenizer
        self.last_report = GenerationReport()

    def encode(self, prompt: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(prompt).ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return text

    def generate(self, prompts: Sequence[str] | Sequence[Sequence[int]],
                 params: SamplingParams | None = None) -> GenerationResult:
        """Generate for every prompt (texts, or token ids) in one batch; see :meth:`stream`."""
        prompt_ids = self._prompt_ids(prompts)
        generated: list[list[int]] = [[] for _ in prompt_ids]
        for event in self.stream(prompt_ids, params):
            generated[event.prompt_index].append(event.token_id)
        texts = [self.decode(ids) for ids in generated]
        return GenerationResult(texts, generated, prompt_ids, self.last_report)

    def stream(self, prompts: Sequence[str] | Sequence[Sequence[int]],
               params: SamplingParams | None = None) -> Iterator[TokenEvent]:
        """Yield tokens as they are generated, all prompts advancing together one token per step.

        Raises:
            InvalidInputError: no prompts, too many, an empty one, a token id outside the
                vocabulary, or prompt plus ``max_new_tokens`` beyond the model's positions.
        """
        params = params or SamplingParams()
        params.validate()
        prompt_ids = self._prompt_ids(prompts)
        model = self.model
        shape = model.shape
        longest = max(len(p) for p in prompt_ids)
        if longest + params.max_new_tokens > shape.max_position_embeddings:
            raise InvalidInputError(f"a prompt of {longest} tokens plus max_new_tokens={params.max_new_tokens} "
                                    f"exceeds the model's {shape.max_position_embeddings} positions")
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(shape.eos_token_ids))
        batch = len(prompt_ids)
        pad = shape.pad_token_id if shape.pad_token_id is not None else 0
        tokens = np.full((batch, longest), pad, np.int64)
        mask = np.zeros((batch, longest), np.int64)
        for row, ids in enumerate(prompt_ids):  # left padding, as transformers' batched generate
            tokens[row, longest - len(ids):] = ids
            mask[row, longest - len(ids):] = 1
        positions = np.where(mask > 0, np.cumsum(mask, axis=1) - 1, 1)
        rngs = [np.random.default_rng([params.seed, row]) for row in range(batch)]
        finished = np.zeros(batch, bool)
        texts = [""] * batch
        out_ids: list[list[int]] = [[] for _ in range(batch)]

        cache_before = _cache_totals(model)
        read_before = storage_read_bytes()
        report = GenerationReport(num_prompts=batch, num_prompt_tokens=sum(len(p) for p in prompt_ids),
                                  expert_budget_bytes=model.cache.budget_bytes, device=model.config.device,
                                  policy=model.config.policy, package=model.manifest.name)
        model.cache.stats.peak_bytes = model.cache.used_bytes
        started = time.perf_counter()
        first_token_at = started
        kv = model.empty_cache(batch)
        step_tokens, step_positions = tokens, positions
        for step in range(params.max_new_tokens):
            logits = model.forward(step_tokens, step_positions, mask, kv)
            chosen = [self._pick(logits[row], params, rngs[row]) for row in range(batch)]
            if step == 0:
                first_token_at = time.perf_counter()
            for row, token in enumerate(chosen):
                if finished[row]:
                    continue
                out_ids[row].append(token)
                done = token in stops or step == params.max_new_tokens - 1
                finished[row] = done
                text = self.decode(out_ids[row])
                # hold back a partial UTF-8 character until the next token completes it
                delta = text[len(texts[row]):] if not text.endswith("\ufffd") or done else ""
                texts[row] += delta
                report.num_generated_tokens += 1
                yield TokenEvent(row, token, delta, bool(done))
            if finished.all():
                break
            step_tokens = np.array([[t if not finished[r] else pad] for r, t in enumerate(chosen)], np.int64)
            step_positions = step_positions[:, -1:] + 1
            mask = np.concatenate([mask, (~finished).astype(np.int64)[:, None]], axis=1)
        ended = time.perf_counter()
        decoded = report.num_generated_tokens - batch
        report.ttft_ms = (first_token_at - started) * 1e3
        report.e2e_ms = (ended - started) * 1e3
        report.decode_tokens_per_s = decoded / (ended - first_token_at) if decoded > 0 and ended > first_token_at else 0.0
        counted = _cache_totals(model) - cache_before
        report.num_expert_loads = counted.misses
        report.expert_hit_rate = counted.hits / (counted.hits + counted.misses) if counted.hits + counted.misses else 1.0
        report.bytes_loaded = counted.bytes_loaded
        report.expert_load_ms = counted.load_seconds * 1e3
        report.num_prefetched = counted.prefetches
        report.peak_expert_bytes = model.cache.stats.peak_bytes
        read_after = storage_read_bytes()
        if read_before is not None and read_after is not None:
            report.storage_read_bytes = read_after - read_before
        report.rss_bytes = rss_bytes()
        report.peak_rss_bytes = max(report.rss_bytes, peak_rss_bytes())
        self.last_report = report

    def _prompt_ids(self, prompts: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        if isinstance(prompts, str):
            raise InvalidInputError("prompts must be a list of prompts, not one string")
        if not prompts:
            raise InvalidInputError("no prompts given")
        if len(prompts) > MAX_PROMPTS:
            raise InvalidInputError(f"{len(prompts)} prompts in one call; the limit is {MAX_PROMPTS}")
        vocab = self.model.shape.vocab_size
        out = []
        for i, prompt in enumerate(prompts):
            ids = self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]  # type: ignore[call-overload]
            if not ids:
                raise InvalidInputError(f"prompt {i} is empty (no tokens)")
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise InvalidInputError(f"prompt {i}: token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
            out.append(ids)
        return out

    @staticmethod
    def _pick(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
        if params.temperature == 0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / params.temperature
        if params.top_k:
            cutoff = np.partition(scaled, -params.top_k)[-params.top_k] if params.top_k < len(scaled) else -np.inf
            scaled = np.where(scaled < cutoff, -np.inf, scaled)
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if params.top_p < 1:
            order = np.argsort(-probs, kind="stable")
            keep = np.cumsum(probs[order]) - probs[order] < params.top_p  # always keeps the first
            trimmed = np.zeros_like(probs)
            trimmed[order[keep]] = probs[order[keep]]
            probs = trimmed / trimmed.sum()
        return int(rng.choice(len(probs), p=probs))


def _cache_totals(model: MoeModel) -> CacheTotals:
    """The expert cache's counters now, in the engine's form (a report takes differences)."""
    stats = model.cache.stats
    return CacheTotals(misses=stats.num_misses, hits=stats.num_hits, evictions=stats.num_evictions,
                       bytes_loaded=stats.bytes_loaded, prefetches=model.prefetcher.stats.num_loaded,
                       load_seconds=stats.load_seconds)


def read_prompts(path: Path) -> list[str]:
    """Prompts from a text file, one per non-empty line.

    Raises:
        InvalidInputError: unreadable, not UTF-8, or more than :data:`MAX_PROMPTS` prompts.
    """
    from edgecoe.schema import DocumentError, read_document

    try:
        text = read_document(path, max_bytes=16 << 20)
    except DocumentError as exc:
        raise InvalidInputError(str(exc)) from None
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InvalidInputError(f"{path}: no prompts (one per non-empty line)")
    if len(prompts) > MAX_PROMPTS:
        raise InvalidInputError(f"{path}: {len(prompts)} prompts; the limit is {MAX_PROMPTS} per call")
    return prompts
