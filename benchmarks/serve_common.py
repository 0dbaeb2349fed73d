"""What the `edgecoe serve` benchmarks share: a server process on a free port, and wrk driven by a Lua script
that cycles through given requests (raw-bytes bodies, metadata in a header)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgecoe.serve.server import wait_ready


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(package: Path, *options: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`edgecoe serve PACKAGE OPTIONS` on a free port, once ready; terminated on leaving."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "edgecoe.cli", "serve", str(package), "--port", str(port),
                                *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process=process, timeout_s=120)
        yield process, base
    finally:
        process.terminate()
        process.wait(60)


def wrk_script(folder: Path, requests: list[tuple[dict[str, np.ndarray], dict[str, object]]], name: str) -> Path:
    """A wrk Lua script cycling through ``requests`` (input ``name`` as the body), counting errors at the end."""
    metas = []
    for i, (inputs, metadata) in enumerate(requests, start=1):
        (folder / f"{i}.bin").write_bytes(inputs[name].tobytes())
        metas.append(json.dumps(json.dumps(metadata)))
    shape = ",".join(map(str, requests[0][0][name].shape))
    script = folder / "post.lua"
    script.write_text(
        f"local bodies = {{}}\nlocal metas = {{{', '.join(metas)}}}\n"
        f"for i = 1, {len(requests)} do\n  local f = io.open('{folder}/' .. i .. '.bin', 'rb'); "
        "bodies[i] = f:read('*all'); f:close()\nend\nlocal n = 0\nrequest = function()\n"
        f"  n = n % {len(requests)} + 1\n  return wrk.format('POST', '/v1/infer', {{['Content-Type'] = "
        f"'application/octet-stream', ['X-Edgecoe-Input'] = '{name}', ['X-Edgecoe-Shape'] = '{shape}', "
        "['X-Edgecoe-Metadata'] = metas[n]}, bodies[n])\nend\n"
        "done = function(summary, latency, requests)\n"
        "  io.write(string.format('requests %d\\nerrors %d %d %d %d\\n', summary.requests, summary.errors.connect, "
        "summary.errors.read, summary.errors.write, summary.errors.timeout))\nend\n")
    return script


def run_wrk(script: Path, url: str, connections: int, seconds: float) -> dict[str, Any]:
    """wrk's requests/s, requests completed, non-2xx answers and errors (connect, dropped = read + write, timeouts)."""
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (apt-get install wrk)")
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "30s", "-s", str(script),
                          url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    requests = int(re.search(r"^requests (\d+)", out, re.M).group(1))  # type: ignore[union-attr]
    connect, read, write, timeout = (int(v) for v in re.search(  # type: ignore[union-attr]
        r"^errors (\d+) (\d+) (\d+) (\d+)", out, re.M).groups())
    return {"rps": rps, "requests": requests, "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "connect_errors": connect, "dropped": read + write, "client_timeouts": timeout, "raw": out}


def write_result(path: Path | None, result: dict[str, Any]) -> None:
    """The raw result as JSON (with the machine it was measured on), when a path is given."""
    from edgecoe.results import machine_info

    result["machine"] = machine_info()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")
