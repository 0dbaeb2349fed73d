"""Load with faults: 16 client threads submit 10,000 requests at a 25 % budget
while faults are injected; prints the ledger (served, failed by cause,
rejected at submit, lost) and checks the cache's accounting at the end.

Injected through the runtime's expert loader (a wrapper around the real session loader):
- one expert's session creation always fails (a corrupt file: quarantined);
- another's creation fails with an out-of-memory error 1 time in 3;
- 1 % of requests carry a poisoned item whose run raises (its batch mates must
  still complete);
- 1 % of submissions are invalid (NaN input or undeclared metadata).

    python benchmarks/faults.py models/pcb-small [--requests 10000] [--threads 16]
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from collections import Counter
from dataclasses import replace

import numpy as np

from edgecoe.config import RuntimeConfig
from edgecoe.errors import InvalidInputError
from edgecoe.loaders import WrappedLoader
from edgecoe.loaders.session import SessionLoader
from edgecoe.package import load_package
from edgecoe.profile import default_profile
from edgecoe.results import machine_info
from edgecoe.runtime import Runtime
from edgecoe.workload import generate_workload, materialize

POISON = 1234.5  # an item whose first value is this makes the injected run raise


class _Faulty:
    """A real session whose run raises on a poisoned item."""

    def __init__(self, session) -> None:  # type: ignore[no-untyped-def]
        self._session = session

    def run(self, names, feeds):  # type: ignore[no-untyped-def]
        first = next(iter(feeds.values()))
        if (first.reshape(len(first), -1)[:, 0] == POISON).any():
            raise RuntimeError("injected: poisoned item")
        return self._session.run(names, feeds)


class _FaultyLoader(WrappedLoader):
    """The session loader, with the faults above once ``armed``."""

    def __init__(self, inner: SessionLoader, broken: str, flaky: str, injected: Counter) -> None:
        super().__init__(inner)
        self.broken, self.flaky, self.injected = broken, flaky, injected
        self.armed = False
        self._count = itertools.count()

    def load(self, expert: str, processor_id: str):  # type: ignore[no-untyped-def]
        if self.armed and expert == self.broken:
            self.injected["creation: corrupt file"] += 1
            raise OSError(f"injected: {expert}.onnx is corrupt")
        if self.armed and expert == self.flaky and next(self._count) % 3 == 0:
            self.injected["creation: out of memory"] += 1
            raise MemoryError("injected: std::bad_alloc")
        loaded = self.inner.load(expert, processor_id)
        return replace(loaded, handle=_Faulty(loaded.handle))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", nargs="?", default="models/pcb-small")
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--budget", default="25%")
    args = parser.parse_args()
    pkg = load_package(args.package, verify="quick")
    pool = generate_workload(pkg.manifest, num_requests=256, dist="uniform", go_on=0.5, seed=2)
    inputs = [materialize(r, pkg.manifest.inputs, pool.base_dir) for r in pool.requests]
    metadata = [dict(r.metadata) for r in pool.requests]
    entry = pkg.manifest.entry
    broken, flaky = sorted(entry.experts.values())[:2]
    print(f"machine: {machine_info()}")
    print(f"{pkg.name}: {args.requests} requests from {args.threads} threads, budget {args.budget}; "
          f"{broken} never loads, {flaky} fails 1 load in 3, 1 % poisoned items, 1 % invalid submissions")

    injected: Counter = Counter()
    config = RuntimeConfig(policy="edgecoe", budget=args.budget)
    loader = _FaultyLoader(SessionLoader(pkg, default_profile(), config), broken, flaky, injected)
    with Runtime(pkg, config=config, loader=loader) as runtime:
        loader.armed = True
        runtime.caches["cpu"].clear()  # what was preloaded before the faults were armed
        futures, rejected = [], Counter()
        lock = threading.Lock()

        def client(k: int) -> None:
            rng = np.random.default_rng(k)
            mine, bad = [], Counter()
            for i in range(k, args.requests, args.threads):
                j = int(rng.integers(len(inputs)))
                feeds = {n: a.copy() for n, a in inputs[j].items()}
                meta = dict(metadata[j])
                if i % 100 == 11:
                    next(iter(feeds.values())).reshape(-1)[0] = POISON
                    injected["run: poisoned item"] += 1
                elif i % 200 == 23:
                    next(iter(feeds.values())).reshape(-1)[0] = np.nan
                elif i % 200 == 123:
                    meta["operator"] = "night-shift"
                try:
                    mine.append(runtime.submit(feeds, meta, request_id=f"q{i}"))
                except InvalidInputError as exc:
                    bad[str(exc).split(";")[0][:60]] += 1
            with lock:
                futures.extend(mine)
                rejected.update(bad)

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        causes: Counter = Counter()
        served = 0
        for future in futures:
            error = future.exception(timeout=600)
            if error is None:
                served += 1
            else:
                cause = getattr(error, "cause", str(error))
                causes["quarantined" if "quarantined" in cause else cause.split(":")[0] + ": " +
                       cause.split(":")[1].strip()[:40] if ":" in cause else cause[:60]] += 1
        wall = time.perf_counter() - started
        cache = runtime.caches["cpu"]
        cache.check()
        exact = (cache.stats.peak_bytes <= cache.budget_bytes and runtime.wait_idle(60)
                 and len(runtime.scheduler) == 0 and all(cache.pins(e) == 0 for e in pkg.experts))
        quarantined = runtime.health.quarantined(runtime.now_ms() / 1e3)
        failures = runtime.health.failures()
    failed = sum(causes.values())
    lost = args.requests - served - failed - sum(rejected.values())
    print(f"in {wall:.0f} s: served {served}, failed {failed}, rejected at submit {sum(rejected.values())}, "
          f"lost {lost}")
    print(f"faults injected: {dict(injected)}")
    print(f"errors returned by cause: {dict(causes.most_common())}")
    print(f"rejected at submit: {dict(rejected)}")
    print(f"quarantined at the end: {sorted(quarantined)}; failures per expert: {failures}")
    print(f"cache accounting exact: {exact} (peak {cache.stats.peak_bytes / 1e6:.1f} MB of "
          f"{cache.budget_bytes / 1e6:.1f} MB, no pins, nothing queued)")


if __name__ == "__main__":
    main()
