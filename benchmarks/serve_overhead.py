"""What HTTP costs: the same requests through the in-process API and through `edgecoe serve`, side by side.

    python benchmarks/serve_overhead.py --package models/pcb-small --repeat 3 \\
        --json benchmarks/results/serve/overhead_pcb_small.json

Light load: one request at a time (the client waits for each answer), p50 and p99 latency as the caller
sees it (a Python client, httpx2, keep-alive). Saturation: ``--concurrency`` callers each waiting for its
answer before sending the next, for ``--seconds``, cycling through the same requests: threads calling
``submit`` in-process, ``wrk`` (a C load generator; the Debian package) with as many connections over HTTP
— the same number of requests in flight, so both sides can batch alike. Inputs go over HTTP as raw bytes
(``application/octet-stream``), answers as JSON. The server runs in its own process on 127.0.0.1 with the
same budget and policy; both share this machine's cores with their callers, as a local gateway would.
Repeats alternate the order (in-process first, then HTTP first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
from serve_common import run_wrk, server, write_result, wrk_script


def _requests(package: Path, count: int, seed: int) -> list[tuple[dict[str, np.ndarray], dict[str, object]]]:
    from edgecoe.package import load_package
    from edgecoe.workload import generate_workload, materialize

    pkg = load_package(package, verify="quick")
    trace = generate_workload(pkg.manifest, num_requests=count, dist="zipf:1.1", seed=seed)
    return [(materialize(r, pkg.manifest.inputs, trace.base_dir), dict(r.metadata)) for r in trace.requests]


def in_process(package: Path, budget: str, requests: list, policy: str, concurrency: int,
               seconds: float) -> dict[str, Any]:
    import edgecoe

    with edgecoe.load(package, budget=budget, policy=policy) as runtime:
        for inputs, metadata in requests[:20]:  # warm: sessions and the optimized cache
            runtime.submit(inputs, metadata).result()
        light = []
        for inputs, metadata in requests:
            started = time.perf_counter()
            runtime.submit(inputs, metadata).result()
            light.append((time.perf_counter() - started) * 1e3)
        return {"light_ms": light, "saturated_rps": _closed_loop(runtime, requests, concurrency, seconds)}


def _closed_loop(runtime: Any, requests: list, concurrency: int, seconds: float) -> float:
    """Requests per second with ``concurrency`` callers each waiting for its answer before the next: the
    load wrk puts on the server, so both sides batch from the same number of requests in flight."""
    import threading

    done = [0] * concurrency
    stop = time.perf_counter() + seconds

    def caller(index: int) -> None:
        n = index
        while time.perf_counter() < stop:
            inputs, metadata = requests[n % len(requests)]
            runtime.submit(inputs, metadata, wait_s=None).result()
            done[index] += 1
            n += concurrency

    started = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


def _wrk(base: str, requests: list, name: str, concurrency: int, seconds: float) -> float:
    """Requests per second wrk sustains, cycling through ``requests``; any error or non-2xx answer stops the run."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        result = run_wrk(wrk_script(Path(folder), requests, name), f"{base}/v1/infer", concurrency, seconds)
    if result["connect_errors"] or result["dropped"] or result["client_timeouts"] or result["non_2xx"]:
        raise SystemExit(f"wrk saw errors or non-2xx answers:\n{result['raw']}")
    return float(result["rps"])


def over_http(package: Path, budget: str, requests: list, policy: str, concurrency: int,
              seconds: float) -> dict[str, Any]:
    import httpx2 as httpx

    with server(package, "--budget", budget, "--policy", policy) as (_, base):
        name = next(iter(requests[0][0]))

        def send(client: Any, inputs: dict[str, np.ndarray], metadata: dict[str, object]) -> None:
            array = inputs[name]
            answer = client.post(f"{base}/v1/infer", content=array.tobytes(), headers={
                "content-type": "application/octet-stream", "x-edgecoe-input": name,
                "x-edgecoe-dtype": str(array.dtype), "x-edgecoe-shape": ",".join(map(str, array.shape)),
                "x-edgecoe-metadata": json.dumps(metadata)})
            if answer.status_code != 200:
                raise SystemExit(f"HTTP {answer.status_code}: {answer.text}")

        with httpx.Client(timeout=120) as client:
            for inputs, metadata in requests[:20]:
                send(client, inputs, metadata)
            light = []
            for inputs, metadata in requests:
                started = time.perf_counter()
                send(client, inputs, metadata)
                light.append((time.perf_counter() - started) * 1e3)
        return {"light_ms": light, "saturated_rps": _wrk(base, requests, name, concurrency, seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=Path("models/pcb-small"))
    parser.add_argument("--budget", default="100%")
    parser.add_argument("--policy", default="edgecoe")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not (args.package / "edgecoe.json").is_file():
        subprocess.run(["edgecoe", "demo", "build", args.package.name], check=True)
    requests = _requests(args.package, args.requests, seed=31)
    runs = []
    for rep in range(args.repeat):
        order = ["in-process", "http"] if rep % 2 == 0 else ["http", "in-process"]
        run: dict[str, Any] = {}
        for entry in order:
            run[entry] = (in_process(args.package, args.budget, requests, args.policy, args.concurrency, args.seconds)
                          if entry == "in-process"
                          else over_http(args.package, args.budget, requests, args.policy, args.concurrency,
                                         args.seconds))
        ip, http = run["in-process"], run["http"]
        summary = {
            "p50_ms": {e: statistics.median(run[e]["light_ms"]) for e in run},
            "p99_ms": {e: float(np.percentile(run[e]["light_ms"], 99)) for e in run},
            "saturated_rps": {e: run[e]["saturated_rps"] for e in run},
            "p50_added_ms": statistics.median(http["light_ms"]) - statistics.median(ip["light_ms"]),
            "saturated_ratio": http["saturated_rps"] / ip["saturated_rps"],
        }
        print(f"repeat {rep + 1}: {json.dumps(summary)}", flush=True)
        runs.append({"order": order, **summary})
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
              "median": {"p50_added_ms": statistics.median(r["p50_added_ms"] for r in runs),
                         "saturated_ratio": statistics.median(r["saturated_ratio"] for r in runs)}}
    print(json.dumps(result["median"]))
    write_result(args.json, result)


if __name__ == "__main__":
    main()
