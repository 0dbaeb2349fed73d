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
    """Least-squares line through (x, y); needs two distinct x.

    Negative intercepts (noise on a near-proportional curve) are clamped to 0
    and the slope refitted through the origin, so estimates stay physical.
    """
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if x.size < 2 or np.unique(x).size < 2:
        raise ValueError(f"a linear fit needs two distinct x values, got {list(xs)}")
    k, b = np.polyfit(x, y, 1)
    if b < 0:
        k, b = float(np.dot(x, y) / np.dot(x, x)), 0.0
    predicted = k * x + b
    rel = np.abs(predicted - y) / np.maximum(np.abs(y), 1e-12)
    return LinearFit(float(k), float(b), float(rel.max()))


def largest_useful_batch(batches: Sequence[int], latencies_ms: Sequence[float], *, tolerance: float = 0.05) -> int:
    """Where per-item latency stops falling: the smallest batch whose per-item
    latency is within ``tolerance`` (5 %) of the lowest measured.

    Comparing with the lowest, not step by step, keeps one noisy point from
    ending the curve early.
    """
    pairs = sorted(zip(batches, latencies_ms))
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
            return result
        n = nxt
    result.chosen = n
    result.stop_reason = f"reached max_n={max_n}"
    return result
