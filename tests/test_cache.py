"""ExpertCache mechanism and eviction policies: exact orders, pins, in-flight loads, accounting."""

from __future__ import annotations

import random
import threading
import time

import pytest

from edgecoe.cache import (
    EVICTION_POLICIES,
    CacheLoadError,
    ExpertCache,
    create_eviction_policy,
)

SIZES = {"a": 10, "b": 20, "c": 30, "d": 40, "p1": 10, "p2": 10, "s1": 25, "s2": 35}


class FakeLoader:
    """Records loads/unloads; the handle is the expert name."""

    def __init__(self, sizes=SIZES, fail: set[str] = frozenset(), delay_s: float = 0.0):
        self.sizes, self.fail, self.delay_s = sizes, set(fail), delay_s
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self._lock = threading.Lock()

    def load(self, expert):
        if self.delay_s:
            time.sleep(self.delay_s)
        if expert in self.fail:
            raise RuntimeError("corrupt model")
        with self._lock:
            self.loads.append(expert)
        return expert, self.sizes[expert]

    def unload(self, expert, handle):
        assert handle == expert
        self.unloads.append(expert)


def make_cache(policy="lru", budget=60, loader=None, **ctx):
    loader = loader or FakeLoader()
    cache = ExpertCache(budget_bytes=budget, loader=loader.load, unloader=loader.unload,
                        policy=create_eviction_policy(policy, **ctx), size_of=loader.sizes.__getitem__,
                        record_events=True)
    return cache, loader


def use(cache, *experts):
    for e in experts:
        assert cache.acquire(e) is not None
        cache.release(e)


def test_registry_lists_valid_names():
    assert set(EVICTION_POLICIES) == {"lru", "fifo", "coserve", "belady"}
    with pytest.raises(ValueError, match="valid: lru, fifo, coserve, belady"):
        create_eviction_policy("random")
    with pytest.raises(ValueError, match="needs more context"):
        create_eviction_policy("belady")


def test_lru_evicts_least_recently_used():
    cache, loader = make_cache("lru", budget=60)
    use(cache, "a", "b", "c")  # 60 bytes, full
    use(cache, "a")  # a is now most recent
    use(cache, "d")  # needs 40: evicts b (20) then c (30)
    assert loader.unloads == ["b", "c"]
    assert cache.resident() == {"a", "d"}
    assert cache.used_bytes == 50


def test_fifo_evicts_oldest_load_even_if_used():
    cache, loader = make_cache("fifo", budget=70)
    use(cache, "a", "b", "c", "a")
    use(cache, "d")  # needs 30 more: a loaded first -> evicted first despite recent use; then b (LRU: b, c)
    assert loader.unloads == ["a", "b"]


def test_coserve_stage1_subsequent_without_resident_preliminary_largest_first():
    parents = {"s1": ["p1"], "s2": ["p2"]}
    prob = {"p1": 0.9, "p2": 0.1, "s1": 0.5, "s2": 0.05, "a": 0.01, "b": 0.8}
    cache, loader = make_cache("coserve", budget=110, usage_probability=prob, parents=parents)
    use(cache, "p1", "s1", "s2", "a")  # 10+25+35+10 = 80; s2's preliminary p2 is not resident
    use(cache, "b")  # 100
    # need 30 for c: stage 1 is s2 (parent p2 absent) -> frees 35, enough
    use(cache, "c")
    assert loader.unloads == ["s2"]
    # d needs 25 more; s1's parent p1 is resident, so stage 2, lowest probability
    # first: c (not in the table: 0) frees 30, enough; a (0.01) stays
    use(cache, "d")
    assert loader.unloads == ["s2", "c"]
    use(cache, "s2")  # needs 30 more: d (probability 0) frees 40; a (0.01) still stays
    assert loader.unloads == ["s2", "c", "d"]


def test_coserve_stage1_orders_by_size():
    parents = {"s1": ["p1"], "s2": ["p2"]}
    cache, loader = make_cache("coserve", budget=60, usage_probability={"s1": 0.9, "s2": 0.9}, parents=parents)
    use(cache, "s1", "s2")  # neither parent resident
    use(cache, "a", "b")  # needs room for b: largest stage-1 first -> s2 (35)
    assert loader.unloads == ["s2"]


def test_belady_evicts_furthest_next_use():
    future = ["a", "b", "c", "a", "d", "b", "c", "c"]
    cache, loader = make_cache("belady", budget=60, future_uses=future)
    for expert in future:
        use(cache, expert)  # the cache reports each use to the policy (on_use)
        if expert == "d":
            # after 'a','b','c','a': next uses b@5, c@6, a never -> evict a (10) then c@6 (30)
            assert loader.unloads[:2] == ["a", "c"]


