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
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    """Requests per second wrk sustains, cycling through ``requests`` (bodies in files a Lua script reads)."""
    import shutil
    import tempfile

    if shutil.which("wrk") is None:
        raise SystemExit("saturation needs wrk (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as folder:
        metas = []
        for i, (inputs, metadata) in enumerate(requests, start=1):
            Path(folder, f"{i}.bin").write_bytes(inputs[name].tobytes())
            metas.append(json.dumps(json.dumps(metadata)))
        shape = ",".join(map(str, requests[0][0][name].shape))
        script = Path(folder, "post.lua")
        script.write_text(
            f"local bodies = {{}}\nlocal metas = {{{', '.join(metas)}}}\n"
            f"for i = 1, {len(requests)} do\n"
            f"  local f = io.open('{folder}/' .. i .. '.bin', 'rb'); bodies[i] = f:read('*all'); f:close()\nend\n"
            "local n = 0\nrequest = function()\n"
            f"  n = n % {len(requests)} + 1\n"
            "  return wrk.format('POST', '/v1/infer', {['Content-Type'] = 'application/octet-stream', "
            f"['X-Edgecoe-Input'] = '{name}', ['X-Edgecoe-Shape'] = '{shape}', "
            "['X-Edgecoe-Metadata'] = metas[n]}, bodies[n])\nend\n"
            "done = function(summary, latency, requests)\n"
            "  io.write(string.format('errors %d %d %d %d\\n', summary.errors.connect, summary.errors.status, "
            "summary.errors.read, summary.errors.timeout))\nend\n")
        out = subprocess.run(["wrk", "-t2", f"-c{concurrency}", f"-d{seconds:g}s", "-s", str(script),
                              f"{base}/v1/infer"], capture_output=True, text=True, check=True).stdout
    errors = [int(v) for line in out.splitlines() if line.startswith("errors ") for v in line.split()[1:]]
    if any(errors):
        raise SystemExit(f"wrk saw errors (connect, status, read, timeout): {errors}\n{out}")
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))


def over_http(package: Path, budget: str, requests: list, policy: str, concurrency: int,
              seconds: float) -> dict[str, Any]:
    import httpx2 as httpx

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "edgecoe.cli", "serve", str(package), "--port", str(port),
                               "--budget", budget, "--policy", policy], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not become ready")
            time.sleep(0.2)
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
    finally:
        server.terminate()
        server.wait(60)


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
    from edgecoe.results import machine_info

    result["machine"] = machine_info()
    print(json.dumps(result["median"]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
