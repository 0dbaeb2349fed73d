"""A burst: 50,000 requests submitted at once. Does the process stay within the expert budget,
the runtime's fixed overhead and the configured queue limit — and is every request accounted for?

Before the queue limits, 50,000 requests submitted at once grew the process to 2.2 GB (about
45 KB per queued request: the copied input) against a 60 MB expert budget. Now ``submit``
admits up to ``max_queued_requests`` requests (and ``max_queued_input_bytes`` of inputs) in
flight; beyond that it either waits for room (``--mode wait``: back-pressure, the burst is
served as fast as the runtime can) or raises ``QueueFullError`` at once (``--mode reject``:
the caller learns at once; nothing is queued for it).

A sampler records RSS every 20 ms. Printed: the fixed overhead (RSS with the runtime started,
its experts preloaded and a warm-up burst of 2,000 requests served), the peak, the bound (fixed + queue limit in input bytes), and the
ledger (served, failed, rejected at submit, lost).

    python benchmarks/queue_bound.py models/pcb-small [--requests 50000] [--mode wait|reject]
        [--max-queued 10000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from edgecoe.admission import REQUEST_OVERHEAD_BYTES
from edgecoe.config import RuntimeConfig
from edgecoe.errors import QueueFullError
from edgecoe.memory import release_freed_memory, rss_bytes
from edgecoe.package import load_package
from edgecoe.results import format_machine, machine_info
from edgecoe.runtime import Runtime
from edgecoe.workload import generate_workload, materialize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", nargs="?", default="models/pcb-small")
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--budget", default="25%")
    parser.add_argument("--mode", choices=["wait", "reject"], default="wait")
    parser.add_argument("--max-queued", type=int, default=10_000, help="max_queued_requests")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    pkg = load_package(args.package, verify="quick")
    pool = generate_workload(pkg.manifest, num_requests=256, dist="uniform", seed=5)
    inputs = [materialize(r, pkg.manifest.inputs, pool.base_dir) for r in pool.requests]
    metadata = [r.metadata for r in pool.requests]
    config = RuntimeConfig(policy="edgecoe", budget=args.budget, max_queued_requests=args.max_queued)
    print(f"machine: {format_machine(machine_info())}")
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_bytes())
            time.sleep(0.02)

    with Runtime(pkg, config=config) as runtime:
        # Warm-up: a burst of 2,000 requests, so batches reach their largest size and ONNX Runtime's
        # arenas and the batch buffers have grown to their working size under load; what stays
        # after it (heap trimmed) is the runtime's fixed overhead.
        warm = [runtime.submit(inputs[i % len(inputs)], metadata[i % len(metadata)], wait_s=None)
                for i in range(2000)]
        for future in warm:
            future.exception()
        del warm
        release_freed_memory()
        fixed = rss_bytes()
        budget = runtime.caches["cpu"].budget_bytes
        per_request = sum(a.nbytes for a in inputs[0].values()) + REQUEST_OVERHEAD_BYTES
        limit_bytes = min(runtime.in_flight.max_bytes, runtime.in_flight.max_requests * per_request)
        print(f"{pkg.name}: {args.requests} requests at once ({args.mode}), budget {budget / 1e6:.1f} MB; "
              f"queue limits {runtime.in_flight.max_requests} requests, {runtime.in_flight.max_bytes / 1e6:.0f} MB "
              f"of inputs ({per_request / 1e3:.1f} kB per request with its bookkeeping: {limit_bytes / 1e6:.1f} MB binds)")
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # Outcomes are counted as they come and results dropped: a caller that kept 50,000 results
        # would measure its own memory, not the runtime's queue.
        ledger = {"served": 0, "failed": 0}
        ended = threading.Semaphore(0)
        lock = threading.Lock()

        def count(future: Future) -> None:
            with lock:
                ledger["served" if future.exception() is None else "failed"] += 1
            ended.release()

        rejected = 0
        started = time.perf_counter()
        for i in range(args.requests):
            try:
                future = runtime.submit(inputs[i % len(inputs)], metadata[i % len(metadata)],
                                        wait_s=None if args.mode == "wait" else 0.0)
            except QueueFullError:
                rejected += 1
                continue
            future.add_done_callback(count)
            del future
        submitted_s = time.perf_counter() - started
        for _ in range(args.requests - rejected):
            ended.acquire()
        served, failed = ledger["served"], ledger["failed"]
        wall_s = time.perf_counter() - started
        stop.set()
        sampler.join()
    peak = max(samples)
    lost = args.requests - served - failed - rejected
    bound = fixed + limit_bytes
    print(f"submitting took {submitted_s:.1f} s, serving {wall_s:.1f} s ({served / wall_s:.0f} req/s)")
    print(f"served {served}, failed {failed}, rejected at submit {rejected}, lost {lost}")
    print(f"RSS: fixed overhead (started, preloaded, warm) {fixed / 1e6:.1f} MB; peak {peak / 1e6:.1f} MB; "
          f"bound fixed + queue limit {bound / 1e6:.1f} MB -> {'within' if peak <= bound else 'ABOVE'} "
          f"({(peak - fixed) / 1e6:.1f} MB above the fixed overhead)")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine_info(), "package": pkg.name, "requests": args.requests, "mode": args.mode,
            "budget_bytes": budget, "max_queued_requests": runtime.in_flight.max_requests,
            "max_queued_input_bytes": runtime.in_flight.max_bytes, "input_bytes_per_request": per_request,
            "fixed_rss_bytes": fixed, "peak_rss_bytes": peak, "bound_bytes": bound, "served": served,
            "failed": failed, "rejected": rejected, "lost": lost, "submit_s": submitted_s, "wall_s": wall_s,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
