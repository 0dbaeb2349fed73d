"""The ONNX graphs of an MoE model, built with ``onnx.helper`` (no exporter, no tracing).

- :func:`dense_layer_graph`: one decoder layer's dense part. Inputs ``hidden``
  ``[B, S, H]``, ``cos``/``sin`` ``[B, S, D]`` (rotary tables for the positions),
  ``attn_bias`` ``[B, 1, S, T]`` (0 or a large negative: causal, padding and
  window masking decided by the runtime), ``past_key``/``past_value``
  ``[B, KV, P, D]``. Outputs ``residual`` (hidden after attention, plus the
  gated shared expert where there is one), ``moe_input`` (the normalized
  input of the routed experts), ``router_logits`` ``[B, S, E]`` and
  ``present_key``/``present_value`` ``[B, KV, P + S, D]``.
- :func:`head_graph`: final norm and LM head, ``hidden`` -> ``logits``.
- :func:`expert_graph`: one routed expert's FFN with its weights as *inputs*
  (``x``, ``weight`` per row, then the weight tensors), so one session serves
  every expert of a shape and an expert's weights are just buffers the cache
  holds. Float32 uses Gemm, int8/int4 ONNX Runtime's ``MatMulNBits``.

The arithmetic follows Hugging Face's modules step for step (RMSNorm in
float32, ``q @ k^T * scale``, softmax, grouped-query heads sharing K and V),
so the outputs agree with ``transformers`` to float rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecoe.moe.manifest import ExpertFormat, ModelShape

OPSET = 17
_F = TensorProto.FLOAT


class _Graph:
    """A tiny builder: unique node names, initializers from numpy, one place for constants."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def op(self, op_type: str, *inputs: str, domain: str = "", **attrs: Any) -> str:
        self._count += 1
        out = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, domain=domain, **attrs))
        return out

    def ops(self, op_type: str, *inputs: str, num_outputs: int, **attrs: Any) -> list[str]:
        self._count += 1
        outs = [f"{op_type.lower()}_{self._count}_{i}" for i in range(num_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"{op_type}_{self._count}", **attrs))
        return outs

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def rename(self, value: str, name: str) -> str:
        self.nodes.append(helper.make_node("Identity", [value], [name], name=f"out_{name}"))
        return name

    def rms_norm(self, x: str, weight: np.ndarray, eps: float, name: str) -> str:
        # HF: x * rsqrt(mean(x^2) + eps) * weight, in float32
        square = self.op("Mul", x, x)
        mean = self.op("ReduceMean", square, axes=[-1], keepdims=1)
        denom = self.op("Sqrt", self.op("Add", mean, self.const(f"{name}.eps", np.array(eps, np.float32))))
        normed = self.op("Div", x, denom)
        return self.op("Mul", self.const(f"{name}.weight", weight.astype(np.float32)), normed)

    def linear(self, x: str, weight: np.ndarray, name: str, bias: np.ndarray | None = None) -> str:
        """x @ weight^T (+ bias), weight in the ``[out, in]`` layout of ``nn.Linear``."""
        out = self.op("MatMul", x, self.const(f"{name}.weight_t", weight.T.astype(np.float32)))
        if bias is not None:
            out = self.op("Add", out, self.const(f"{name}.bias", bias.astype(np.float32)))
        return out

    def silu(self, x: str) -> str:
        return self.op("Mul", x, self.op("Sigmoid", x))

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
              opsets: tuple[tuple[str, int], ...] = ()) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        *(helper.make_opsetid(d, v) for d, v in opsets)],
                                  producer_name="edgecoe")
        model.ir_version = 8  # readable by every onnxruntime edgecoe supports
        return model


