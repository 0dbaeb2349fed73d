"""The profiler's arithmetic: linear latency fits, the largest useful batch, and
CoServe's decay-window search for how many experts to keep resident.

Pure functions over numbers, so they are tested on synthetic curves with
known answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class LinearFit:
    """latency_ms ~ k_ms * n + b_ms; ``max_rel_error`` is the worst relative residual."""

    k_ms: float
    b_ms: float
    max_rel_error: float

    def predict(self, n: float) -> float:
        return self.k_ms * n + self.b_ms


def fit_linear(xs: Sequence[float], ys: Sequence[float]) -> LinearFit:
    """Line through (x, y) minimising *relative* squared error; needs two distinct x.

    NOTE: relative, not absolute: with batches 1..32 an absolute fit lets the
    large batches' noise decide the intercept B, which then varied 25 % of the
    batch-1 latency between two profiles of the same machine; weighting by
    1/y lets the small batches pin it down.

    Negative intercepts (noise on a near-proportional curve) are clamped to 0
    and the slope refitted through the origin, so estimates stay physical.
    """
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if x.size < 2 or np.unique(x).size < 2:
        raise ValueError(f"a linear fit needs two distinct x values, got {list(xs)}")
    weights = 1.0 / np.maximum(np.abs(y), 1e-12)
    k, b = np.polyfit(x, y, 1, w=weights)
    if b < 0:
        # through the origin, same weighting: minimise sum(((k x - y) / y)^2)
        k, b = float(np.sum(x / y) / np.sum((x / y) ** 2)), 0.0
    predicted = k * x + b
    rel = np.abs(predicted - y) / np.maximum(np.abs(y), 1e-12)
    return LinearFit(float(k), float(b), float(rel.max()))


def largest_useful_batch(batches: Sequence[int], latencies_ms: Sequence[float], *, tolerance: float = 0.05) -> int:
    """Where per-item latency stops falling: the smallest batch whose per-item
    latency is within ``tolerance`` (5 %) of the lowest measured.

    Comparing with the lowest, not step by step, keeps one noisy point from
    ending the curve early.
    """
    pairs = sorted(zip(batches, latencies_ms, strict=False))
    per_item = [(n, t / n) for n, t in pairs]
    lowest = min(p for _, p in per_item)
    return next(n for n, p in per_item if p <= lowest * (1.0 + tolerance))


@dataclass
class WindowSearch:
    """Result of :func:`decay_window_search`: the chosen N and every point measured."""

    chosen: int
    points: list[tuple[int, float]] = field(default_factory=list)  # (N, measured throughput)
    predictions: list[tuple[int, float]] = field(default_factory=list)  # (N, f(N) predicted before measuring)
    stop_reason: str = ""


def decay_window_search(
    measure: Callable[[int], float], *, max_n: int, initial: int = 15, margin: float = 0.05, min_n: int = 1,
    check_largest: bool = False,
) -> WindowSearch:
    """CoServe's search for how many experts (by usage probability) to keep resident.

    Starting at N = ``initial`` and stepping by a window that shrinks by
    ``decay = 1 - initial/100`` each step, it measures throughput T(N), fits
    f(N) = kN + b to the points so far and, before each new measurement,
    predicts f(N_next). It stops when the measured throughput falls short of
    the prediction by more than ``margin`` — more residents stopped paying
    linearly — and keeps the previous N; or when N reaches ``max_n``.

    Args:
        measure: throughput with N experts resident.
        max_n: the most experts that fit (or exist).
        initial: first N and first window (paper: 15); also sets the decay.
        margin: relative shortfall that stops the search (paper: 5 %).
        check_largest: edgecoe's addition. The linear-shortfall rule stops at
            the first bend of a concave curve, although throughput may still
            rise well beyond it (measured on pcb: the paper's rule kept 48 of
            120 experts at 0.8x the best grid throughput). With this on, a
            stop is checked against T(max_n); if that is more than ``margin``
            higher, the smallest N within ``margin`` of it is found by
            bisection and chosen instead.
    """
    if max_n < min_n:
        raise ValueError(f"{max_n=} < {min_n=}")
    decay = 1.0 - initial / 100.0
    if not 0.0 < decay < 1.0:
        raise ValueError(f"initial={initial} must be in 1..99 (decay = 1 - initial/100)")
    result = WindowSearch(chosen=min(max(initial, min_n), max_n))
    n = result.chosen
    window = float(initial)
    result.points.append((n, measure(n)))
    while n < max_n:
        window = max(1.0, window * decay)
        nxt = min(max_n, n + max(1, round(window)))
        predicted: float | None = None
        if len(result.points) >= 2:
            fit = fit_linear([p[0] for p in result.points], [p[1] for p in result.points])
            predicted = fit.predict(nxt)
            result.predictions.append((nxt, predicted))
        actual = measure(nxt)
        result.points.append((nxt, actual))
        if predicted is not None and predicted > 0 and (predicted - actual) / predicted > margin:
            result.stop_reason = (f"T({nxt})={actual:.3g} fell {100 * (predicted - actual) / predicted:.1f} % "
                                  f"below the fitted {predicted:.3g} (margin {100 * margin:.0f} %)")
            result.chosen = n
            if check_largest:
                _check_largest(measure, result, max_n, margin)
            return result
        n = nxt
    result.chosen = n
    result.stop_reason = f"reached max_n={max_n}"
    return result


def _check_largest(measure: Callable[[int], float], result: WindowSearch, max_n: int, margin: float) -> None:
    """If T(max_n) beats the chosen point by more than ``margin``, bisect for the
    smallest N within ``margin`` of T(max_n)."""
    measured = dict(result.points)
    if max_n not in measured:
        measured[max_n] = measure(max_n)
        result.points.append((max_n, measured[max_n]))
    target = measured[max_n] / (1.0 + margin)
    if max(measured[result.chosen], *(t for n, t in measured.items() if n <= result.chosen)) >= target:
        return
    low, high = result.chosen, max_n  # T(low) < target <= T(high)
    while high - low > 1:
        mid = (low + high) // 2
        if mid not in measured:
            measured[mid] = measure(mid)
            result.points.append((mid, measured[mid]))
        if measured[mid] >= target:
            high = mid
        else:
            low = mid
    result.stop_reason += (f"; but T({max_n})={measured[max_n]:.3g} was more than {100 * margin:.0f} % higher, "
                           f"so N={high} is the smallest within {100 * margin:.0f} % of it")
    result.chosen = high
