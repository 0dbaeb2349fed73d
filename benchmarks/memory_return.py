"""Does memory come back after experts are evicted? RSS with and without malloc_trim.

1. Creates N sessions of a package's experts (cycling), measures RSS; drops them
   all; measures RSS again (glibc keeps freed arenas); calls malloc_trim(0); measures.
2. Serves a churning workload (25 % budget) through the runtime and samples RSS
   every 200 requests: it must stay flat (budget + fixed overhead), not climb.

    python benchmarks/memory_return.py models/pcb-small [--sessions 50] [--requests 2000]
"""

from __future__ import annotations

import argparse
import gc

from edgecoe.config import RuntimeConfig
from edgecoe.memory import rss_bytes, trim_heap
from edgecoe.package import load_package
from edgecoe.providers import create_session
from edgecoe.results import machine_info
from edgecoe.runtime import Runtime
from edgecoe.workload import Workload, generate_workload


def mb(value: int) -> str:
    return f"{value / 1e6:8.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    pkg = load_package(args.package, verify="quick")
    names = list(pkg.experts)
    print(f"machine: {machine_info()}")
    start = rss_bytes()
    sessions = [create_session(pkg.model_path(names[i % len(names)])) for i in range(args.sessions)]
    loaded = rss_bytes()
    del sessions
    gc.collect()
    dropped = rss_bytes()
    trim_heap()
    trimmed = rss_bytes()
    print(f"{args.sessions} sessions: RSS start {mb(start)}, loaded {mb(loaded)} (+{mb(loaded - start)}), "
          f"after delete {mb(dropped)} (+{mb(dropped - start)}), after malloc_trim {mb(trimmed)} (+{mb(trimmed - start)})")

    trace = generate_workload(pkg.manifest, num_requests=args.requests, dist="uniform", seed=1)
    with Runtime(pkg, config=RuntimeConfig(policy="edgecoe", budget="25%")) as runtime:
        budget = runtime.caches["cpu"].budget_bytes
        print(f"churn: budget {mb(budget)}, {args.requests} requests, uniform over {len(pkg.manifest.entry.experts)} types")
        base = rss_bytes()
        samples = []
        step = 200
        for offset in range(0, len(trace), step):
            chunk = Workload(trace.requests[offset:offset + step], base_dir=trace.base_dir)
            report = runtime.run(chunk)
            samples.append(rss_bytes())
            print(f"  after {offset + len(chunk):6d} requests: RSS {mb(samples[-1])}  "
                  f"evictions so far {runtime.caches['cpu'].stats.num_evictions}  failed {report.num_failed}")
        half = len(samples) // 2
        first, second = samples[:half] or samples, samples[half:] or samples
        print(f"RSS at runtime start {mb(base)}; mean first half {mb(sum(first) // len(first))}, "
              f"second half {mb(sum(second) // len(second))}; max {mb(max(samples))}")


if __name__ == "__main__":
    main()
