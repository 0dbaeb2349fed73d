"""Checks every exported expert must pass: onnx.checker, shape inference, ORT vs source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgecoe.errors import ExportError, VerificationError
from edgecoe.export.sources import Reference
from edgecoe.package.manifest import TensorSpec
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


def example_inputs(specs: list[TensorSpec], dim_defaults: dict[str, int], *, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs for verification, one array per model input."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        shape = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                shape.append(dim)
            elif isinstance(dim, str) and dim in dim_defaults:
                shape.append(dim_defaults[dim])
            elif isinstance(dim, str) and dim in _NAMED_DEFAULTS:
                shape.append(_NAMED_DEFAULTS[dim])
            else:
                shape.append(_BATCH_DEFAULT if axis == 0 else _OTHER_DEFAULT)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b" or "mask" in spec.name:
            out[spec.name] = np.ones(shape, dtype=dtype)
        elif "type_ids" in spec.name:
            out[spec.name] = np.zeros(shape, dtype=dtype)
        else:
            # Token ids and other integer inputs: small values valid for any vocabulary.
            out[spec.name] = rng.integers(0, 10, size=shape).astype(dtype)
    return out


@dataclass(frozen=True, slots=True)
class Comparison:
    max_abs_diff: float
    compared: list[str]  # output names compared


def compare_with_reference(
    model_path: Path, reference: Reference, inputs: dict[str, np.ndarray], *, tolerance: float, where: str,
    optimization: str = "all",
) -> Comparison:
    """Run the package's copy on ORT CPU and compare with the source's outputs.

    Raises:
        VerificationError: an output differs by more than ``tolerance``, has
            another shape, or no output could be compared.
    """
    try:
        session = create_session(model_path, optimization=optimization)  # type: ignore[arg-type]
        names = [o.name for o in session.get_outputs()]
        got = dict(zip(names, session.run(names, inputs), strict=False))
    except SessionError as exc:
        raise ExportError(f"{where}: {exc}") from exc
    except Exception as exc:
        raise ExportError(f"{where}: onnxruntime failed to run the exported model: {exc}") from exc
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
