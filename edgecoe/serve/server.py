"""Running an app on uvicorn with edgecoe's shutdown rule: on SIGTERM (or Ctrl-C) stop accepting, answer
new requests on open connections with 503, let what was accepted finish within the drain timeout, then
close the runtime (which fails anything still queued with a clear cancellation)."""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import time
import urllib.request
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


def wait_ready(base_url: str, *, process: subprocess.Popen[bytes] | None = None, timeout_s: float = 60.0) -> None:
    """Block until ``GET base_url/readyz`` answers 200 (a server started in another process).

    Raises:
        RuntimeError: not ready within ``timeout_s``, or ``process`` ended first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=1) as ready:
                if ready.status == 200:
                    return
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server at {base_url} exited with {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server at {base_url} was not ready within {timeout_s:g} s")
        time.sleep(0.2)
