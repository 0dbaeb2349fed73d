"""Checks every exported expert must pass: onnx.checker, shape inference, ORT vs source."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgecoe.errors import ExportError, VerificationError
from edgecoe.export.sources import Reference
from edgecoe.package.manifest import ExpertRecord, TensorSpec
from edgecoe.providers import SessionError, create_session

# Sizes for symbolic dims when making verification inputs: a batch of 2
# exercises batching; other dims (sequence lengths) get 8.
_BATCH_DEFAULT = 2
_OTHER_DEFAULT = 8
# optimum's symbolic dim names with sizes a model of that kind accepts.
_NAMED_DEFAULTS = {"num_channels": 3, "height": 64, "width": 64, "sequence_length": 8}


def check_model_file(path: Path, where: str) -> None:
    """onnx.checker (full) and strict shape inference on a written model file.

    Raises:
        ExportError: naming the expert and the checker's complaint.
    """
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{where}: onnx.checker rejected the exported model: {exc}") from exc


def example_inputs(specs: list[TensorSpec], dim_defaults: Mapping[str, int], *, seed: int = 0,
                   input_shapes: Mapping[str, list[int]] | None = None,
                   value_ranges: Mapping[str, tuple[float, float]] | None = None,
                   samples: Mapping[str, np.ndarray] | None = None,
                   batch_axes: Mapping[str, int | None] | None = None, where: str = "model") -> dict[str, np.ndarray]:
    """Deterministic inputs for verification, one array per model input.

    Per input, in order of precedence: a sample from a file (``samples``); a whole
    shape (``input_shapes``); else each dimension's fixed size, its size by name
    (``dim_defaults``, then a few common names), 2 on the batch axis, 8 elsewhere.
    Values: ``value_ranges`` where given (integers inclusive), else standard
    normal floats and integers 0..9.

    Raises:
        ExportError: a sample or shape that does not fit the input, naming both and the spec key.
    """
    rng = np.random.default_rng(seed)
    shapes = input_shapes or {}
    ranges = value_ranges or {}
    given = samples or {}
    axes = batch_axes or {}
    # One size per dim name across inputs ("batch" in x and in a state input is the same batch);
    # names on a batch axis first, so they get the batch size wherever else they appear.
    named = dict(dim_defaults)
    for spec in specs:
        axis = axes.get(spec.name, 0)
        if axis is not None and axis < len(spec.shape) and isinstance(dim := spec.shape[axis], str):
            named.setdefault(dim, _NAMED_DEFAULTS.get(dim, _BATCH_DEFAULT))
    out = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if spec.name in given:
            sample = np.asarray(given[spec.name])
            if sample.dtype != dtype or not _fits(spec, list(sample.shape)):
                raise ExportError(f"{where}: sample input {spec.name!r} is {sample.dtype}{list(sample.shape)}; the "
                                  f"model takes {spec.dtype}{spec.shape_str()} (sample_inputs)")
            out[spec.name] = sample
            continue
        if spec.name in shapes:
            shape = list(shapes[spec.name])
            if not _fits(spec, shape):
                raise ExportError(f"{where}: input_shapes.{spec.name} = {shape} does not fit the model's "
                                  f"{spec.shape_str()}")
        else:
            batch_axis = axes.get(spec.name, 0)
            shape = []
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, int):
                    shape.append(dim)
                elif isinstance(dim, str) and dim in named:
                    shape.append(named[dim])
                elif isinstance(dim, str) and dim in _NAMED_DEFAULTS:
                    shape.append(named.setdefault(dim, _NAMED_DEFAULTS[dim]))
                else:
                    size = _BATCH_DEFAULT if axis == batch_axis else _OTHER_DEFAULT
                    shape.append(named.setdefault(dim, size) if isinstance(dim, str) else size)
        out[spec.name] = _values(rng, spec.name, dtype, shape, ranges.get(spec.name))
    return out


def _fits(spec: TensorSpec, shape: list[int]) -> bool:
    return len(shape) == len(spec.shape) and all(
        not isinstance(d, int) or d == s for d, s in zip(spec.shape, shape, strict=True))


def _values(rng: np.random.Generator, name: str, dtype: np.dtype, shape: list[int],
            value_range: tuple[float, float] | None) -> np.ndarray:
    if value_range is not None:
        low, high = value_range
        if dtype.kind == "f":
            return rng.uniform(low, high, size=shape).astype(dtype)
        if dtype.kind in "iu":
            return rng.integers(int(low), int(high), size=shape, endpoint=True).astype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b" or "mask" in name:
        return np.ones(shape, dtype=dtype)
    if "type_ids" in name:
        return np.zeros(shape, dtype=dtype)
    # Token ids and other integer inputs: small values valid for any vocabulary.
    return rng.integers(0, 10, size=shape).astype(dtype)


def describe_inputs(inputs: Mapping[str, np.ndarray]) -> str:
    """``x: float32[2, 3, 8, 8], sr: int64[]``: what verification fed a model."""
    return ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in inputs.items())


_SIZING_HINT = ("set the sizes with dim_defaults (by dim name) or input_shapes (by input), value_ranges for "
                "values, or give sample_inputs")


@dataclass(frozen=True, slots=True)
class Comparison:
    max_abs_diff: float
    compared: list[str]  # output names compared


def compare_with_reference(
    model_path: Path, reference: Reference, inputs: dict[str, np.ndarray], *, tolerance: float, where: str,
    optimization: str = "all", outputs: list[str] | None = None,
) -> Comparison:
    """Run the package's copy on ORT CPU and compare with the source's outputs.

    Raises:
        VerificationError: an output differs by more than ``tolerance``, has
            another shape, or no output could be compared.
    """
    try:
        session = create_session(model_path, optimization=optimization)  # type: ignore[arg-type]
        names = outputs if outputs is not None else [o.name for o in session.get_outputs()]
        got = dict(zip(names, session.run(names, inputs), strict=False))
    except SessionError as exc:
        raise ExportError(f"{where}: {exc}") from exc
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{where}: onnxruntime failed on verification inputs {{{describe_inputs(inputs)}}}: "
                          f"{first_line}; {_SIZING_HINT}") from exc
    expected = reference(inputs)
    compared = [n for n in names if n in expected]
    if not compared:
        raise VerificationError(f"{where}: no output to compare: ONNX has {names}, source gave {sorted(expected)}")
    worst = 0.0
    for name in compared:
        a, b = np.asarray(got[name]), np.asarray(expected[name])
        if a.shape != b.shape:
            raise VerificationError(f"{where}: output {name!r} has shape {list(a.shape)} in ONNX, {list(b.shape)} in the source")
        if a.size:
            diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            if not np.isfinite(diff):
                raise VerificationError(f"{where}: output {name!r} is not finite in one of ONNX/source")
            worst = max(worst, diff)
    if worst > tolerance:
        raise VerificationError(f"{where}: max abs difference {worst:.3g} between ONNX Runtime and the source exceeds tolerance {tolerance:g}")
    return Comparison(max_abs_diff=worst, compared=compared)


def check_batching(model_path: Path, record: ExpertRecord, inputs: dict[str, np.ndarray], where: str) -> None:
    """Two items batched on the declared axes give what each gives alone: a wrong batch axis
    fails here, at export, instead of on every request.

    Skipped where the model takes one item per run or the verification inputs hold one item.

    Raises:
        ExportError: naming the expert, the axes and what went wrong.
    """
    from edgecoe.execution import run_batch

    if record.batch.max == 1:
        return
    items: list[dict[str, np.ndarray]] = [{}, {}]
    for spec in record.inputs:
        array, axis = inputs[spec.name], record.batch.axis(spec.name)
        if axis is None:
            items[0][spec.name] = items[1][spec.name] = array
        elif array.shape[axis] < 2:
            return  # one item only: nothing to compare
        else:
            items[0][spec.name], items[1][spec.name] = np.take(array, 0, axis=axis), np.take(array, 1, axis=axis)
    axes = {s.name: record.batch.axis(s.name) for s in [*record.inputs, *record.outputs]}
    try:
        session = create_session(model_path, optimization="all")
        together = run_batch(session, record, items)
        alone = [run_batch(session, record, [item])[0] for item in items]
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{where}: a batch of two items on batch axes {axes} fails: {first_line}; declare "
                          "batch.axes (None for a tensor without one) or batch.max: 1") from exc
    for name in together[0]:
        for i in (0, 1):
            a, b = together[i][name], alone[i][name]
            if a.shape != b.shape or (a.dtype.kind == "f" and not np.allclose(a, b, rtol=1e-3, atol=1e-4)):
                raise ExportError(f"{where}: output {name!r} of item {i} differs batched vs alone "
                                  f"({list(a.shape)} vs {list(b.shape)}) on batch axes {axes}; declare batch.axes "
                                  "or batch.max: 1")
