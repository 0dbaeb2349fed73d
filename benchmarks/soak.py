"""Soak: many thousands of requests of constant churn through the Python API.
Does resident memory stay within budget plus a fixed overhead, with no upward trend?

Client threads keep a bounded number of requests in flight (uniform over the
component types, so the 25 % budget churns all the time); a sampler records
RSS every half second. Prints start/end/max RSS, the trend over the second
half (least-squares slope, MB per 10,000 requests), and the request ledger
(served, failed, lost). Writes the curve as CSV and, with matplotlib, a PNG.

    python benchmarks/soak.py models/pcb-small --requests 20000 \\
        --csv benchmarks/results/raw/soak.csv --plot benchmarks/results/raw/soak_rss.png
"""

from __future__ import annotations

import argparse
import csv
import threading
import time
from pathlib import Path

import numpy as np

from edgecoe.config import RuntimeConfig
from edgecoe.memory import rss_bytes
from edgecoe.package import load_package
from edgecoe.results import machine_info
from edgecoe.runtime import Runtime
from edgecoe.workload import generate_workload, materialize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", nargs="?", default="models/pcb-small")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--budget", default="25%")
    parser.add_argument("--policy", default="edgecoe")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=64, help="per client thread")
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()

    pkg = load_package(args.package, verify="quick")
    # A pool of distinct inputs, reused: holding 20,000 images would itself be the leak.
    pool = generate_workload(pkg.manifest, num_requests=512, dist="uniform", seed=1)
    inputs = [materialize(r, pkg.manifest.inputs, pool.base_dir) for r in pool.requests]
    metadata = [r.metadata for r in pool.requests]
    print(f"machine: {machine_info()}")

    served = failed = 0
    ledger = threading.Lock()
    samples: list[tuple[float, int, int, int]] = []  # (s, requests ended, rss, cache used)
    stop = threading.Event()
    started = time.perf_counter()
    with Runtime(pkg, config=RuntimeConfig(policy=args.policy, budget=args.budget)) as runtime:
        cache = runtime.caches["cpu"]
        print(f"{pkg.name}: {args.requests} requests, policy {args.policy}, budget {cache.budget_bytes / 1e6:.1f} MB "
              f"of {runtime.engine.total_footprint_bytes / 1e6:.1f} MB, {args.threads} client threads")

        def done(future) -> None:  # type: ignore[no-untyped-def]
            nonlocal served, failed
            with ledger:
                if future.exception() is None:
                    served += 1
                else:
                    failed += 1

        def client(k: int) -> None:
            window = threading.BoundedSemaphore(args.in_flight)
            for i in range(k, args.requests, args.threads):
                window.acquire()
                future = runtime.submit(inputs[i % len(inputs)], metadata[i % len(inputs)], request_id=f"s{i}")
                future.add_done_callback(done)
                future.add_done_callback(lambda _: window.release())

        def sampler() -> None:
            while not stop.is_set():
                with ledger:
                    ended = served + failed
                samples.append((time.perf_counter() - started, ended, rss_bytes(), cache.used_bytes))
                stop.wait(0.5)

        watcher = threading.Thread(target=sampler, daemon=True)
        watcher.start()
        clients = [threading.Thread(target=client, args=(k,)) for k in range(args.threads)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        while True:
            with ledger:
                if served + failed >= args.requests:
                    break
            time.sleep(0.05)
        stop.set()
        watcher.join()
        samples.append((time.perf_counter() - started, served + failed, rss_bytes(), cache.used_bytes))
        stats = cache.stats
        budget = cache.budget_bytes
    wall = time.perf_counter() - started

    lost = args.requests - served - failed
    warm = [s for s in samples if s[1] >= args.requests * 0.05] or samples
    second_half = [s for s in samples if s[1] >= args.requests / 2]
    slope = 0.0
    if len(second_half) >= 3:
        xs = np.array([s[1] for s in second_half], float)
        ys = np.array([s[2] for s in second_half], float)
        slope = float(np.polyfit(xs, ys, 1)[0]) * 10_000 / 1e6  # MB per 10,000 requests
    rss_start, rss_end, rss_max = warm[0][2], samples[-1][2], max(s[2] for s in samples)
    print(f"served {served}, failed {failed}, lost {lost} in {wall:.0f} s ({served / wall:.0f} req/s); "
          f"{stats.num_misses} loads, {stats.num_evictions} evictions, peak cache {stats.peak_bytes / 1e6:.1f} MB "
          f"of {budget / 1e6:.1f} MB")
    print(f"RSS after 5 % warm-up {rss_start / 1e6:.1f} MB, end {rss_end / 1e6:.1f} MB, max {rss_max / 1e6:.1f} MB; "
          f"overhead above the budget at most {(rss_max - budget) / 1e6:.1f} MB; "
          f"trend over the second half {slope:+.1f} MB per 10,000 requests")

    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["seconds", "requests_ended", "rss_bytes", "cache_used_bytes"])
            writer.writerows((round(t, 2), n, r, c) for t, n, r, c in samples)
        print(f"wrote {args.csv}")
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed (pip install edgecoe[plots]): no plot")
            return
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot([s[1] for s in samples], [s[2] / 1e6 for s in samples], label="process RSS")
        ax.plot([s[1] for s in samples], [s[3] / 1e6 for s in samples], label="cache accounted")
        ax.axhline(budget / 1e6, color="grey", linestyle="--", label="cache budget")
        ax.set_xlabel("requests ended")
        ax.set_ylabel("MB")
        ax.set_title(f"soak: {pkg.name}, {args.requests} requests, {args.policy}, budget {args.budget}")
        ax.legend(loc="lower right")
        ax.set_ylim(bottom=0)
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