def _value(name: str, shape: list[int | str | None], dtype: int = _F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def dense_layer_graph(
    shape: ModelShape, *, index: int, input_norm: np.ndarray, post_norm: np.ndarray,
    q: np.ndarray, k: np.ndarray, v: np.ndarray, o: np.ndarray, router: np.ndarray,
    q_bias: np.ndarray | None = None, k_bias: np.ndarray | None = None, v_bias: np.ndarray | None = None,
    shared: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, shared_gate: np.ndarray | None = None,
) -> onnx.ModelProto:
    """One decoder layer's dense part (see the module docstring); weights in ``nn.Linear`` layout.

    Args:
        shared: the shared expert's (gate, up, down) weights, with ``shared_gate`` its sigmoid gate.
    """
    g = _Graph()
    heads, kv_heads, dim = shape.num_heads, shape.num_kv_heads, shape.head_dim
    x = g.rms_norm("hidden", input_norm, shape.rms_norm_eps, "input_norm")

    def project(weight: np.ndarray, bias: np.ndarray | None, name: str, num_heads: int) -> str:
        flat = g.linear(x, weight, name, bias)  # [B, S, heads * D]
        split = g.op("Reshape", flat, g.const(f"{name}.shape", np.array([0, 0, num_heads, dim], np.int64)))
        return g.op("Transpose", split, perm=[0, 2, 1, 3])  # [B, heads, S, D]

    def rotate(t: str) -> str:  # HF apply_rotary_pos_emb: t * cos + rotate_half(t) * sin
        first, second = g.ops("Split", t, g.const(f"halves.{t}", np.array([dim // 2, dim // 2], np.int64)),
                              num_outputs=2, axis=-1)
        rotated = g.op("Concat", g.op("Neg", second), first, axis=-1)
        return g.op("Add", g.op("Mul", t, cos), g.op("Mul", rotated, sin))

    one = g.const("axis1", np.array([1], np.int64))
    cos = g.op("Unsqueeze", "cos", one)  # [B, 1, S, D]
    sin = g.op("Unsqueeze", "sin", one)
    query = rotate(project(q, q_bias, "q_proj", heads))
    key = rotate(project(k, k_bias, "k_proj", kv_heads))
    value = project(v, v_bias, "v_proj", kv_heads)
    present_key = g.rename(g.op("Concat", "past_key", key, axis=2), "present_key")
    present_value = g.rename(g.op("Concat", "past_value", value, axis=2), "present_value")

    # Grouped-query attention without copying K and V: view the query heads sharing one
    # KV head as extra rows ([B, KV, rep * S, D]); head h uses KV head h // rep, as in repeat_kv.
    grouped = g.const("grouped_shape", np.array([0, kv_heads, -1, dim], np.int64))
    scores = g.op("MatMul", g.op("Reshape", query, grouped), g.op("Transpose", present_key, perm=[0, 1, 3, 2]))
    scores = g.op("Reshape", scores, g.const("scores_shape", np.array([0, heads, -1, 0], np.int64)),
                  allowzero=0)  # [B, heads, S, T]
    scores = g.op("Add", g.op("Mul", scores, g.const("scale", np.array(dim ** -0.5, np.float32))), "attn_bias")
    probs = g.op("Softmax", scores, axis=-1)
    probs = g.op("Reshape", probs, g.const("probs_shape", np.array([0, kv_heads, -1, 0], np.int64)))
    context = g.op("Reshape", g.op("MatMul", probs, present_value),
                   g.const("context_shape", np.array([0, heads, -1, dim], np.int64)))  # [B, heads, S, D]
    context = g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]),
                   g.const("merged_shape", np.array([0, 0, heads * dim], np.int64)))
    after_attention = g.op("Add", "hidden", g.linear(context, o, "o_proj"))

    moe_input = g.rms_norm(after_attention, post_norm, shape.rms_norm_eps, "post_norm")
    g.rename(g.linear(moe_input, router, "router"), "router_logits")
    g.rename(moe_input, "moe_input")
    residual = after_attention
    if shared is not None:
        assert shared_gate is not None, "a shared expert comes with its gate"
        gate, up, down = shared
        inner = g.op("Mul", g.silu(g.linear(moe_input, gate, "shared.gate_proj")),
                     g.linear(moe_input, up, "shared.up_proj"))
        shared_out = g.op("Mul", g.op("Sigmoid", g.linear(moe_input, shared_gate, "shared.expert_gate")),
                          g.linear(inner, down, "shared.down_proj"))
        residual = g.op("Add", residual, shared_out)
    g.rename(residual, "residual")

    b, s, p, t = "batch", "seq", "past", "total"
    inputs = [_value("hidden", [b, s, shape.hidden_size]), _value("cos", [b, s, dim]), _value("sin", [b, s, dim]),
              _value("attn_bias", [b, 1, s, t]), _value("past_key", [b, kv_heads, p, dim]),
              _value("past_value", [b, kv_heads, p, dim])]
    outputs = [_value("residual", [b, s, shape.hidden_size]), _value("moe_input", [b, s, shape.hidden_size]),
               _value("router_logits", [b, s, router.shape[0]]), _value("present_key", [b, kv_heads, t, dim]),
               _value("present_value", [b, kv_heads, t, dim])]
    return g.model(f"layer_{index:03d}", inputs, outputs)


def head_graph(shape: ModelShape, *, final_norm: np.ndarray, lm_head: np.ndarray) -> onnx.ModelProto:
    """Final RMSNorm and LM head: ``hidden [B, S, H]`` -> ``logits [B, S, V]``."""
    g = _Graph()
    g.rename(g.linear(g.rms_norm("hidden", final_norm, shape.rms_norm_eps, "final_norm"), lm_head, "lm_head"),
             "logits")
    return g.model("head", [_value("hidden", ["batch", "seq", shape.hidden_size])],
                   [_value("logits", ["batch", "seq", shape.vocab_size])])


EXPERT_INPUTS = ("x", "weight")
"""The expert graph's activations; its weight inputs follow in ``ExpertFormat.tensors`` order."""


def expert_graph(fmt: ExpertFormat, *, hidden_size: int, intermediate_size: int) -> onnx.ModelProto:
    """One routed expert's FFN, ``weight * down(silu(gate(x)) * up(x))``, its weights as inputs.

    ``x`` is ``[N, hidden]`` (the rows routed to this expert), ``weight``
    ``[N, 1]`` their routing weights; the output ``y`` is ``[N, hidden]``.
    """
    g = _Graph()
    dims = {"w13": (hidden_size, 2 * intermediate_size), "w2": (intermediate_size, hidden_size)}  # (K, N)

    def project(x: str, name: str) -> str:
        k, n = dims[name]
        if fmt.dtype == "float32":
            return g.op("Gemm", x, name, transB=1)
        bits = 4 if fmt.dtype == "int4" else 8
        return g.op("MatMulNBits", x, name, f"{name}_scales", domain="com.microsoft",
                    K=k, N=n, bits=bits, block_size=fmt.block_size)

    gate, up = g.ops("Split", project("x", "w13"),
                     g.const("halves", np.array([intermediate_size, intermediate_size], np.int64)),
                     num_outputs=2, axis=1)
    y = g.op("Mul", project(g.op("Mul", g.silu(gate), up), "w2"), "weight")
    g.rename(y, "y")
    weight_inputs = [_value(t.name, list(t.shape), _F if t.dtype == "float32" else TensorProto.UINT8)
                     for t in fmt.tensors]
    inputs = [_value("x", ["rows", hidden_size]), _value("weight", ["rows", 1]), *weight_inputs]
    opsets = (("com.microsoft", 1),) if fmt.dtype != "float32" else ()
    return g.model(f"expert_{fmt.dtype}", inputs, [_value("y", ["rows", hidden_size])], opsets)
