"""Execution providers and the one place ONNX Runtime sessions are created.

Issue 3 grows this into per-executor provider options (CUDA, CoreML); the
session boundary already wraps ORT's errors in edgecoe's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnxruntime as ort

from edgecoe.errors import EdgecoeError

Optimization = Literal["none", "basic", "extended", "all"]

_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class SessionError(EdgecoeError):
    """ONNX Runtime could not create a session for a model."""


def available_providers() -> list[str]:
    """Execution providers the installed onnxruntime offers, in its preference order."""
    return list(ort.get_available_providers())


def create_session(
    model_path: str | Path,
    *,
    providers: list[str] | None = None,
    optimization: Optimization = "all",
    save_optimized_to: str | Path | None = None,
    intra_op_threads: int = 0,
) -> ort.InferenceSession:
    """Create an inference session.

    Args:
        model_path: ONNX file (external data is found beside it).
        providers: execution providers; default CPU only.
        optimization: graph optimization level.
        save_optimized_to: also write the optimized graph here (for loading
            later with ``optimization="none"``, which skips that work).
        intra_op_threads: ORT intra-op threads; 0 lets ORT decide.

    Raises:
        SessionError: naming the model and ORT's reason.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[optimization]
    options.intra_op_num_threads = intra_op_threads
    if save_optimized_to is not None:
        options.optimized_model_filepath = str(save_optimized_to)
    try:
        return ort.InferenceSession(str(model_path), sess_options=options,
                                    providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises untyped Fail/InvalidGraph/RuntimeError
        raise SessionError(f"onnxruntime cannot create a session for {model_path}: {exc}") from exc
