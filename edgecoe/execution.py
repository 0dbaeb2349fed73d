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

Item = dict[str, np.ndarray]
"""One item's tensors by name, without a batch axis."""


def _group_key(record: ExpertRecord, names: Sequence[str], item: Mapping[str, np.ndarray]) -> tuple[object, ...]:
    """Items batch together when every input has the same shape and every shared (unbatched) input the
    same value: a shared input is fed once for the whole batch."""
    key: list[object] = []
    for name in names:
        array = item[name]
        if record.batch.axis(name) is None:
            key.append((array.dtype.str, array.shape, np.ascontiguousarray(array).tobytes()))
        else:
            key.append(array.shape)
    return tuple(key)


def _stack(arrays: Sequence[np.ndarray], axis: int | None) -> np.ndarray:
    return arrays[0] if axis is None else np.stack(arrays, axis=axis)


def _row(array: np.ndarray, row: int, axis: int | None) -> np.ndarray:
    return array if axis is None else np.take(array, row, axis=axis)


def run_batch(session: Any, record: ExpertRecord, items: Sequence[Mapping[str, np.ndarray]]) -> list[Item]:
    """Run ``items`` (one dict of inputs each, no batch axis) and return each item's outputs, in item order.

    Items run in groups of the same input shapes (and the same value of every
    shared input), each group in runs of at most ``record.batch.max`` items;
    every tensor is stacked and split on its declared batch axis.
    """
    names = [s.name for s in record.inputs]
    output_names = [s.name for s in record.outputs]
    limit = record.batch.max or len(items) or 1
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(_group_key(record, names, item), []).append(i)
    per_item: list[Item] = [{} for _ in items]
    for members in groups.values():
        for start in range(0, len(members), limit):
            indices = members[start:start + limit]
            feeds = {n: _stack([items[i][n] for i in indices], record.batch.axis(n)) for n in names}
            results = session.run(output_names, feeds)
            for name, array in zip(output_names, results, strict=True):
                array = np.asarray(array)
                axis = record.batch.axis(name)
                for row, i in enumerate(indices):
                    per_item[i][name] = _row(array, row, axis)
    return per_item


@dataclass
class BatchOutcome:
    """What became of each item of a batch.

    Attributes:
        ran: (item index, its outputs).
        failed: (item index, cause) for each item that failed.
        batch_ms: how long the whole batch took when it ran as one (None after a failure:
            items then re-ran one by one, which says nothing about batch cost).
        isolated: the batch failed as a whole and its items were re-run one at a time
            (counted by the runtime: a batch that fails while its items succeed alone is
            worth knowing about, e.g. a model that does not take the batch size it was given).
    """

    ran: list[tuple[int, Item]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    batch_ms: float | None = None
    isolated: bool = False


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
        return BatchOutcome(ran=list(enumerate(outputs)), batch_ms=(time.perf_counter() - started) * 1e3)
    outcome = BatchOutcome(isolated=True)
    for i, item in enumerate(items):
        try:
            outcome.ran.append((i, run_batch(session, record, [item])[0]))
        except Exception as exc:
            outcome.failed.append((i, f"{type(exc).__name__}: {exc}"))
    return outcome
