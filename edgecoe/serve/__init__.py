"""``edgecoe serve``: one runtime behind HTTP (ASGI on uvicorn). Needs the ``serve`` extra (starlette, uvicorn).

- :func:`edgecoe.serve.coe.coe_app`: a CoE package (``POST /v1/infer``);
- :func:`edgecoe.serve.moe.moe_app`: an MoE package (OpenAI-compatible ``POST /v1/completions``);
- both: ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus text).
"""

from edgecoe.serve.common import ServeConfig

__all__ = ["ServeConfig"]
