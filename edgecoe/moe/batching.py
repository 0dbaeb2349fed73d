"""Several prompts at once: decode steps batched across the running prompts, new prompts'
prefills interleaved with them.

:class:`ContinuousBatcher` holds a running batch (one KV cache, sequences
left-padded to a common length, a mask marking real slots) and a bounded queue
of submitted prompts. Each :meth:`~ContinuousBatcher.step`:

1. prefills the next chunk of the oldest waiting prompt (alone, batch 1); when
   its prompt is done, its first token is picked and it joins the running batch
   (its KV cache left-padded or the batch's, whichever is shorter);
2. runs one decode step for every running sequence together.

The knob is ``prefill_chunk_tokens``: 0 prefills a whole prompt in one step (the
newcomer's first token as early as possible, while every running sequence waits
that long for its next token); a chunk of N tokens lets running sequences
advance between chunks (steadier time per output token, a later first token for
the newcomer). Left padding with a masked bias is exact: a sequence's tokens
are the same as when it is generated alone (the tests check this).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgecoe.errors import InvalidInputError
from edgecoe.moe.generate import Generator, SamplingParams, TokenEvent
from edgecoe.moe.model import LayerCache

MAX_WAITING = 256
"""Prompts queued at most; a submission beyond it is refused (not dropped later)."""


@dataclass(frozen=True)
class BatchingParams:
    """How the batcher shares steps between prefills and decodes.

    Attributes:
        prefill_chunk_tokens: prompt tokens prefilled per step (0: the whole prompt at once).
        max_running: sequences decoding together at most; a finished prefill waits for room.
        max_waiting: prompts queued at most.
    """

    prefill_chunk_tokens: int = 0
    max_running: int = 16
    max_waiting: int = MAX_WAITING

    def validate(self) -> None:
        if self.prefill_chunk_tokens < 0:
            raise InvalidInputError(f"prefill_chunk_tokens={self.prefill_chunk_tokens} must be >= 0")
        if not 1 <= self.max_running <= 1024:
            raise InvalidInputError(f"max_running={self.max_running} must be in [1, 1024]")
        if not 1 <= self.max_waiting <= 1 << 16:
            raise InvalidInputError(f"max_waiting={self.max_waiting} must be in [1, 65536]")


@dataclass
class RequestTiming:
    """One request's latencies, from its submission."""

    request: int
    prompt_tokens: int
    generated_tokens: int = 0
    submitted_at: float = 0.0
    first_token_ms: float | None = None
    finished_ms: float | None = None

    @property
    def time_per_output_token_ms(self) -> float | None:
        if self.first_token_ms is None or self.finished_ms is None or self.generated_tokens < 2:
            return None
        return (self.finished_ms - self.first_token_ms) / (self.generated_tokens - 1)


@dataclass
class _Sequence:
    request: int
    prompt: list[int]
    rng: np.random.Generator
    timing: RequestTiming
    prefilled: int = 0  # prompt tokens in its KV cache so far
    kv: list[LayerCache] | None = None
    out_ids: list[int] = field(default_factory=list)
    text: str = ""


