"""Scheduler + cache decision overhead per request, without inference.

350 experts (300 preliminary classifiers, 50 shared subsequent experts), 4
executors on two processors, 10,000 requests already queued; then each
further request is timed through the decision path: scheduler ``add``, and,
amortised over its batch, ``pop_batch`` plus the cache's acquire/release (a
fake loader, so only the decision is timed). Prints the median and p99 per
request for every scheduler.

    python benchmarks/sched_overhead.py [--experts 350] [--queued 10000] [--measure 5000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from edgecoe.cache import ExpertCache, create_eviction_policy
from edgecoe.results import machine_info
from edgecoe.sched import SCHEDULERS, CostModel, ExecutorInfo, Task, create_scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=350)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--measure", type=int, default=5_000)
    args = parser.parse_args()
    rng = random.Random(0)
    names = [f"e{i}" for i in range(args.experts)]
    arch = {n: ("resnet101" if i % 7 else "yolov5l") for i, n in enumerate(names)}
    size = dict.fromkeys(names, 180000000)
    parents = {n: [names[(i * 3) % args.experts]] for i, n in enumerate(names) if i % 7 == 0}
    weights = [1.0 / (r + 1) ** 1.1 for r in range(args.experts)]
    print(f"machine: {machine_info()}")
    print(f"{args.experts} experts, 4 executors on 2 processors, {args.queued} queued, {args.measure} measured")
    for name in SCHEDULERS:
        caches = {p: ExpertCache(budget_bytes=12_000_000_000, loader=lambda e: (e, size[e]),
                                 unloader=lambda e, h: None, size_of=size.__getitem__,
                                 policy=create_eviction_policy("coserve", usage_probability=dict(zip(names, weights, strict=False)),
                                                               parents=parents))
                  for p in ("cuda:0", "cpu")}
        cost = CostModel(architecture_of=arch, bytes_of=size, resident=lambda e, p, caches=caches: caches[p].contains(e),
                         resident_set=lambda p, caches=caches: caches[p].members())
        executors = [ExecutorInfo(0, "cuda:0", "cuda"), ExecutorInfo(1, "cuda:0", "cuda"),
                     ExecutorInfo(2, "cuda:0", "cuda"), ExecutorInfo(3, "cpu", "cpu")]
        sched = create_scheduler(name, executors, cost, max_delay_ms=30_000.0)
        picks = rng.choices(names, weights=weights, k=args.queued + args.measure)
        for seq, expert in enumerate(picks[: args.queued]):
            sched.add(Task(f"r{seq}", expert, 0.0, seq), 0.0)
        add_us: list[float] = []
        for seq, expert in enumerate(picks[args.queued:], start=args.queued):
            start = time.perf_counter()
            sched.add(Task(f"r{seq}", expert, float(seq), seq), float(seq))
            add_us.append((time.perf_counter() - start) * 1e6)
        # pop + cache decision, amortised over the batch's requests
        pop_us: list[float] = []
        now = float(args.queued + args.measure)
        for i in range(args.measure // 4):
            executor = i % len(executors)
            start = time.perf_counter()
            batch = sched.pop_batch(executor, now)
            if batch is None:
                continue
            cache = caches[executors[executor].processor_id]
            got = cache.acquire(batch.expert, wait=False)
            if got is not None:
                cache.release(batch.expert)
            sched.batch_done(executor, now)
            elapsed = (time.perf_counter() - start) * 1e6
            pop_us.extend([elapsed / len(batch.tasks)] * len(batch.tasks))
        per_request = [a + p for a, p in zip(add_us, pop_us, strict=False)]
        print(f"  {name:<12} add median {statistics.median(add_us):6.1f} us  p99 "
              f"{sorted(add_us)[int(0.99 * len(add_us))]:7.1f} us | pop+cache per request median "
              f"{statistics.median(pop_us):6.1f} us | decision per request median "
              f"{statistics.median(per_request):6.1f} us")


if __name__ == "__main__":
    main()
