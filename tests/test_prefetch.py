"""Prefetch: likely successors, and never evicting what queued or running batches need."""

from __future__ import annotations

import random

import pytest
from helpers import chain_spec, write_spec  # noqa: F401 - fixture module on sys.path

from edgecoe.cache import ExpertCache, create_eviction_policy
from edgecoe.config import RuntimeConfig
from edgecoe.package import load_package
from edgecoe.runtime import Runtime
from edgecoe.sched.prefetch import likely_successors, maybe_prefetch
from edgecoe.sched.presets import PRESETS, prefetch_enabled
from edgecoe.workload import generate_workload


def cache_of(sizes, budget):
    return ExpertCache(budget_bytes=budget, loader=lambda e: (e, sizes[e]), unloader=lambda e, h: None,
                       policy=create_eviction_policy("lru"), size_of=sizes.__getitem__, record_events=True)


def test_likely_successors_from_declared_fractions(chain_package):
    pkg = load_package(chain_package)
    assert likely_successors(pkg.experts["cls_a"]) == ["stage2"]
    assert likely_successors(pkg.experts["stage2"]) == []


def test_prefetch_uses_free_room_or_unneeded_experts_only():
    sizes = {"q1": 30, "q2": 30, "idle": 30, "next": 30}
    cache = cache_of(sizes, 90)
    for e in ("q1", "q2", "idle"):
        cache.acquire(e)
        cache.release(e)
    loaded = maybe_prefetch(cache, ["next"], protect=frozenset({"q1", "q2"}))
    assert loaded == ["next"]
    assert [e for kind, e in cache.stats.events if kind == "evict"] == ["idle"]


def test_prefetch_gives_up_rather_than_evict_a_needed_expert():
    sizes = {"q1": 50, "q2": 40, "next": 30}
    cache = cache_of(sizes, 90)
    for e in ("q1", "q2"):
        cache.acquire(e)
        cache.release(e)
    assert maybe_prefetch(cache, ["next"], protect=frozenset({"q1", "q2"})) == []
    assert cache.resident() == {"q1", "q2"}


def test_prefetch_never_evicts_protected_in_random_runs():
    rng = random.Random(1)
    names = [f"e{i}" for i in range(20)]
    sizes = {n: rng.randint(5, 30) for n in names}
    cache = cache_of(sizes, 100)
    for _ in range(500):
        cache.acquire(rng.choice(names), wait=False) and None
        for n in names:
            while cache.pins(n):
                cache.release(n)
        resident = sorted(cache.resident())
        protect = frozenset(rng.sample(resident, k=min(len(resident), 2)))
        before = len(cache.stats.events)
        maybe_prefetch(cache, rng.sample(names, 2), protect=protect)
        evicted = {e for kind, e in cache.stats.events[before:] if kind == "evict"}
        assert not (evicted & protect)
        assert cache.used_bytes <= cache.budget_bytes


def test_edgecoe_prefetches_on_accelerators_not_on_cpu():
    assert not prefetch_enabled(PRESETS["edgecoe"], "cpu")
    assert prefetch_enabled(PRESETS["edgecoe"], "cuda")
    assert not prefetch_enabled(PRESETS["coserve"], "cuda")


def test_runtime_prefetch_when_forced(pcb_small):
    pkg = load_package(pcb_small, verify="quick")
    trace = generate_workload(pkg.manifest, num_requests=120, dist="uniform", rate_rps=300, seed=3)
    with Runtime(pkg, config=RuntimeConfig(policy="edgecoe", budget="40%", prefetch=True)) as runtime:
        report = runtime.run(trace)
    assert report.num_completed == 120
    assert report.num_prefetches > 0


def test_protect_view_is_read_at_eviction_time():
    """A task queued after the prefetch was decided is still protected: the
    runtime hands the cache a live view of what queued and running tasks need."""
    from edgecoe.sched.prefetch import NeededCounts

    sizes = {"old": 30, "queued-late": 30, "next": 30}
    cache = cache_of(sizes, 60)
    for e in ("old", "queued-late"):
        cache.acquire(e)
        cache.release(e)
    needed = NeededCounts()
    needed.add("queued-late")  # queued after the view was handed out
    assert maybe_prefetch(cache, ["next"], protect=needed) == ["next"]
    assert cache.resident() == {"queued-late", "next"}
    needed.add("next")
    assert maybe_prefetch(cache, ["old"], protect=needed) == []  # everything evictable is needed
    needed.done("next")
    needed.done("queued-late")
    assert not needed and "next" not in needed
    with pytest.raises(KeyError):
        needed.done("next")
