"""The profiler's fits and window search on synthetic curves with known answers."""

from __future__ import annotations

import pytest

from edgecoe.profiler.fit import decay_window_search, fit_linear, largest_useful_batch


def test_fit_linear_recovers_k_and_b():
    fit = fit_linear([1, 2, 4, 8, 16], [3 + 2 * n for n in (1, 2, 4, 8, 16)])
    assert fit.k_ms == pytest.approx(2.0) and fit.b_ms == pytest.approx(3.0)
    assert fit.max_rel_error == pytest.approx(0.0, abs=1e-9)


def test_fit_linear_with_noise_reports_error():
    fit = fit_linear([1, 2, 4, 8], [5.5, 7.0, 11.5, 19.0])
    assert 1.8 < fit.k_ms < 2.1 and 3.0 < fit.b_ms < 4.0
    assert 0 < fit.max_rel_error < 0.1


def test_fit_linear_clamps_negative_intercept():
    fit = fit_linear([1, 2, 4], [0.9, 2.1, 4.0])
    ratios = [1 / 0.9, 2 / 2.1, 4 / 4.0]  # x / y: the through-origin fit of relative error
    assert fit.b_ms == 0.0 and fit.k_ms == pytest.approx(sum(ratios) / sum(r * r for r in ratios))


def test_fit_linear_needs_two_points():
    with pytest.raises(ValueError, match="two distinct"):
        fit_linear([4, 4], [1, 2])


def test_largest_useful_batch_where_per_item_latency_plateaus():
    batches = [1, 2, 4, 8, 16, 32]
    # per-item: 10, 6, 4, 3.9, 3.9, 3.9 -> stops falling (by 5 %) after 4
    latencies = [10, 12, 16, 8 * 3.9, 16 * 3.9, 32 * 3.9]
    assert largest_useful_batch(batches, latencies) == 4
    # still falling at every step -> the largest measured
    assert largest_useful_batch([1, 2, 4], [10, 10, 10]) == 4
    # never falls -> 1
    assert largest_useful_batch([1, 2, 4], [1, 2, 4]) == 1
    # a noisy point (per-item 2.7, then 2.9, then 2.5) does not end the curve early
    assert largest_useful_batch([1, 2, 4, 8], [3.4, 5.4, 11.6, 20.0]) == 8


def test_window_search_stops_where_linear_growth_ends():
    # throughput grows 2 per expert up to 40, then flat: the knee is at 40
    def throughput(n):
        return 10 + 2 * min(n, 40)

    calls = []
    result = decay_window_search(lambda n: calls.append(n) or throughput(n), max_n=120, initial=15)
    # N: 15, +13 -> 28, +11 -> 39, +9 -> 48 (predicted 106, got 90: -15 %) -> keep 39
    assert [p[0] for p in result.points] == [15, 28, 39, 48]
    assert result.chosen == 39
    assert "below the fitted" in result.stop_reason
    assert calls == [15, 28, 39, 48]


def test_window_search_runs_to_max_when_growth_stays_linear():
    result = decay_window_search(lambda n: 5.0 * n, max_n=50, initial=15)
    assert result.chosen == 50 and "max_n" in result.stop_reason
    assert result.points[-1][0] == 50


def test_window_search_respects_small_max_and_bad_initial():
    assert decay_window_search(lambda n: n, max_n=8, initial=15).chosen == 8
    with pytest.raises(ValueError, match="initial"):
        decay_window_search(lambda n: n, max_n=10, initial=100)


def test_check_largest_moves_past_a_premature_bend():
    # the slope drops from 100 to 20 per expert at N=30 but throughput keeps rising
    def throughput(n):
        return 100 * n if n <= 30 else 3000 + 20 * (n - 30)

    plain = decay_window_search(throughput, max_n=120, initial=15)
    checked = decay_window_search(throughput, max_n=120, initial=15, check_largest=True)
    assert plain.chosen < 60
    assert throughput(checked.chosen) >= throughput(120) / 1.05
    assert throughput(checked.chosen - 1) < throughput(120) / 1.05  # the smallest such N
    assert "smallest within" in checked.stop_reason


def test_check_largest_keeps_a_real_knee():
    def throughput(n):
        return 10 + 2 * min(n, 40)

    result = decay_window_search(throughput, max_n=120, initial=15, check_largest=True)
    assert result.chosen == 39  # T(120)=90 is within 5 % of T(39)=88
