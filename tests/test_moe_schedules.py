"""The MoE loader thread and expert schedules: exact behaviour on tiny deterministic setups."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgecoe.cache import ExpertCache, create_eviction_policy
from edgecoe.moe.manifest import expert_name
from edgecoe.moe.prefetch import Prefetcher
from edgecoe.moe.schedules import (
    SCHEDULES,
    LayerQuotaPolicy,
    MixtralOffload,
    OnDemand,
    PhaseAware,
    ScheduleContext,
    create_schedule,
)


class _CountingLoader:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[str] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, expert: str) -> tuple[str, int]:
        with self.lock:
            self.calls.append(expert)
        time.sleep(self.delay_s)
        return f"handle-{expert}", 10


def _cache(budget_experts: int, loader: _CountingLoader, policy=None) -> ExpertCache:  # type: ignore[no-untyped-def]
    return ExpertCache(budget_bytes=10 * budget_experts, loader=loader, unloader=lambda e, h: None,
                       size_of=lambda e: 10, policy=policy or create_eviction_policy("lru"), record_events=True)


def test_prefetcher_loads_in_the_background_and_never_twice() -> None:
    loader = _CountingLoader(delay_s=0.05)
    cache = _cache(4, loader)
    prefetcher = Prefetcher(cache)
    try:
        prefetcher.submit(["L000.E000", "L000.E001"])
        time.sleep(0.01)  # the thread has started loading E000
        got = cache.acquire("L000.E000")  # waits for the prefetch instead of loading again
        assert got is not None and got.hit
        cache.release("L000.E000")
        assert prefetcher.wait_idle(5.0)
        assert sorted(loader.calls) == ["L000.E000", "L000.E001"]
        assert prefetcher.stats.num_loaded == 2
        assert cache.resident() == {"L000.E000", "L000.E001"}
    finally:
        prefetcher.close()


def test_a_new_submission_supersedes_the_queue_and_protected_experts_stay() -> None:
    loader = _CountingLoader(delay_s=0.05)
    cache = _cache(2, loader)
    for name in ("L000.E000", "L000.E001"):
        cache.acquire(name)
        cache.release(name)
    prefetcher = Prefetcher(cache)
    try:
        prefetcher.submit(["L001.E000", "L001.E001", "L001.E002"], protect={"L000.E000", "L000.E001"})
        assert prefetcher.wait_idle(5.0)
        assert cache.resident() == {"L000.E000", "L000.E001"}  # no room without evicting protected ones
        assert prefetcher.stats.num_skipped == 3
        prefetcher.submit(["L002.E000"] * 50)
        prefetcher.submit(["L002.E001"])
        assert prefetcher.wait_idle(5.0)
        assert prefetcher.stats.num_superseded >= 1
        assert "L002.E001" in cache.resident()
    finally:
        prefetcher.close()


def test_drop_unloads_only_unpinned_residents() -> None:
    cache = _cache(3, _CountingLoader())
    for name in ("L000.E000", "L000.E001"):
        cache.acquire(name)
    cache.release("L000.E000")
    assert cache.drop(["L000.E000", "L000.E001", "L009.E009"]) == ["L000.E000"]
    assert cache.resident() == {"L000.E001"} and cache.used_bytes == 10
    cache.check()


def test_layer_quota_evicts_within_the_incoming_layer_first() -> None:
    policy = LayerQuotaPolicy(1, count_uses=False)
    cache = _cache(2, _CountingLoader(), policy)
    for name in ("L000.E000", "L001.E000", "L001.E001"):
        cache.acquire(name)
        cache.release(name)
    # L001.E001 came in at layer 1's quota: layer 1 gave up its own expert, not layer 0's
    assert cache.stats.events[-2:] == [("evict", "L001.E000"), ("load", "L001.E001")]
    policy.scores.update({"L000.E000": 0.9, "L000.E001": 0.1})
    cache.acquire("L000.E001")
    cache.release("L000.E001")
    assert cache.stats.events[-2:] == [("evict", "L000.E000"), ("load", "L000.E001")]


def _context(num_layers: int = 3, num_experts: int = 8, budget: int = 6) -> ScheduleContext:
    rng = np.random.default_rng(0)
    routers = [rng.standard_normal((4, num_experts)).astype(np.float32) for _ in range(num_layers)]
    return ScheduleContext(num_layers=num_layers, num_experts=num_experts, top_k=2, budget_experts=budget,
                           load_routers=lambda: routers)


def test_schedules_are_chosen_by_name() -> None:
    assert set(SCHEDULES) == {"on-demand", "mixtral-offload", "edgecoe"}
    assert isinstance(create_schedule("edgecoe", _context()), PhaseAware)
    with pytest.raises(ValueError, match="valid: on-demand, mixtral-offload, edgecoe"):
        create_schedule("lru", _context())


def test_on_demand_fetches_nothing_and_mixtral_offload_guesses_with_the_next_router() -> None:
    context = _context()
    x = np.ones((1, 4), np.float32)
    assert OnDemand(context).routed(0, "decode", x, np.array([[0, 1]])) == []
    offload = MixtralOffload(context)
    guesses = offload.routed(0, "decode", x, np.array([[0, 1]]))
    logits = x @ context.routers[1]
    assert guesses == [expert_name(1, int(e)) for e in np.argsort(-logits[0], kind="stable")[:2]]
    assert offload.routed(2, "decode", x, np.array([[0, 1]])) == []  # no layer after the last


def test_phase_aware_streams_layers_in_prefill_and_keeps_sticky_experts_in_decode() -> None:
    context = _context(budget=24)
    schedule = PhaseAware(context)
    assert schedule.layer_start(0, "prefill") == [expert_name(0, e) for e in range(8)]
    ahead = schedule.routed(0, "prefill", np.ones((3, 4), np.float32), np.array([[0, 1], [1, 2], [0, 2]]))
    assert ahead[:3] == ["L000.E000", "L000.E001", "L000.E002"]
    assert ahead[3:] == [expert_name(1, e) for e in range(min(schedule.prefill_window - 3, 8))]
    assert schedule.ran(0, "prefill", "L000.E000") and not schedule.ran(0, "decode", "L000.E000")
    assert schedule.layer_start(0, "decode") == []
    schedule = PhaseAware(_context(budget=6))  # two experts per layer
    x = np.zeros((1, 4), np.float32)  # the speculative router is indifferent: every expert 1/8
    schedule.routed(1, "decode", x, np.array([[5, 6]]))  # layer 1 used 5 and 6 this token
    picks = schedule.routed(0, "decode", x, np.array([[0, 1]]))  # next token, layer 0: predict layer 1
    assert schedule.quota == 2 and picks == ["L001.E005", "L001.E006"]


def test_phase_aware_fetches_a_guess_only_where_it_clearly_outranks_a_resident() -> None:
    from edgecoe.moe.schedules import FETCH_MARGIN

    context = _context(budget=6)  # two experts per layer
    schedule = PhaseAware(context)
    x = np.zeros((1, 4), np.float32)  # speculative probabilities all 1/8
    schedule.routed(1, "decode", x, np.array([[5, 6]]))  # layer 1 used 5 and 6 last token
    # 5 and 6 resident: every other expert is no likelier, so nothing is fetched
    assert schedule.routed(0, "decode", x, np.array([[0, 1]]), {"L001.E005", "L001.E006"}) == []
    # 3 and 4 resident (say, from an older token): 5 and 6 outrank them by the sticky bonus
    picks = schedule.routed(0, "decode", x, np.array([[0, 1]]), {"L001.E003", "L001.E004"})
    assert FETCH_MARGIN <= 0.25 and picks == ["L001.E005", "L001.E006"]
