"""Tiny ONNX models and packages for tests (built in milliseconds, deterministic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def linear_model(
    *, in_name: str = "x", out_name: str = "y", in_dim: int = 4, out_dim: int = 3, seed: int = 0,
    batch: str | int = "batch", opset: int = 17,
) -> onnx.ModelProto:
    """y = x @ W + b with a symbolic batch axis."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((in_dim, out_dim)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(out_dim).astype(np.float32), "B")
    nodes = [helper.make_node("MatMul", [in_name, "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], [out_name])]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, [batch, in_dim])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, out_dim])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def two_in_two_out_model(*, seed: int = 1) -> onnx.ModelProto:
    """Inputs a [batch, seq, 4] and b [batch, seq, 4] (two symbolic axes); outputs sum and max."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "W")
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("MatMul", ["s", "W"], ["sum"]),
        helper.make_node("ReduceMax", ["s"], ["max"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "seq", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", "seq", 4]),
         helper.make_tensor_value_info("max", TensorProto.FLOAT, ["batch", 4])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def save_external(model: onnx.ModelProto, path: Path) -> None:
    """Save with every weight in ``path.name + '.bin'`` beside it."""
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".bin", size_threshold=0)


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec, indent=2))
    return path


def chain_spec(model_dir: Path, *, optimize: bool = False) -> dict:
    """A 3-expert spec: two classifiers picked by metadata, one shared second stage."""
    onnx.save_model(linear_model(in_dim=4, out_dim=2, seed=1), str(model_dir / "cls_a.onnx"))
    onnx.save_model(linear_model(in_dim=4, out_dim=2, seed=2), str(model_dir / "cls_b.onnx"))
    onnx.save_model(linear_model(in_dim=4, out_dim=3, seed=3), str(model_dir / "stage2.onnx"))
    return {
        "name": "chain",
        "metadata": {"kind": {"values": ["a", "b"], "distribution": {"a": 0.75, "b": 0.25}}},
        "entry": {"key": "kind", "experts": {"a": "cls_a", "b": "cls_b"}},
        "optimize": optimize,
        "experts": {
            "cls_a": {"source": {"onnx": "cls_a.onnx"}, "architecture": "lin2",
                      "route": {"kind": "argmax", "output": "y", "classes": {"1": ["stage2"]},
                                "class_fractions": {"1": 0.5}}},
            "cls_b": {"source": {"onnx": "cls_b.onnx"}, "architecture": "lin2",
                      "route": {"kind": "argmax", "output": "y", "classes": {"1": ["stage2"]},
                                "class_fractions": {"1": 0.2}}},
            "stage2": {"source": {"onnx": "stage2.onnx"}, "architecture": "lin3"},
        },
    }
