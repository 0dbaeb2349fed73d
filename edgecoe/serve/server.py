"""Running an app on uvicorn with edgecoe's shutdown rule: on SIGTERM (or Ctrl-C) stop accepting, answer
new requests on open connections with 503, let what was accepted finish within the drain timeout, then
close the runtime (which fails anything still queued with a clear cancellation)."""

from __future__ import annotations

import ipaddress
import logging
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_app(app: Any, *, host: str, port: int, drain_timeout_s: float, log_level: str = "warning") -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then drain (see the module docstring)."""
    import uvicorn

    service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            service.front.draining = True  # before uvicorn stops: requests on kept-alive connections get 503
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=max(1, int(drain_timeout_s)), access_log=False)
    Server(config).run()
