"""Reading facts out of ONNX files without running them.

Every ONNX parse in edgecoe goes through :func:`read_model` so that a file that
is not ONNX, or is truncated, fails the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import helper

from edgecoe.errors import OnnxFileError
from edgecoe.package.manifest import Dim, TensorSpec

# Domains whose operators ONNX Runtime implements itself. Anything else needs a
# custom-op library, which a package must never bring in silently.
BUILTIN_DOMAINS = frozenset({
    "", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview", "ai.onnx.preview.training", "ai.onnx.training",
    "com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental",
})


def read_model(path: str | Path) -> onnx.ModelProto:
    """Parse an ONNX file's protobuf, leaving external weights on disk.

    Raises:
        OnnxFileError: the file cannot be read, is not ONNX, or has no graph.
    """
    path = Path(path)
    try:
        if not path.is_file():  # a FIFO or device would hang or never end
            raise OnnxFileError(f"{path}: not a regular file, so not an ONNX model")
        data = path.read_bytes()
    except OSError as exc:
        raise OnnxFileError(f"{path}: cannot read ONNX file: {exc.strerror or exc}") from exc
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        raise OnnxFileError(
            f"{path}: not a valid ONNX model (protobuf decode failed: {exc}); "
            "the file may be truncated or of another format"
        ) from exc
    if not model.HasField("graph") or not model.graph.output:
        raise OnnxFileError(f"{path}: parsed as protobuf but holds no ONNX graph with outputs")
    return model


def _dims(value_info: onnx.ValueInfoProto) -> list[Dim]:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return []
    out: list[Dim] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value >= 0:
            out.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            out.append(dim.dim_param)
        else:
            out.append(None)
    return out


def _spec(value_info: onnx.ValueInfoProto, where: str) -> TensorSpec:
    type_ = value_info.type
    if not type_.HasField("tensor_type"):
        raise OnnxFileError(f"{where}: {value_info.name!r} is not a tensor; edgecoe serves tensor I/O only")
    elem = type_.tensor_type.elem_type
    try:
        dtype = helper.tensor_dtype_to_np_dtype(elem).name
    except (KeyError, ValueError) as exc:
        raise OnnxFileError(f"{where}: {value_info.name!r} has unsupported element type {elem}") from exc
    return TensorSpec(name=value_info.name, dtype=dtype, shape=_dims(value_info))


def io_specs(model: onnx.ModelProto, *, where: str = "model",
             dropped: Collection[str] = ()) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's real inputs (initializers excluded) and its outputs except ``dropped`` ones
    (which may be of any type: a sequence or map output is refused only when kept)."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [_spec(vi, where) for vi in model.graph.input if vi.name not in initializers]
    outputs = [_spec(vi, where) for vi in model.graph.output if vi.name not in dropped]
    return inputs, outputs


def non_tensor_outputs(model: onnx.ModelProto) -> list[str]:
    """Outputs that are not tensors (sequences, maps): edgecoe keeps tensors only."""
    return [vi.name for vi in model.graph.output if not vi.type.HasField("tensor_type")]


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        yield from _subgraphs(node)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield from _graphs(attr.g)
        for sub in attr.graphs:
            yield from _graphs(sub)


def _nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node: the graph's, its subgraphs', local functions' bodies and their subgraphs'."""
    for graph in _graphs(model.graph):
        yield from graph.node
    for function in model.functions:
        for node in function.node:
            yield node
            for graph in _subgraphs(node):
                yield from graph.node


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in the model: initializers (dense and sparse) of the graph and every
    subgraph, and tensor attributes (dense and sparse) of every node, local functions' included."""
    graphs = list(_graphs(model.graph))
    for function in model.functions:
        for node in function.node:
            graphs.extend(_subgraphs(node))
    for graph in graphs:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
    for node in _nodes(model):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            sparses = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            for sparse in [*sparses, *attr.sparse_tensors]:
                yield sparse.values
                yield sparse.indices


def external_locations(model: onnx.ModelProto) -> list[str]:
    """The ``location`` of every external-data tensor, unique, in first-seen order.

    Raises:
        OnnxFileError: a tensor lists an external-data key twice (readers disagree on which counts).
    """
    seen: dict[str, None] = {}
    for tensor in iter_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            keys = [entry.key for entry in tensor.external_data]
            if len(keys) != len(set(keys)):
                raise OnnxFileError(f"model: tensor {tensor.name!r} lists an external-data key twice ({keys}); "
                                    "readers disagree on which one counts")
            for entry in tensor.external_data:
                if entry.key == "location":
                    seen.setdefault(entry.value, None)
    return list(seen)


def custom_domains(model: onnx.ModelProto) -> list[str]:
    """Operator domains the model's nodes use that ONNX Runtime does not implement itself.

    Only nodes count: ORT-optimized models declare opsets for many internal
    domains they never use.
    """
    used = {node.domain for node in _nodes(model)}
    local = {f.domain for f in model.functions}
    return sorted(d for d in used - BUILTIN_DOMAINS - local)


def opset(model: onnx.ModelProto) -> int:
    """The default-domain opset version (0 when not declared)."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 0
