"""`edgecoe serve` under overload: far more requests in flight than it can serve, for a minute.

    python benchmarks/serve_overload.py --package models/pcb-small --budget 25% --connections 1024 \\
        --seconds 60 --repeat 3 --json benchmarks/results/serve/overload_pcb_small.json

First its capacity (wrk, 64 connections, 10 s), then ``--connections`` connections for ``--seconds`` against a
queue limit of ``--max-queued`` requests: every request must get an answer — a result, 429 (queue full) or
504 (timed out) — and none may be lost (wrk's read/write errors and timeouts: a connection dropped with a
request on it; wrk's read and write errors). wrk gives up on an answer after 30 s (``client_timeouts``);
the server's own counters (``/metrics``, before and after) say what it answered. The server's peak RSS (VmHWM) is compared with its idle RSS after start-up plus the expert
budget plus what the queue limit lets requests hold.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _lua(folder: Path, package: Path) -> tuple[Path, int]:
    """A wrk script cycling through 200 generated requests (raw bodies); returns it and one body's size."""
    from edgecoe.package import load_package
    from edgecoe.workload import generate_workload, materialize

    pkg = load_package(package, verify="quick")
    trace = generate_workload(pkg.manifest, num_requests=200, dist="zipf:1.1", seed=41)
    name = pkg.manifest.inputs[0].name
    metas, size, shape = [], 0, ""
    for i, request in enumerate(trace.requests, start=1):
        array = materialize(request, pkg.manifest.inputs, trace.base_dir)[name]
        (folder / f"{i}.bin").write_bytes(array.tobytes())
        metas.append(json.dumps(json.dumps(dict(request.metadata))))
        size, shape = array.nbytes, ",".join(map(str, array.shape))
    script = folder / "post.lua"
    script.write_text(
        f"local bodies = {{}}\nlocal metas = {{{', '.join(metas)}}}\n"
        f"for i = 1, {len(metas)} do\n  local f = io.open('{folder}/' .. i .. '.bin', 'rb'); "
        "bodies[i] = f:read('*all'); f:close()\nend\nlocal n = 0\nrequest = function()\n"
        f"  n = n % {len(metas)} + 1\n  return wrk.format('POST', '/v1/infer', {{['Content-Type'] = "
        f"'application/octet-stream', ['X-Edgecoe-Input'] = '{name}', ['X-Edgecoe-Shape'] = '{shape}', "
        "['X-Edgecoe-Metadata'] = metas[n]}, bodies[n])\nend\n"
        "local statuses = {}\nresponse = function(status, headers, body)\n"
        "  statuses[status] = (statuses[status] or 0) + 1\nend\n"
        "done = function(summary, latency, requests)\n"
        "  io.write(string.format('requests %d\\nerrors %d %d %d %d\\n', summary.requests, summary.errors.connect, "
        "summary.errors.read, summary.errors.write, summary.errors.timeout))\nend\n")
    return script, size


def _wrk(script: Path, url: str, connections: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "30s", "-s",
                          str(script), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    requests = int(re.search(r"^requests (\d+)", out, re.M).group(1))  # type: ignore[union-attr]
    connect, read, write, timeout = (int(v) for v in re.search(r"^errors (\d+) (\d+) (\d+) (\d+)", out, re.M).groups())  # type: ignore[union-attr]
    return {"rps": rps, "requests": requests, "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "connect_errors": connect, "dropped": read + write, "client_timeouts": timeout, "raw": out}


def _statuses(base: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as page:
        text = page.read().decode()
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'edgecoe_http_requests_total\{endpoint="infer",status="(\d+)"\} ([\d.e+]+)', text)}


def run_once(args: argparse.Namespace, script: Path, body_bytes: int) -> dict[str, Any]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "edgecoe.cli", "serve", str(args.package), "--port", str(port), "--budget", args.budget,
         "--max-queued-requests", str(args.max_queued), "--timeout-s", str(args.timeout_s)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=1) as ready:
                    if ready.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not become ready") from None
                time.sleep(0.2)
        idle_kb = _status_kb(server.pid, "VmRSS")
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as page:
            budget = int(float(re.search(r"edgecoe_expert_budget_bytes\{[^}]*\} ([\d.e+]+)",  # type: ignore[union-attr]
                                         page.read().decode()).group(1)))
        capacity = _wrk(script, f"{base}/v1/infer", 64, 10)
        before = _statuses(base)
        overload = _wrk(script, f"{base}/v1/infer", args.connections, args.seconds)
        time.sleep(args.timeout_s + 1)  # answers still on their way when wrk stopped
        after = _statuses(base)
        peak_kb = _status_kb(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(60)
    statuses = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    queue_bytes = args.max_queued * (body_bytes + 8 * 1024)
    bound = idle_kb * 1024 + budget + queue_bytes
    return {"capacity_rps": capacity["rps"], "overload_rps": overload["rps"],
            "offered_connections": args.connections, "client_saw": overload["requests"],
            "server_answered": sum(statuses.values()), "dropped": overload["dropped"],
            "client_timeouts": overload["client_timeouts"], "connect_errors": overload["connect_errors"],
            "statuses": statuses,
            "idle_rss_bytes": idle_kb * 1024, "peak_rss_bytes": peak_kb * 1024, "budget_bytes": budget,
            "queue_limit_bytes": queue_bytes, "rss_bound_bytes": bound, "within_bound": peak_kb * 1024 <= bound}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=Path("models/pcb-small"))
    parser.add_argument("--budget", default="25%")
    parser.add_argument("--connections", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-queued", type=int, default=256)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (apt-get install wrk)")
    if not (args.package / "edgecoe.json").is_file():
        subprocess.run(["edgecoe", "demo", "build", args.package.name], check=True)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        script, body_bytes = _lua(Path(folder), args.package)
        for rep in range(args.repeat):
            run = run_once(args, script, body_bytes)
            print(f"repeat {rep + 1}: {json.dumps(run)}", flush=True)
            runs.append(run)
    from edgecoe.results import machine_info

    result = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine_info(), "runs": runs}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
