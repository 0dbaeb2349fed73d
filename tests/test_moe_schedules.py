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
    MoeInfinity,
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
    assert set(SCHEDULES) == {"on-demand", "mixtral-offload", "moe-infinity", "edgecoe"}
    assert isinstance(create_schedule("edgecoe", _context()), PhaseAware)
    with pytest.raises(ValueError, match="valid: on-demand, mixtral-offload, moe-infinity, edgecoe"):
        create_schedule("lru", _context())
    with pytest.raises(ValueError, match="needs the package's traced expert activation matrices"):
        create_schedule("moe-infinity", _context())


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


def test_decode_prefetch_is_on_for_cuda_only_by_default_and_off_still_ranks_residents() -> None:
    from dataclasses import replace

    from edgecoe.moe.schedules import decode_prefetch_for

    assert decode_prefetch_for("auto", "cuda:0") and not decode_prefetch_for("auto", "cpu")
    assert not decode_prefetch_for("auto", "coreml")
    assert decode_prefetch_for("on", "cpu") and not decode_prefetch_for("off", "cuda:0")
    with pytest.raises(ValueError, match="choose auto, on or off"):
        decode_prefetch_for("sometimes", "cpu")  # type: ignore[arg-type]
    schedule = PhaseAware(replace(_context(budget=6), decode_prefetch=False))
    x = np.zeros((1, 4), np.float32)
    schedule.routed(1, "decode", x, np.array([[5, 6]]))
    # the same situation that fetches 5 and 6 with prefetch on fetches nothing, but ranks them first
    assert schedule.routed(0, "decode", x, np.array([[0, 1]]), {"L001.E003", "L001.E004"}) == []
    scores = schedule.policy.scores
    assert scores["L001.E005"] > scores["L001.E003"] and scores["L001.E006"] > scores["L001.E004"]
    # prefill streaming does not depend on it
    assert schedule.layer_start(0, "prefill") == [expert_name(0, e) for e in range(8)]


def test_phase_aware_prefill_starts_by_dropping_all_but_the_first_layers_up_to_the_window() -> None:
    schedule = PhaseAware(_context(num_layers=12, budget=24))
    resident = [expert_name(layer, e) for layer in (0, 1, 5, 11) for e in range(8)][:28]
    dropped = schedule.prefill_start(resident)
    kept = [name for name in resident if name not in dropped]
    assert schedule.prefill_window == 12 and len(kept) == 12
    assert kept == [expert_name(0, e) for e in range(8)] + [expert_name(1, e) for e in range(4)]
    assert OnDemand(_context()).prefill_start(resident) == []


def test_phase_aware_prefill_peak_stays_within_the_window_on_a_streamed_prefill() -> None:
    """Driven as the model drives it: layer_start, routed (every expert chosen), ran -> drop."""
    context = _context(num_layers=12, budget=24)
    schedule = PhaseAware(context)
    loader = _CountingLoader()
    cache = _cache(24, loader, schedule.eviction)
    prefetcher = Prefetcher(cache)
    try:
        cache.drop(schedule.prefill_start(cache.resident()))
        peak = 0
        chosen = np.array([[e, (e + 1) % 8] for e in range(8)])
        for layer in range(12):
            prefetcher.submit(schedule.layer_start(layer, "prefill"))
            ahead = schedule.routed(layer, "prefill", np.ones((8, 4), np.float32), chosen, cache)
            names = [expert_name(layer, e) for e in range(8)]
            prefetcher.submit(ahead, protect=frozenset(names))
            for name in names:
                cache.acquire(name)
                peak = max(peak, cache.used_bytes)
                cache.release(name)
                if schedule.ran(layer, "prefill", name):
                    prefetcher.discard({name})
                    cache.drop([name])
            prefetcher.wait_idle()
            peak = max(peak, cache.stats.peak_bytes)
    finally:
        prefetcher.close()
    assert peak <= 10 * schedule.prefill_window  # 12 of 96 experts: 12.5 %
    assert len(loader.calls) == len(set(loader.calls)) == 96  # every expert loaded once


def _activations() -> np.ndarray:
    """Two traced requests over 3 layers of 8 experts: one using experts 0-1 everywhere, one 6-7."""
    eams = np.zeros((2, 3, 8), np.float32)
    eams[0, :, [0, 1]] = 0.5
    eams[1, :, [6, 7]] = 0.5
    return eams


def test_moe_infinity_matches_the_request_to_the_nearest_traced_one_and_prefetches_its_experts() -> None:
    context = ScheduleContext(num_layers=3, num_experts=8, top_k=2, budget_experts=6, load_routers=lambda: [],
                              activations=_activations())
    schedule = MoeInfinity(context)
    assert schedule.prefill_start([]) == []
    x = np.zeros((1, 4), np.float32)
    picks = schedule.routed(0, "decode", x, np.array([[6, 7]]))  # looks like the second traced request
    assert np.array_equal(schedule.matched(), _activations()[1])
    # two per layer (6 experts / 3 layers) for the next two layers, nearer layer first
    assert picks == ["L001.E006", "L001.E007", "L002.E006", "L002.E007"]
    scores = schedule.policy.scores
    assert scores["L001.E006"] > scores["L002.E006"] > scores["L001.E000"] == 0.0  # nearer layers rank higher
    assert schedule.routed(0, "decode", x, np.array([[6, 7]]), {"L001.E006"})[0] == "L001.E007"  # resident skipped
    schedule.prefill_start([])  # a new request: its own activations only
    schedule.routed(0, "prefill", x, np.array([[0, 1], [1, 0], [0, 1]]))
    assert np.array_equal(schedule.matched(), _activations()[0])
