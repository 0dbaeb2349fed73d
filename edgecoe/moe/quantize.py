"""Weight-only quantization of routed experts (int8 / int4) with ONNX Runtime's MatMulNBits tools.

Each expert matrix is quantized by ONNX Runtime's own ``MatMulNBitsQuantizer``
(symmetric, one float32 scale per ``block_size`` weights along the input
dimension), so the packed blocks are exactly what its ``MatMulNBits`` kernel
reads. Export measures perplexity on held-out text before and after, and
records both in the manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecoe.errors import ExportError
from edgecoe.moe.manifest import ExpertFormat, LayerRecord, MoeManifest, Quantization, TensorLayout
from edgecoe.package.manifest import MANIFEST_NAME
from edgecoe.package.writer import PackageWriter

_QUANTIZER_LOGGER = "onnxruntime.quantization.matmul_nbits_quantizer"


def quantize_matrix(weight: np.ndarray, *, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``weight [out, in]`` (``nn.Linear`` layout) as MatMulNBits blocks and scales.

    Returns:
        (packed ``uint8 [out, blocks, block_size * bits / 8]``, scales ``float32 [out, blocks]``)
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    rows, cols = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])], "q",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, cols])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, rows])],
        [numpy_helper.from_array(np.ascontiguousarray(weight.T, dtype=np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    logging.getLogger(_QUANTIZER_LOGGER).setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(model, algo_config=DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, bits=bits))
    quantizer.process()
    out: onnx.ModelProto = quantizer.model.model
    if [n.op_type for n in out.graph.node] != ["MatMulNBits"]:
        raise ExportError(f"ONNX Runtime's quantizer did not produce one MatMulNBits node for a {rows}x{cols} "
                          f"matrix (bits={bits}, block_size={block_size})")
    arrays = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    packed = next(a for a in arrays.values() if a.dtype == np.uint8)
    scales = next(a for a in arrays.values() if a.dtype == np.float32)
    blocks = -(-cols // block_size)
    return packed.reshape(rows, blocks, -1), scales.reshape(rows, blocks).astype(np.float32)


def quantized_format(hidden: int, intermediate: int, *, bits: int, block_size: int) -> ExpertFormat:
    """The layout of a quantized expert file: w13 blocks, w2 blocks, then their scales."""
    tensors = []
    offset = 0
    pairs: tuple[tuple[Any, int, int], ...] = (("w13", 2 * intermediate, hidden), ("w2", hidden, intermediate))
    for name, rows, cols in pairs:
        blocks = -(-cols // block_size)
        layout = TensorLayout(name=name, dtype="uint8", shape=[rows, blocks, block_size * bits // 8], offset=offset)
        offset += layout.num_bytes
        tensors.append(layout)
    scales: tuple[tuple[Any, int, int], ...] = (("w13_scales", 2 * intermediate, hidden),
                                                ("w2_scales", hidden, intermediate))
    for name, rows, cols in scales:
        layout = TensorLayout(name=name, dtype="float32", shape=[rows, -(-cols // block_size)], offset=offset)
        offset += layout.num_bytes
        tensors.append(layout)
    return ExpertFormat(dtype="int4" if bits == 4 else "int8", block_size=block_size, tensors=tensors)


def quantize_expert(data: bytes, fp32: ExpertFormat, fmt: ExpertFormat, *, bits: int) -> bytes:
    """A float32 expert file's bytes, quantized into ``fmt``'s layout."""
    arrays = {t.name: np.frombuffer(data, np.float32, count=t.num_bytes // 4, offset=t.offset).reshape(t.shape)
              for t in fp32.tensors}
    out = bytearray(fmt.file_bytes)
    layouts: dict[str, TensorLayout] = {t.name: t for t in fmt.tensors}
    for name in ("w13", "w2"):
        packed, scales = quantize_matrix(arrays[name], bits=bits, block_size=fmt.block_size or 32)
        for key, value in ((name, packed), (f"{name}_scales", scales)):
            layout = layouts[key]
            raw = np.ascontiguousarray(value).tobytes()
            if len(raw) != layout.num_bytes:
                raise ExportError(f"quantized {key} is {len(raw)} bytes, the layout expects {layout.num_bytes}")
            out[layout.offset:layout.offset + layout.num_bytes] = raw
    return bytes(out)


def quantize_package_experts(
    writer: PackageWriter, manifest: MoeManifest, *, bits: int, block_size: int, eval_text: str | None,
    progress: Callable[[str, int, int], None],
) -> MoeManifest:
    """Rewrite every expert file of the package being written as ``bits``-bit blocks.

    Perplexity on held-out text is measured with the float32 experts first and the
    quantized ones after, in the package under construction, and recorded.
    """
    from edgecoe.moe.evaluate import held_out_perplexity

    if block_size < 16 or block_size & (block_size - 1):
        raise ExportError(f"block_size={block_size} must be a power of two >= 16")
    root = Path(writer.root)
    (root / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    before, num_tokens = held_out_perplexity(root, eval_text)
    fp32 = manifest.expert_format
    fmt = quantized_format(manifest.model.hidden_size, manifest.moe.intermediate_size, bits=bits,
                           block_size=block_size)
    layers = []
    for i, layer in enumerate(manifest.layers):
        experts = []
        for record in layer.experts:
            data = (root / record.path).read_bytes()
            experts.append(writer.write_bytes(record.path, quantize_expert(data, fp32, fmt, bits=bits)))
        layers.append(LayerRecord(dense=layer.dense, experts=experts))
        progress(f"quantize layer {i}", i + 1, len(manifest.layers))
    quantization = Quantization(bits=bits, block_size=block_size, symmetric=True,  # type: ignore[arg-type]
                                held_out_tokens=num_tokens, perplexity_float32=before)
    quantized = manifest.model_copy(update={"layers": layers, "expert_format": fmt, "quantization": quantization})
    quantized = MoeManifest.model_validate(quantized.model_dump())  # re-check the new layout and sizes
    (root / MANIFEST_NAME).write_text(quantized.to_json(), encoding="utf-8")
    after, _ = held_out_perplexity(root, eval_text)
    return quantized.model_copy(update={"quantization": quantization.model_copy(update={"perplexity": after})})
