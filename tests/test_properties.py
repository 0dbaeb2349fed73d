"""Property tests (hypothesis) over random packages, traces and every policy.

Invariants: the budget is never exceeded, pins balance, every request ends
exactly once, and a prefetch never evicts an expert a queued or running task
needs.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from concurrent.futures import wait
from pathlib import Path

import numpy as np
from helpers import wait_idle, wide_package
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgecoe.cache import ExpertCache, create_eviction_policy
from edgecoe.config import RuntimeConfig
from edgecoe.errors import InvalidInputError
from edgecoe.package import load_package
from edgecoe.profile import ArchitectureCost, DeviceProfile, ProcessorProfile
from edgecoe.runtime import Runtime
from edgecoe.sched import PRESETS
from edgecoe.sched.prefetch import maybe_prefetch
from edgecoe.sim import simulate
from edgecoe.workload import TraceRequest, Workload

ROUTES = st.lists(st.sampled_from(["argmax", "threshold", "fanout", "stop"]), min_size=1, max_size=4)


# -- cache + prefetch ------------------------------------------------------------------
@st.composite
def cache_scenarios(draw):  # type: ignore[no-untyped-def]
    sizes = draw(st.lists(st.integers(1, 50), min_size=2, max_size=12))
    names = [f"e{i}" for i in range(len(sizes))]
    budget = draw(st.integers(max(sizes), sum(sizes) + 10))
    history = draw(st.lists(st.sampled_from(names), max_size=30))
    pinned = draw(st.sets(st.sampled_from(names), max_size=3))
    protect = draw(st.sets(st.sampled_from(names)))
    wanted = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))
    policy = draw(st.sampled_from(["lru", "fifo", "coserve"]))
    return dict(zip(names, sizes, strict=False)), budget, history, pinned, protect, wanted, policy


@given(cache_scenarios())
@settings(max_examples=300, deadline=None)
def test_prefetch_never_evicts_a_needed_or_pinned_expert(scenario):
    sizes, budget, history, pinned, protect, wanted, policy = scenario
    cache = ExpertCache(budget_bytes=budget, loader=lambda e: (object(), sizes[e]), unloader=lambda e, h: None,
                        policy=create_eviction_policy(policy, usage_probability=dict.fromkeys(sizes, 0.1),
                                                      parents={}, future_uses=[]),
                        size_of=sizes.__getitem__)
    for expert in history:
        cache.acquire(expert)
        cache.release(expert)
    held = [e for e in pinned if cache.acquire(e, wait=False) is not None]
    before = cache.resident()
    maybe_prefetch(cache, wanted, protect=protect)
    after = cache.resident()
    assert (before & (protect | set(held))) <= after
    assert cache.used_bytes <= budget
    cache.check()
    for expert in held:
        cache.release(expert)
    assert all(cache.pins(e) == 0 for e in sizes)


# -- the real runtime on random packages --------------------------------------------------
@st.composite
def runtime_scenarios(draw):  # type: ignore[no-untyped-def]
    num_first = draw(st.integers(2, 6))
    shape = {"num_first": num_first, "num_second": draw(st.integers(0, 3)), "routes": draw(ROUTES),
                 "seed": draw(st.integers(0, 1000))}
    kinds = draw(st.lists(st.integers(0, num_first - 1), min_size=1, max_size=40))
    config = RuntimeConfig(policy=draw(st.sampled_from(sorted(PRESETS))),
                           budget=f"{draw(st.integers(35, 100))}%",
                           num_executors=draw(st.one_of(st.none(), st.integers(1, 3))),
                           prefetch=draw(st.one_of(st.none(), st.booleans())))
    return shape, kinds, config


@given(runtime_scenarios())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_runtime_invariants_on_random_packages(scenario):
    shape, kinds, config = scenario
    with tempfile.TemporaryDirectory() as tmp:
        pkg = load_package(wide_package(Path(tmp) / "pkg", **shape), verify="quick")
        try:
            runtime = Runtime(pkg, config=config)
        except InvalidInputError as exc:
            assert "can never fit" in str(exc)
            assume(False)  # a budget below one expert is refused at start-up, by design
        rng = np.random.default_rng(shape["seed"])
        endings: Counter = Counter()
        futures = []
        for i, kind in enumerate(kinds):
            future = runtime.submit({"x": rng.standard_normal(8).astype(np.float32)}, {"kind": f"k{kind}"},
                                    request_id=f"r{i}")
            future.add_done_callback(lambda f, i=i: endings.update([i]))
            futures.append(future)
        _done, not_done = wait(futures, timeout=60)
        assert not not_done
        assert all(f.exception() is None for f in futures)
        wait_idle(runtime, 60)  # a prefetch may still hold the pin of the expert it loads
        for cache in runtime.caches.values():
            assert cache.stats.peak_bytes <= cache.budget_bytes
            cache.check()
            assert all(cache.pins(e) == 0 for e in pkg.experts)
        assert len(runtime.scheduler) == 0
        outcome = runtime.close()
        assert outcome.cancelled == [] and outcome.failed == {}
    assert sorted(endings) == list(range(len(kinds))) and set(endings.values()) == {1}


# -- the simulator on random packages -------------------------------------------------------
@given(runtime_scenarios(), st.integers(1, 200), st.floats(0.1, 1.0))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_simulation_completes_every_request_within_budget(scenario, num_requests, share):
    shape, kinds, config = scenario
    with tempfile.TemporaryDirectory() as tmp:
        pkg = load_package(wide_package(Path(tmp) / "pkg", **shape), verify="quick")
    costs = {arch: {"cpu": ArchitectureCost(k_ms=1.0 + i, b_ms=0.5, max_batch=8, load_ms=20.0 * (i + 1),
                                           footprint_bytes=1_000_000 * (i + 1))}
             for i, arch in enumerate(("first", "second"))}
    total = sum(1_000_000 * (1 if e.architecture == "first" else 2) for e in pkg.experts.values())
    budget = max(2_000_000, int(total * share))
    profile = DeviceProfile(name="prop", memory="uma", costs=costs,
                            processors=[ProcessorProfile(id="cpu", budget_bytes=budget, num_executors=2)])
    seeded = {"x": {"seeded": {"seed": 0}}}
    trace = Workload([TraceRequest(id=f"r{i}", arrival_ms=i * 2.0, metadata={"kind": f"k{kinds[i % len(kinds)]}"},
                                   inputs=seeded) for i in range(num_requests)])
    from dataclasses import replace

    report = simulate(pkg.manifest, profile, trace, config=replace(config, budget=None), seed=shape["seed"])
    assert report.num_completed == num_requests and report.num_failed == 0
    assert report.peak_bytes["cpu"] <= report.budget_bytes["cpu"] == budget
