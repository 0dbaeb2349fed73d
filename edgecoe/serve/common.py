"""What every edgecoe endpoint shares: limits, the API key, bodies read within a bound, errors as JSON,
and the request counters and latency histogram behind ``/metrics``."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgecoe.serve.metrics import Counters, Exposition, Histogram

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """Limits of the HTTP front.

    Attributes:
        max_body_bytes: a request body larger than this is refused (413) before it is read whole.
        timeout_s: how long a request may wait for its result (a request may ask for less); past it,
            the request is cancelled in the runtime and answered 504.
        retry_after_s: the Retry-After given with 429 (queue full) and 503 (draining, not ready).
        api_key: when set, every endpoint but /healthz and /readyz needs it
            (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``).
        drain_timeout_s: on SIGTERM, how long requests in flight get to finish.
        max_new_tokens: MoE: the most tokens one completion may ask for.
        max_queued_completions: MoE: completions waiting for the model at most (then 429).
    """

    max_body_bytes: int = 16 * MiB
    timeout_s: float = 60.0
    retry_after_s: int = 1
    api_key: str | None = None
    drain_timeout_s: float = 30.0
    max_new_tokens: int = 512
    max_queued_completions: int = 64


class HttpError(Exception):
    """An error answer: status, message, and headers (Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(error: HttpError) -> JSONResponse:
    return JSONResponse({"error": {"code": error.status, "message": error.message}}, status_code=error.status,
                        headers=error.headers)


class Front:
    """The shared state of one server: config, draining flag, metrics."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.draining = False
        self.counters = Counters()
        self.latency = Histogram()

    def check_key(self, request: Request) -> None:
        """Raises 401 without the configured key (compared in constant time)."""
        expected = self.config.api_key
        if expected is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
            raise HttpError(401, "missing or wrong API key (Authorization: Bearer KEY, or X-API-Key)")

    def check_open(self) -> None:
        if self.draining:
            raise HttpError(503, "the server is shutting down: it finishes what it accepted and takes nothing new",
                            {"Retry-After": str(self.config.retry_after_s)})

    async def body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it is known to pass the limit."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HttpError(400, f"Content-Length {declared!r} is not a number")
            if int(declared) > limit:
                raise HttpError(413, f"body of {declared} bytes is larger than the limit of {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def json_body(self, request: Request) -> Any:
        raw = await self.body(request)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"body is not JSON: {exc}") from None

    def record(self, endpoint: str, status: int, started: float) -> None:
        self.counters.add("edgecoe_http_requests_total", endpoint=endpoint, status=str(status))
        self.latency.observe(time.perf_counter() - started)

    def exposition(self) -> Exposition:
        page = Exposition()
        page.family("edgecoe_http_requests_total", "counter", "HTTP requests answered, by endpoint and status.")
        for name, labels, value in self.counters.items():
            if name == "edgecoe_http_requests_total":
                page.sample(name, value, **labels)
        page.family("edgecoe_http_request_seconds", "histogram", "Time from request to answer.")
        page.extend(self.latency.lines("edgecoe_http_request_seconds"))
        page.family("edgecoe_draining", "gauge", "1 while shutting down (new requests get 503).")
        page.sample("edgecoe_draining", 1.0 if self.draining else 0.0)
        return page


def retry_after(config: ServeConfig) -> dict[str, str]:
    return {"Retry-After": str(config.retry_after_s)}


def ok(payload: object, status: int = 200) -> Response:
    return JSONResponse(payload, status_code=status)


Handler = Callable[[Request], Awaitable[Response]]


class Service(Protocol):
    front: Front

    def close(self) -> None: ...


def build_app(service: Service, routes: list[tuple[str, Handler, str]]) -> Starlette:
    """An app of ``(path, handler, method)`` routes whose shutdown closes ``service`` (draining it) in a worker
    thread; the service is reachable as ``app.state.service``."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        await run_in_threadpool(service.close)

    app = Starlette(routes=[Route(path, handler, methods=[method]) for path, handler, method in routes],
                    lifespan=lifespan)
    app.state.service = service
    return app