def test_pinned_experts_are_never_evicted_and_no_room_is_a_return_value():
    cache, loader = make_cache("lru", budget=60)
    held = cache.acquire("c")
    use(cache, "b")
    assert cache.acquire("d", wait=False) is None  # c pinned, b alone is too small: evicts nothing
    assert loader.unloads == []
    cache.release(held.expert)
    assert cache.acquire("d", wait=False) is not None
    assert "c" in loader.unloads


def test_protected_experts_are_not_evicted():
    cache, loader = make_cache("lru", budget=60)
    use(cache, "a", "b", "c")
    assert cache.acquire("d", protect=frozenset({"b", "c"}), wait=False) is None
    assert loader.unloads == []


def test_release_without_acquire_raises():
    cache, _ = make_cache()
    with pytest.raises(ValueError, match="without a matching acquire"):
        cache.release("a")


def test_expert_larger_than_budget_is_an_error_naming_both():
    cache, _ = make_cache(budget=15)
    with pytest.raises(ValueError, match=r"'c' needs 30 bytes > cache budget_bytes=15"):
        cache.acquire("c")


def test_load_failure_restores_accounting_and_others_continue():
    cache, _loader = make_cache(loader=FakeLoader(fail={"b"}))
    use(cache, "a")
    with pytest.raises(CacheLoadError, match="'b'.*corrupt model"):
        cache.acquire("b")
    cache.check()
    assert cache.used_bytes == 10 and not cache.contains("b")
    assert cache.stats.num_load_failures == 1
    use(cache, "c")
    assert cache.resident() == {"a", "c"}


def test_concurrent_acquires_load_once():
    loader = FakeLoader(delay_s=0.05)
    cache, _ = make_cache(loader=loader, budget=100)
    results = []

    def worker():
        got = cache.acquire("c")
        results.append(got.hit)
        cache.release("c")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert loader.loads == ["c"]
    assert sorted(results) == [False] + [True] * 7
    assert cache.pins("c") == 0


def test_measured_size_larger_than_expected_evicts_to_stay_in_budget():
    sizes = dict(SIZES)
    loader = FakeLoader(sizes=sizes)
    cache = ExpertCache(budget_bytes=60, loader=lambda e: (e, sizes[e] + (15 if e == "c" else 0)),
                        unloader=loader.unload, policy=create_eviction_policy("lru"),
                        size_of=sizes.__getitem__)
    use(cache, "a", "b")
    use(cache, "c")  # expected 30 (fits), measured 45: a must go
    assert cache.used_bytes <= 60
    assert "a" in loader.unloads


@pytest.mark.parametrize("policy", EVICTION_POLICIES)
def test_budget_never_exceeded_in_long_random_run(policy):
    rng = random.Random(7)
    names = [f"e{i}" for i in range(30)]
    sizes = {n: rng.randint(5, 40) for n in names}
    future = [rng.choice(names) for _ in range(2000)]
    loader = FakeLoader(sizes=sizes)
    parents = {n: [names[(i + 1) % 30]] for i, n in enumerate(names) if i % 3 == 0}
    cache = ExpertCache(
        budget_bytes=120, loader=loader.load, unloader=loader.unload, size_of=sizes.__getitem__,
        policy=create_eviction_policy(policy, usage_probability={n: rng.random() for n in names},
                                      parents=parents, future_uses=future))
    held: list[str] = []
    for expert in future:
        got = cache.acquire(expert, wait=False)
        if got is not None:
            held.append(expert)
        if len(held) > 2 or (got is None and held):
            cache.release(held.pop(0))
        assert cache.used_bytes <= cache.budget_bytes
        cache.check()
    for expert in held:
        cache.release(expert)
    assert all(cache.pins(n) == 0 for n in names)
    assert cache.stats.num_misses == len(loader.loads)
    assert sum(sizes[n] for n in cache.resident()) == cache.used_bytes


def test_belady_switches_no_more_than_lru():
    rng = random.Random(3)
    names = [f"e{i}" for i in range(12)]
    sizes = dict.fromkeys(names, 10)
    future = [rng.choice(names[:4]) if rng.random() < 0.7 else rng.choice(names) for _ in range(600)]
    misses = {}
    for policy in ("lru", "belady"):
        loader = FakeLoader(sizes=sizes)
        cache = ExpertCache(budget_bytes=40, loader=loader.load, unloader=loader.unload,
                            size_of=sizes.__getitem__, policy=create_eviction_policy(policy, future_uses=future))
        for expert in future:
            use(cache, expert)
        misses[policy] = cache.stats.num_misses
    assert misses["belady"] < misses["lru"]