class ContinuousBatcher:
    """Runs submitted prompts through one :class:`Generator`'s model; not thread-safe.

    Args:
        generator: the model and tokenizer.
        params: sampling and stopping, the same for every request.
        batching: chunking and bounds.
    """

    def __init__(self, generator: Generator, params: SamplingParams | None = None,
                 batching: BatchingParams | None = None) -> None:
        self.generator = generator
        self.model = generator.model
        self.params = params or SamplingParams()
        self.params.validate()
        self.batching = batching or BatchingParams()
        self.batching.validate()
        shape = self.model.shape
        self._stops = set(self.params.stop_token_ids) | (set() if self.params.ignore_eos
                                                           else set(shape.eos_token_ids))
        self._pad = shape.pad_token_id if shape.pad_token_id is not None else 0
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._kv: list[LayerCache] | None = None  # the running batch's, [B, KV, T, D] per layer
        self._mask = np.zeros((0, 0), np.int64)  # [B, T]: 1 where a slot holds a real token
        self._next_id = 0
        self.timings: dict[int, RequestTiming] = {}

    # -- submissions -------------------------------------------------------------------
    def submit(self, prompt: str | Sequence[int]) -> int:
        """Queue a prompt (text or token ids); returns its request id.

        Raises:
            InvalidInputError: the queue is full, the prompt is empty or out of the vocabulary, or
                prompt plus ``max_new_tokens`` exceeds the model's positions.
        """
        if len(self._waiting) >= self.batching.max_waiting:
            raise InvalidInputError(f"{len(self._waiting)} prompts are waiting; the limit is "
                                    f"{self.batching.max_waiting} (submit again once some have started)")
        ids = self.generator._prompt_ids([prompt] if isinstance(prompt, str) else [[int(t) for t in prompt]])[0]
        limit = self.model.shape.max_position_embeddings
        if len(ids) + self.params.max_new_tokens > limit:
            raise InvalidInputError(f"a prompt of {len(ids)} tokens plus max_new_tokens={self.params.max_new_tokens} "
                                    f"exceeds the model's {limit} positions")
        request = self._next_id
        self._next_id += 1
        timing = RequestTiming(request, len(ids), submitted_at=time.perf_counter())
        self.timings[request] = timing
        self._waiting.append(_Sequence(request, ids, np.random.default_rng([self.params.seed, request]), timing))
        return request

    @property
    def idle(self) -> bool:
        """Nothing waiting or running."""
        return not self._waiting and not self._running

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    # -- steps -------------------------------------------------------------------------
    def step(self) -> list[TokenEvent]:
        """One prefill chunk (if a prompt waits and there is room) and one decode step for the running."""
        events: list[TokenEvent] = []
        if self._waiting and len(self._running) < self.batching.max_running:
            event = self._prefill_chunk(self._waiting[0])
            if event is not None:
                seq = self._waiting.popleft()
                events.append(event)
                if not event.finished:
                    self._join(seq)
        if self._running:
            events += self._decode()
        return events

    def run(self) -> list[TokenEvent]:
        """Step until nothing is waiting or running."""
        events: list[TokenEvent] = []
        while not self.idle:
            events += self.step()
        return events

    def _prefill_chunk(self, seq: _Sequence) -> TokenEvent | None:
        """Prefill ``seq``'s next chunk; its first token's event once the prompt is done."""
        model = self.model
        if seq.kv is None:
            seq.kv = model.empty_cache(1)
        chunk = self.batching.prefill_chunk_tokens or len(seq.prompt)
        start, end = seq.prefilled, min(seq.prefilled + chunk, len(seq.prompt))
        tokens = np.array([seq.prompt[start:end]], np.int64)
        positions = np.arange(start, end, dtype=np.int64)[None]
        mask = np.ones((1, end), np.int64)
        logits = model.forward(tokens, positions, mask, seq.kv)
        seq.prefilled = end
        if end < len(seq.prompt):
            return None
        return self._emit(seq, logits[0])

    def _emit(self, seq: _Sequence, logits: np.ndarray) -> TokenEvent:
        token = self.generator._pick(logits, self.params, seq.rng)
        seq.out_ids.append(token)
        now = time.perf_counter()
        timing = seq.timing
        timing.generated_tokens += 1
        if timing.first_token_ms is None:
            timing.first_token_ms = (now - timing.submitted_at) * 1e3
        done = token in self._stops or len(seq.out_ids) >= self.params.max_new_tokens
        text = self.generator.decode(seq.out_ids)
        # hold back a partial UTF-8 character until the next token completes it
        delta = text[len(seq.text):] if not text.endswith("\ufffd") or done else ""
        seq.text += delta
        if done:
            timing.finished_ms = (now - timing.submitted_at) * 1e3
        return TokenEvent(seq.request, token, delta, done)

    def _join(self, seq: _Sequence) -> None:
        """Add a prefilled sequence to the running batch, left-padding the shorter side."""
        assert seq.kv is not None
        length = seq.kv[0].key.shape[2]
        if self._kv is None or not self._running:
            self._kv, self._mask = seq.kv, np.ones((1, length), np.int64)
        else:
            width = max(length, self._mask.shape[1])
            batch = [_left_pad(c, width) for c in self._kv]
            new = [_left_pad(c, width) for c in seq.kv]
            self._kv = [LayerCache(np.concatenate([a.key, b.key]), np.concatenate([a.value, b.value]))
                        for a, b in zip(batch, new, strict=True)]
            mask_new = np.zeros((1, width), np.int64)
            mask_new[0, width - length:] = 1
            mask_old = np.zeros((len(self._running), width), np.int64)
            mask_old[:, width - self._mask.shape[1]:] = self._mask
            self._mask = np.concatenate([mask_old, mask_new])
        seq.kv = None  # now held in the batch's
        self._running.append(seq)

    def _decode(self) -> list[TokenEvent]:
        tokens = np.array([[seq.out_ids[-1]] for seq in self._running], np.int64)
        positions = np.array([[len(seq.prompt) + len(seq.out_ids) - 1] for seq in self._running], np.int64)
        self._mask = np.concatenate([self._mask, np.ones((len(self._running), 1), np.int64)], axis=1)
        assert self._kv is not None
        logits = self.model.forward(tokens, positions, self._mask, self._kv)
        events = [self._emit(seq, logits[row]) for row, seq in enumerate(self._running)]
        keep = [row for row, event in enumerate(events) if not event.finished]
        if len(keep) < len(self._running):
            self._running = [self._running[row] for row in keep]
            self._kv = [LayerCache(c.key[keep], c.value[keep]) for c in self._kv]
            self._mask = self._mask[keep]
            # slots no remaining sequence uses (padding that was only there for a finished one) go
            used = np.flatnonzero(self._mask.any(axis=0)) if len(keep) else np.arange(0)
            first = int(used[0]) if len(used) else self._mask.shape[1]
            if first:
                self._kv = [LayerCache(c.key[:, :, first:], c.value[:, :, first:]) for c in self._kv]
                self._mask = self._mask[:, first:]
        return events


def _left_pad(cache: LayerCache, width: int) -> LayerCache:
    """``cache`` with zero slots added on the left up to ``width`` slots."""
    extra = width - cache.key.shape[2]
    if extra == 0:
        return cache
    pad = ((0, 0), (0, 0), (extra, 0), (0, 0))
    return LayerCache(np.pad(cache.key, pad), np.pad(cache.value, pad))
