"""Running one batch on a resident expert: items stacked per input, same-shape groups, and
failures isolated to the item that caused them.

Pure functions over a session-like handle (anything with ONNX Runtime's
``run(output_names, feeds)``), so the runtime, tests and future drivers share them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecoe.package.manifest import ExpertRecord

Outputs = dict[str, np.ndarray]
"""Output name -> array with a leading batch axis."""


def run_batch(session: Any, record: ExpertRecord, items: Sequence[Mapping[str, np.ndarray]]) -> Outputs:
    """Run ``items`` (one dict of inputs each, no batch axis) as batches; items whose input
    shapes differ run in separate same-shape groups. Returns outputs stacked in item order."""
    names = [s.name for s in record.inputs]
    output_names = [s.name for s in record.outputs]
    groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}  # input shapes -> item indices
    for i, item in enumerate(items):
        groups.setdefault(tuple(item[n].shape for n in names), []).append(i)
    per_item: list[Outputs] = [{} for _ in items]
    for indices in groups.values():
        feeds = {n: np.stack([items[i][n] for i in indices]) for n in names}
        results = session.run(output_names, feeds)
        for name, array in zip(output_names, results, strict=True):
            for row, i in enumerate(indices):
                per_item[i][name] = array[row]
    # Re-stack per output so routing sees [batch, ...] arrays in item order.
    return {name: np.stack([item[name] for item in per_item]) for name in output_names}


@dataclass
class BatchOutcome:
    """What became of each item of a batch.

    Attributes:
        ran: (item index, outputs of the run it was part of, its row in them).
        failed: (item index, cause) for each item that failed.
        batch_ms: how long the whole batch took when it ran as one (None after a failure:
            items then re-ran one by one, which says nothing about batch cost).
    """

    ran: list[tuple[int, Outputs, int]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    batch_ms: float | None = None


def run_isolating(session: Any, record: ExpertRecord, items: Sequence[Mapping[str, np.ndarray]]) -> BatchOutcome:
    """Run a batch; if it fails, run its items one by one so that one bad item fails alone
    and its batch mates still complete."""
    started = time.perf_counter()
    try:
        outputs = run_batch(session, record, items)
    except Exception as exc:
        if len(items) == 1:
            return BatchOutcome(failed=[(0, f"{type(exc).__name__}: {exc}")])
    else:
        return BatchOutcome(ran=[(i, outputs, i) for i in range(len(items))],
                            batch_ms=(time.perf_counter() - started) * 1e3)
    outcome = BatchOutcome()
    for i, item in enumerate(items):
        try:
            outcome.ran.append((i, run_batch(session, record, [item]), 0))
        except Exception as exc:
            outcome.failed.append((i, f"{type(exc).__name__}: {exc}"))
    return outcome
