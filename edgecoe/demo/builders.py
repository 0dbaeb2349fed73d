"""ONNX graphs for the demo's experts, built with onnx.helper from seeded numpy weights.

No torch: the demo must build anywhere edgecoe installs, bit-identically for a
given seed. The architectures are real (residual CNN classifiers, YOLO-style
detectors), randomly initialised: what matters for serving is their size,
their compute and their session-creation cost, not their accuracy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _GraphBuilder:
    """Appends nodes and seeded initializers; names are numbered, so output is deterministic."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def weight(self, shape: tuple[int, ...], std: float, prefix: str = "w") -> str:
        name = self._name(prefix)
        array = (self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def const(self, array: np.ndarray, prefix: str = "c") -> str:
        name = self._name(prefix)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, *, act: str | None = "relu", gain: float = 1.0) -> str:
        fan_in = cin * k * k
        w = self.weight((cout, cin, k, k), gain * float(np.sqrt(2.0 / fan_in)))
        b = self.const(np.zeros(cout, dtype=np.float32), "b")
        y = self.node("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        return self.act(y, act)

    def act(self, x: str, act: str | None) -> str:
        if act == "relu":
            return self.node("Relu", [x])
        if act == "silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x])])
        return x

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgecoe-demo")
        model.ir_version = 8  # readable by every onnxruntime >= 1.14
        return model


def resnet_classifier(
    *, seed: int, image_size: int, widths: list[int], blocks: list[int], num_classes: int,
    marker_channel: int, marker_gain: float, name: str,
) -> onnx.ModelProto:
    """A residual CNN: stem, stages of basic blocks, global pool, linear head.

    The logits also get ``marker_gain * mean(image[:, marker_channel])`` added
    to class 1 and subtracted from class 0. This is how a workload controls
    how many items a classifier passes on: the routing still comes from
    running the model, but an input whose marker channel is offset positive
    ("good component") is passed on, a negative one ("defect") stops.
    """
    g = _GraphBuilder(np.random.default_rng(seed))
    image = "image"
    x = g.conv(image, 3, widths[0], 3, 2)
    cin = widths[0]
    for stage, (width, count) in enumerate(zip(widths, blocks, strict=False)):
        for block in range(count):
            stride = 2 if stage > 0 and block == 0 else 1
            y = g.conv(x, cin, width, 3, stride)
            # A small gain on the last conv of each residual branch keeps
            # activations bounded through depth without normalisation layers.
            y = g.conv(y, width, width, 3, 1, act=None, gain=0.2)
            skip = x if (stride == 1 and cin == width) else g.conv(x, cin, width, 1, stride, act=None)
            x = g.node("Relu", [g.node("Add", [y, skip])])
            cin = width
    pooled = g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1)
    head = g.weight((cin, num_classes), 0.01 / float(np.sqrt(cin)))
    logits = g.node("MatMul", [pooled, head])
    marker = np.zeros((3, num_classes), dtype=np.float32)
    marker[marker_channel, 0] = -marker_gain
    marker[marker_channel, 1] = marker_gain
    image_mean = g.node("Flatten", [g.node("GlobalAveragePool", [image])], axis=1)
    logits = g.node("Add", [logits, g.node("MatMul", [image_mean, g.const(marker, "marker")])])
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, image_size, image_size])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])]
    return g.model(inputs, outputs, name)


def yolo_detector(
    *, seed: int, image_size: int, widths: list[int], depth: int, num_classes: int,
    num_anchors: int, name: str,
) -> onnx.ModelProto:
    """A YOLO-style detector: SiLU CSP-like backbone, heads on the last two scales.

    Output ``detections`` is ``[batch, num_boxes, 5 + num_classes]`` after a
    sigmoid (box, objectness, class scores), as YOLOv5 emits before NMS.
    """
    g = _GraphBuilder(np.random.default_rng(seed))
    x = g.conv("image", 3, widths[0], 3, 2, act="silu")
    cin = widths[0]
    features: list[tuple[str, int, int]] = []  # (tensor, channels, spatial size)
    size = image_size // 2
    for width in widths[1:]:
        x = g.conv(x, cin, width, 3, 2, act="silu")
        size //= 2
        for _ in range(depth):
            half = g.conv(x, width, width // 2, 1, act="silu")
            half = g.conv(half, width // 2, width, 3, act=None, gain=0.2)
            x = g.act(g.node("Add", [x, half]), "silu")
        cin = width
        features.append((x, width, size))
    per_box = 5 + num_classes
    heads = []
    for tensor, channels, spatial in features[-2:]:
        y = g.conv(tensor, channels, num_anchors * per_box, 1, act=None, gain=0.1)
        shape = g.const(np.array([0, num_anchors, per_box, spatial * spatial], dtype=np.int64), "shape")
        y = g.node("Reshape", [y, shape])
        y = g.node("Transpose", [y], perm=[0, 1, 3, 2])
        flat = g.const(np.array([0, num_anchors * spatial * spatial, per_box], dtype=np.int64), "shape")
        heads.append(g.node("Reshape", [y, flat]))
    joined = g.node("Concat", heads, axis=1)
    g.nodes.append(helper.make_node("Sigmoid", [joined], ["detections"], name="detections"))
    num_boxes = sum(num_anchors * s * s for _, _, s in features[-2:])
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, image_size, image_size])]
    outputs = [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["batch", num_boxes, per_box])]
    return g.model(inputs, outputs, name)
