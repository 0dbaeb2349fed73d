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
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from serve_common import run_wrk, server, write_result, wrk_script


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _requests(package: Path) -> tuple[list, str]:
    """200 generated requests and the name of the input that is their body."""
    from edgecoe.package import load_package
    from edgecoe.workload import generate_workload, materialize

    pkg = load_package(package, verify="quick")
    trace = generate_workload(pkg.manifest, num_requests=200, dist="zipf:1.1", seed=41)
    requests = [(materialize(r, pkg.manifest.inputs, trace.base_dir), dict(r.metadata)) for r in trace.requests]
    return requests, pkg.manifest.inputs[0].name


def _statuses(base: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as page:
        text = page.read().decode()
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'edgecoe_http_requests_total\{endpoint="infer",status="(\d+)"\} ([\d.e+]+)', text)}


def run_once(args: argparse.Namespace, script: Path, body_bytes: int) -> dict[str, Any]:
    import urllib.request

    options = ("--budget", args.budget, "--max-queued-requests", str(args.max_queued), "--timeout-s", str(args.timeout_s))
    with server(args.package, *options) as (process, base):
        idle_kb = _status_kb(process.pid, "VmRSS")
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as page:
            budget = int(float(re.search(r"edgecoe_expert_budget_bytes\{[^}]*\} ([\d.e+]+)",  # type: ignore[union-attr]
                                         page.read().decode()).group(1)))
        capacity = run_wrk(script, f"{base}/v1/infer", 64, 10)
        before = _statuses(base)
        overload = run_wrk(script, f"{base}/v1/infer", args.connections, args.seconds)
        time.sleep(args.timeout_s + 1)  # answers still on their way when wrk stopped
        after = _statuses(base)
        peak_kb = _status_kb(process.pid, "VmHWM")
    statuses = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    queue_bytes = args.max_queued * (body_bytes + 8 * 1024)
    bound = idle_kb * 1024 + budget + queue_bytes
    return {"capacity_rps": capacity["rps"], "overload_rps": overload["rps"],
            "offered_connections": args.connections, "client_saw": overload["requests"],
            "server_answered": sum(statuses.values()), "dropped": overload["dropped"],
            "client_timeouts": overload["client_timeouts"], "connect_errors": overload["connect_errors"],
            "statuses": statuses, "idle_rss_bytes": idle_kb * 1024, "peak_rss_bytes": peak_kb * 1024,
            "budget_bytes": budget, "queue_limit_bytes": queue_bytes, "rss_bound_bytes": bound,
            "within_bound": peak_kb * 1024 <= bound}


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
        requests, name = _requests(args.package)
        script, body_bytes = wrk_script(Path(folder), requests, name), requests[0][0][name].nbytes
        for rep in range(args.repeat):
            run = run_once(args, script, body_bytes)
            print(f"repeat {rep + 1}: {json.dumps(run)}", flush=True)
            runs.append(run)
    write_result(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs})


if __name__ == "__main__":
    main()
