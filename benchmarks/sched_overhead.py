"""The scheduler's decision overhead per request, at batch 1, with and without starving groups.

350 experts (300 preliminary classifiers, 50 shared subsequent experts), 4 executors on two
processors, 10,000 requests already queued. Every measured request is then timed through its
own decisions only: its ``add`` (assign and arrange) and the ``pop_batch`` that hands it to an
executor (pick a group, split). Batches are capped at one item, so no pop is spread over
several requests, and the two timings summed are the same request's. Experts' residency is
read from real caches (the decision asks them), but no load, acquire or release is timed.

Two settings: no group waited long; and starving groups present — half of the queued
requests arrived ten delay bounds ago (the default bound), so edgecoe takes its overdue path.

    python benchmarks/sched_overhead.py [--experts 350] [--queued 10000] [--measure 4000] [--repeat 3]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from edgecoe.cache import ExpertCache, create_eviction_policy
from edgecoe.config import RuntimeConfig
from edgecoe.results import format_machine, machine_info
from edgecoe.sched import SCHEDULERS, CostModel, ExecutorInfo, Task, create_scheduler

DELAY_BOUND_MS = RuntimeConfig().max_delay_ms or 5_000.0  # the default bound (the cost does not depend on it)


def measure(name: str, *, starving: bool, args: argparse.Namespace) -> tuple[float, float]:
    """(median, p99) microseconds of one request's add + pop, for scheduler ``name``."""
    rng = random.Random(0)
    names = [f"e{i}" for i in range(args.experts)]
    arch = {n: ("resnet101" if i % 7 else "yolov5l") for i, n in enumerate(names)}
    size = dict.fromkeys(names, 180_000_000)
    parents = {n: [names[(i * 3) % args.experts]] for i, n in enumerate(names) if i % 7 == 0}
    weights = [1.0 / (r + 1) ** 1.1 for r in range(args.experts)]
    caches = {p: ExpertCache(budget_bytes=12_000_000_000, loader=lambda e: (e, size[e]),
                             unloader=lambda e, h: None, size_of=size.__getitem__,
                             policy=create_eviction_policy("coserve", usage_probability=dict(zip(names, weights, strict=True)),
                                                           parents=parents))
              for p in ("cuda:0", "cpu")}
    for cache in caches.values():  # a realistic residency: the likeliest experts that fit
        cache.preload(sorted(names, key=lambda n: -weights[names.index(n)]))
    cost = CostModel(architecture_of=arch, bytes_of=size, max_batch_cap=1,
                     resident=lambda e, p: caches[p].contains(e), resident_set=lambda p: caches[p].members())
    executors = [ExecutorInfo(0, "cuda:0", "cuda"), ExecutorInfo(1, "cuda:0", "cuda"),
                 ExecutorInfo(2, "cuda:0", "cuda"), ExecutorInfo(3, "cpu", "cpu")]
    sched = create_scheduler(name, executors, cost, max_delay_ms=DELAY_BOUND_MS)
    now = 10 * DELAY_BOUND_MS  # the queue's clock when measuring
    picks = rng.choices(names, weights=weights, k=args.queued + args.measure)
    for seq, expert in enumerate(picks[: args.queued]):
        # starving: half the queue arrived at 0 (waited 10x the bound); else all just arrived
        arrived = 0.0 if starving and seq % 2 == 0 else now - 1.0
        sched.add(Task(f"r{seq}", expert, arrived, seq), arrived)
    add_us: dict[int, float] = {}
    for seq, expert in enumerate(picks[args.queued:], start=args.queued):
        start = time.perf_counter()
        sched.add(Task(f"r{seq}", expert, now, seq), now)
        add_us[seq] = (time.perf_counter() - start) * 1e6
    per_request: list[float] = []
    executor = 0
    while add_us and len(sched):
        start = time.perf_counter()
        batch = sched.pop_batch(executor, now)
        elapsed = (time.perf_counter() - start) * 1e6
        if batch is not None:
            sched.batch_done(executor, now)
            (task,) = batch.tasks  # batches of one: this pop is this request's alone
            if task.seq in add_us:
                per_request.append(add_us.pop(task.seq) + elapsed)
        executor = (executor + 1) % len(executors)
    per_request.sort()
    return statistics.median(per_request), per_request[int(0.99 * (len(per_request) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=350)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--measure", type=int, default=4_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of every setting (medians and ranges)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"machine: {format_machine(machine_info())}")
    print(f"{args.experts} experts, 4 executors on 2 processors, {args.queued} queued, {args.measure} measured, "
          "batch 1; microseconds per request (its add + the pop that served it)")
    # scheduler -> setting -> [median, p99] per repeat; the machine is shared, so each setting
    # runs --repeat times (interleaved) and the median of the medians is printed with its range
    results: dict[str, dict[str, list[list[float]]]] = {n: {"calm": [], "starving": []} for n in SCHEDULERS}
    for _ in range(args.repeat):
        for name in SCHEDULERS:
            for starving in (False, True):
                median, p99 = measure(name, starving=starving, args=args)
                results[name]["starving" if starving else "calm"].append([median, p99])
    for name in SCHEDULERS:
        shown = []
        for setting in ("calm", "starving"):
            medians = [m for m, _ in results[name][setting]]
            p99s = [p for _, p in results[name][setting]]
            shown.append(f"median {statistics.median(medians):6.1f} ({min(medians):.1f}-{max(medians):.1f}) "
                         f"p99 {statistics.median(p99s):7.1f}")
        print(f"  {name:<12} no starving: {shown[0]} | starving present: {shown[1]}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "args": vars(args) | {"json": str(args.json)},
                                         "us_per_request_median_p99_per_run": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
