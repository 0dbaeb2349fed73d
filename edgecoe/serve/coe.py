"""The HTTP front of a CoE runtime: ``POST /v1/infer`` (JSON or binary tensors), health, readiness, metrics.

One request in, one :meth:`Runtime.submit`, one answer out. Status codes say
whose move it is: 400/413/415 the request is wrong (nothing was queued),
401 the key, 429 the runtime's queue is full (retry after), 503 shutting
down, 504 the result did not come in time (the request was cancelled in the
runtime), 500 an expert or transform failed (the cause is in the message).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from edgecoe.errors import InvalidInputError, QueueFullError, RequestCancelled, RequestError, RoutingError
from edgecoe.package.routing import entry_expert
from edgecoe.results import Result
from edgecoe.runtime import Runtime
from edgecoe.serve import tensors
from edgecoe.serve.common import Front, HttpError, ServeConfig, build_app, error_response, ok, retry_after
from edgecoe.serve.tensors import BadTensor


class CoeService:
    """Serves one :class:`Runtime` over HTTP; the runtime is closed (drained) when the app shuts down."""

    def __init__(self, runtime: Runtime, config: ServeConfig) -> None:
        self.runtime = runtime
        self.front = Front(config)
        manifest = runtime.package.manifest
        self._dtypes = {spec.name: spec.dtype for spec in manifest.inputs}
        self._prepared = {name for name, e in manifest.experts.items() if e.prepare is not None}

    def _first_expert(self, metadata: dict[str, Any]) -> str | None:
        try:
            return entry_expert(self.runtime.package.manifest.entry, metadata)
        except RoutingError:
            return None  # submit names the problem

    # -- endpoints -------------------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            self.front.check_key(request)
            self.front.check_open()
            inputs, metadata, stream, start, timeout_s = await self._parse(request)
            result = await self._run(inputs, metadata, stream, start, timeout_s)
            response = self._answer(request, result)
            status = 200
            return response
        except HttpError as exc:
            status = exc.status
            return error_response(exc)
        finally:
            self.front.record("infer", status, started)

    async def healthz(self, request: Request) -> Response:
        return ok({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        closing = self.front.draining or self.runtime.closing
        if closing:
            return error_response(HttpError(503, "shutting down", retry_after(self.front.config)))
        quarantined = self.runtime.health.quarantined(self.runtime.now_ms() / 1e3)
        return ok({"status": "ready", "package": self.runtime.package.name, "quarantined": sorted(quarantined)})

    async def metrics(self, request: Request) -> Response:
        try:
            self.front.check_key(request)
        except HttpError as exc:
            return error_response(exc)
        return PlainTextResponse(self._exposition(), media_type="text/plain; version=0.0.4")

    # -- parsing -----------------------------------------------------------------------------
    async def _parse(self, request: Request) -> tuple[dict[str, np.ndarray], dict[str, Any], str | None, bool, float]:
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        config = self.front.config
        try:
            if kind == "application/json":
                body = await self.front.json_body(request)
                if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict):
                    raise HttpError(400, 'expected {"inputs": {NAME: tensor}, "metadata": {...}}')
                unknown = sorted(set(body) - {"inputs", "metadata", "stream", "stream_start", "timeout_s"})
                if unknown:
                    raise HttpError(400, f"unknown fields {unknown}")
                inputs = {name: tensors.from_json(name, value, default_dtype=self._dtypes.get(name))
                          for name, value in body["inputs"].items()}
                metadata, stream = body.get("metadata") or {}, body.get("stream")
                start, timeout = bool(body.get("stream_start", False)), body.get("timeout_s")
            else:
                raw = await self.front.body(request)
                headers = request.headers
                metadata = tensors.json_header(headers.get("x-edgecoe-metadata"), "X-Edgecoe-Metadata")
                stream = headers.get("x-edgecoe-stream")
                start = headers.get("x-edgecoe-stream-start", "").lower() in ("1", "true", "yes")
                timeout = headers.get("x-edgecoe-timeout-s")
                name = headers.get("x-edgecoe-input")
                if kind == "application/x-npz":
                    inputs = tensors.from_npz(raw, max_bytes=4 * config.max_body_bytes)
                elif kind in ("application/x-npy", "application/octet-stream"):
                    if not name:
                        raise HttpError(400, f"a {kind} body is one input: name it with X-Edgecoe-Input")
                    inputs = {name: tensors.from_npy(name, raw) if kind == "application/x-npy" else
                              tensors.from_raw(name, raw, headers.get("x-edgecoe-dtype", self._dtypes.get(name)),
                                               headers.get("x-edgecoe-shape"))}
                else:
                    raise HttpError(415, f"content type {kind!r}: send application/json, application/x-npz, "
                                         "application/x-npy or application/octet-stream")
        except BadTensor as exc:
            raise HttpError(400, str(exc)) from None
        if not isinstance(metadata, dict):
            raise HttpError(400, "metadata must be an object")
        if stream is not None and not isinstance(stream, str):
            raise HttpError(400, "stream must be a string")
        try:
            timeout_s = min(float(timeout), config.timeout_s) if timeout is not None else config.timeout_s
        except (TypeError, ValueError):
            raise HttpError(400, f"timeout_s {timeout!r} is not a number") from None
        if not timeout_s > 0:
            raise HttpError(400, f"timeout_s {timeout!r} must be > 0")
        return inputs, metadata, stream, start, timeout_s

    # -- serving -----------------------------------------------------------------------------
    async def _run(self, inputs: dict[str, np.ndarray], metadata: dict[str, Any], stream: str | None,
                   start: bool, timeout_s: float) -> Result:
        try:
            # NOTE: a first expert's prepare transform runs in submit: then in a worker thread, so it
            # cannot hold up the event loop. Without one, submit only checks and copies the inputs:
            # cheaper in place than the hop to a thread and back (a third of a request's cost here).
            submit = partial(self.runtime.submit, inputs, metadata, wait_s=0.0, stream=stream, stream_start=start)
            first = self._first_expert(metadata)
            future = submit() if first is not None and first not in self._prepared else await run_in_threadpool(submit)
        except InvalidInputError as exc:
            raise HttpError(400, str(exc)) from None
        except QueueFullError as exc:
            raise HttpError(429, str(exc), retry_after(self.front.config)) from None
        except RuntimeError as exc:  # closed
            raise HttpError(503, str(exc), retry_after(self.front.config)) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            future.cancel()  # the runtime drops it and gives its room back
            raise HttpError(504, f"no result within {timeout_s:g} s; the request was cancelled") from None
        except RequestCancelled as exc:
            raise HttpError(503, f"cancelled: {exc.cause}", retry_after(self.front.config)) from None
        except RequestError as exc:
            raise HttpError(500, f"the request failed at expert {exc.expert!r}: {exc.cause}") from None

    def _answer(self, request: Request, result: Result) -> Response:
        if "application/x-npz" in request.headers.get("accept", ""):
            arrays = dict(result.outputs)
            for expert, items in result.items.items():
                for i, item in enumerate(items):
                    arrays.update({f"{expert}/{i}/{name}": value for name, value in item.items()})
            return Response(tensors.to_npz(arrays), media_type="application/x-npz",
                            headers={"X-Edgecoe-Path": ",".join(result.path)})
        return ok({"id": result.request_id, "path": result.path, "latency_ms": result.latency_ms,
                   "outputs": {k: tensors.to_json(v) for k, v in result.outputs.items()},
                   **({"items": {e: [{k: tensors.to_json(v) for k, v in item.items()} for item in items]
                                 for e, items in result.items.items()}}
                      if any(len(items) > 1 for items in result.items.values()) else {})})

    def _exposition(self) -> str:
        runtime = self.runtime
        page = self.front.exposition()
        totals = runtime.engine.totals()
        families: list[tuple[str, str, str, float]] = [
            ("edgecoe_queue_depth", "gauge", "Requests in flight (submitted, not ended).",
             runtime.in_flight.num_requests),
            ("edgecoe_queued_input_bytes", "gauge", "Bytes the requests in flight hold.", runtime.in_flight.num_bytes),
            ("edgecoe_cache_hits_total", "counter", "Expert uses that found it resident.", totals.hits),
            ("edgecoe_switches_total", "counter", "Experts loaded on demand.", totals.misses - totals.prefetches),
            ("edgecoe_prefetches_total", "counter", "Experts loaded ahead of need.", totals.prefetches),
            ("edgecoe_evictions_total", "counter", "Experts evicted.", totals.evictions),
            ("edgecoe_bytes_loaded_total", "counter", "Footprint bytes loaded.", totals.bytes_loaded),
            ("edgecoe_isolated_batches_total", "counter", "Batches that failed whole and re-ran item by item.",
             runtime.isolated_batches),
        ]
        for name, kind, text, value in families:
            page.family(name, kind, text)
            page.sample(name, float(value))
        page.family("edgecoe_expert_budget_bytes", "gauge", "Memory for resident experts, by processor.")
        for processor, cache in runtime.caches.items():
            page.sample("edgecoe_expert_budget_bytes", cache.budget_bytes, processor=processor)
        page.family("edgecoe_expert_resident_bytes", "gauge", "Memory resident experts hold now, by processor.")
        for processor, cache in runtime.caches.items():
            page.sample("edgecoe_expert_resident_bytes", cache.used_bytes, processor=processor)
        page.family("edgecoe_expert_failures_total", "counter", "Failed loads and runs, by expert.")
        for expert, count in runtime.health.failures().items():
            page.sample("edgecoe_expert_failures_total", count, expert=expert)
        page.family("edgecoe_expert_quarantined", "gauge", "1 for each expert quarantined now.")
        for expert in runtime.health.quarantined(runtime.now_ms() / 1e3):
            page.sample("edgecoe_expert_quarantined", 1.0, expert=expert)
        return page.text()

    def close(self) -> None:
        self.front.draining = True
        self.runtime.close(drain=True, timeout_s=self.front.config.drain_timeout_s)


def coe_app(runtime: Runtime, config: ServeConfig | None = None) -> Starlette:
    """An ASGI app serving ``runtime``; shutting the app down drains and closes the runtime."""
    service = CoeService(runtime, config or ServeConfig())
    return build_app(service, [("/v1/infer", service.infer, "POST"), ("/healthz", service.healthz, "GET"),
                               ("/readyz", service.readyz, "GET"), ("/metrics", service.metrics, "GET")])
