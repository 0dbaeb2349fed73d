"""The HTTP front of an MoE package: an OpenAI-compatible ``POST /v1/completions`` (with token streaming
as server-sent events), ``GET /v1/models``, health, readiness and metrics.

One worker thread owns the model (a :class:`Generator` is not thread-safe) and
takes completions from a bounded queue, one at a time; a full queue is 429.
Tokens go from the worker to the request's event loop as they are made; a
client that disconnects or times out cancels its completion between tokens.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from edgecoe.errors import InvalidInputError
from edgecoe.moe.generate import Generator, SamplingParams, TokenEvent
from edgecoe.serve.common import Front, HttpError, ServeConfig, build_app, error_response, ok, retry_after

# OpenAI fields whose meaning edgecoe does not provide: refused by name rather than silently ignored.
_UNSUPPORTED = ("n", "best_of", "echo", "logprobs", "suffix", "logit_bias", "presence_penalty", "frequency_penalty")
_ACCEPTED = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stream", "stop", "user",
             "timeout_s"}


@dataclass
class _Completion:
    """One completion on its way through the worker."""

    prompt: str
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[TokenEvent | BaseException | None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_tokens: int = 0


def _finish_reason(event: TokenEvent, tokens: int, params: SamplingParams) -> str | None:
    """OpenAI's finish_reason for a completion's ``tokens``-th token: ``stop`` (an end token before the
    limit), ``length`` (the limit), None (not the last)."""
    if not event.finished:
        return None
    return "stop" if tokens < params.max_new_tokens else "length"


class MoeService:
    """Serves one :class:`Generator` over HTTP."""

    def __init__(self, generator: Generator, config: ServeConfig) -> None:
        self.generator = generator
        self.front = Front(config)
        self.model_name = generator.model.manifest.name
        self._jobs: queue.Queue[_Completion | None] = queue.Queue(maxsize=config.max_queued_completions)
        self._worker = threading.Thread(target=self._work, daemon=True, name="edgecoe-completions")
        self._worker.start()
        self.tokens_out = 0

    # -- the worker --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._run(job)

    def _run(self, job: _Completion) -> None:
        def send(item: TokenEvent | BaseException | None) -> None:
            job.loop.call_soon_threadsafe(job.events.put_nowait, item)

        if job.cancelled.is_set():
            send(None)
            return
        try:
            job.prompt_tokens = len(self.generator.encode(job.prompt))
            for event in self.generator.stream([job.prompt], job.params):
                self.tokens_out += 1
                send(event)
                if job.cancelled.is_set():
                    break  # between tokens: the client is gone or out of time
        except Exception as exc:  # one completion failing never stops the worker
            send(exc)
            return
        send(None)

    # -- endpoints -------------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            self.front.check_key(request)
            self.front.check_open()
            body = await self.front.json_body(request)
            prompt, params, stream, timeout_s = self._parse(body)
            job = _Completion(prompt, params, asyncio.get_running_loop(), asyncio.Queue())
            try:
                self._jobs.put_nowait(job)
            except queue.Full:
                raise HttpError(429, f"{self._jobs.maxsize} completions are waiting for the model; retry later",
                                retry_after(self.front.config)) from None
        except HttpError as exc:
            self.front.record("completions", exc.status, started)
            return error_response(exc)
        completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
        if stream:
            self.front.record("completions", 200, started)
            return StreamingResponse(self._sse(job, completion_id, timeout_s), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            text, tokens, finish = await self._collect(job, timeout_s)
        except HttpError as exc:
            self.front.record("completions", exc.status, started)
            return error_response(exc)
        self.front.record("completions", 200, started)
        return ok({"id": completion_id, "object": "text_completion", "created": int(time.time()),
                   "model": self.model_name,
                   "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
                   "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": tokens,
                             "total_tokens": job.prompt_tokens + tokens}})

    async def models(self, request: Request) -> Response:
        try:
            self.front.check_key(request)
        except HttpError as exc:
            return error_response(exc)
        return ok({"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "edgecoe"}]})

    async def healthz(self, request: Request) -> Response:
        return ok({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        if self.front.draining or not self._worker.is_alive():
            return error_response(HttpError(503, "shutting down", retry_after(self.front.config)))
        return ok({"status": "ready", "model": self.model_name})

    async def metrics(self, request: Request) -> Response:
        try:
            self.front.check_key(request)
        except HttpError as exc:
            return error_response(exc)
        page = self.front.exposition()
        cache = self.generator.model.cache
        for name, kind, text, value in (
                ("edgecoe_completions_queued", "gauge", "Completions waiting for the model.", self._jobs.qsize()),
                ("edgecoe_tokens_generated_total", "counter", "Tokens generated.", self.tokens_out),
                ("edgecoe_expert_loads_total", "counter", "Experts loaded.", cache.stats.num_misses),
                ("edgecoe_expert_hits_total", "counter", "Expert uses that found it resident.", cache.stats.num_hits),
                ("edgecoe_bytes_loaded_total", "counter", "Expert bytes loaded.", cache.stats.bytes_loaded)):
            page.family(name, kind, text)
            page.sample(name, float(value))
        return PlainTextResponse(page.text(), media_type="text/plain; version=0.0.4")

    # -- helpers ---------------------------------------------------------------------------------
    def _parse(self, body: Any) -> tuple[str, SamplingParams, bool, float]:
        if not isinstance(body, dict):
            raise HttpError(400, "expected a JSON object")
        refused = [k for k in _UNSUPPORTED if k in body and body[k] not in (None, 1, False, 0)]
        if refused:
            raise HttpError(400, f"fields {refused} are not supported by this server")
        unknown = sorted(set(body) - _ACCEPTED - set(_UNSUPPORTED))
        if unknown:
            raise HttpError(400, f"unknown fields {unknown}")
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise HttpError(404, f"model {model!r} is not served here; this server serves {self.model_name!r}")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise HttpError(400, "prompt must be one non-empty string")
        config = self.front.config
        try:
            max_tokens = int(body.get("max_tokens", 16))
            params = SamplingParams(max_new_tokens=max_tokens, temperature=float(body.get("temperature", 0.0)),
                                    top_p=float(body.get("top_p", 1.0)), top_k=int(body.get("top_k", 0)),
                                    seed=int(body.get("seed", 0)), stop_token_ids=self._stops(body.get("stop")))
            timeout_s = min(float(body.get("timeout_s", config.timeout_s)), config.timeout_s)
        except (TypeError, ValueError) as exc:
            raise HttpError(400, f"a field has the wrong type: {exc}") from None
        if not 1 <= max_tokens <= config.max_new_tokens:
            raise HttpError(400, f"max_tokens={max_tokens} must be in 1..{config.max_new_tokens}")
        try:
            params.validate()
        except InvalidInputError as exc:
            raise HttpError(400, str(exc)) from None
        if not timeout_s > 0:
            raise HttpError(400, "timeout_s must be > 0")
        return prompt, params, bool(body.get("stream", False)), timeout_s

    def _stops(self, stop: object) -> tuple[int, ...]:
        """Stop strings that are single tokens of the vocabulary (others cannot be honoured: refused)."""
        if stop is None:
            return ()
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
            raise HttpError(400, "stop must be a string or a list of at most 4 strings")
        ids = []
        for text in stops:
            encoded = self.generator.encode(text)
            if len(encoded) != 1:
                raise HttpError(400, f"stop {text!r} is {len(encoded)} tokens; only single-token stops are supported")
            ids.append(encoded[0])
        return tuple(ids)

    async def _next(self, job: _Completion, deadline: float) -> TokenEvent | None:
        try:
            item = await asyncio.wait_for(job.events.get(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            job.cancelled.set()
            raise HttpError(504, "no completion within the time allowed; it was cancelled") from None
        if isinstance(item, BaseException):
            raise HttpError(500 if not isinstance(item, InvalidInputError) else 400, f"generation failed: {item}")
        return item

    async def _collect(self, job: _Completion, timeout_s: float) -> tuple[str, int, str]:
        deadline = time.monotonic() + timeout_s
        text, tokens, finish = "", 0, "length"
        while (event := await self._next(job, deadline)) is not None:
            text += event.text
            tokens += 1
            finish = _finish_reason(event, tokens, job.params) or finish
        return text, tokens, finish

    async def _sse(self, job: _Completion, completion_id: str, timeout_s: float) -> AsyncIterator[bytes]:
        deadline = time.monotonic() + timeout_s
        created, tokens = int(time.time()), 0

        def chunk(text: str, finish: str | None) -> bytes:
            payload = {"id": completion_id, "object": "text_completion", "created": created, "model": self.model_name,
                       "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}
            return f"data: {json.dumps(payload)}\n\n".encode()

        try:
            while (event := await self._next(job, deadline)) is not None:
                tokens += 1
                yield chunk(event.text, _finish_reason(event, tokens, job.params))
        except HttpError as exc:  # headers are sent: the error goes in the stream
            yield f"data: {json.dumps({'error': {'code': exc.status, 'message': exc.message}})}\n\n".encode()
        finally:
            job.cancelled.set()  # a client that went away stops its completion at the next token
        yield b"data: [DONE]\n\n"

    def close(self) -> None:
        self.front.draining = True
        self._jobs.put(None)
        self._worker.join(self.front.config.drain_timeout_s)


def moe_app(generator: Generator, config: ServeConfig | None = None) -> Starlette:
    """An ASGI app serving ``generator``'s model; shutting the app down lets queued completions finish."""
    service = MoeService(generator, config or ServeConfig())
    return build_app(service, [("/v1/completions", service.completions, "POST"), ("/v1/models", service.models, "GET"),
                               ("/healthz", service.healthz, "GET"), ("/readyz", service.readyz, "GET"),
                               ("/metrics", service.metrics, "GET")])
