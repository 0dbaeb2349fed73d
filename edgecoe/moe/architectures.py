"""What differs between the Hugging Face MoE architectures edgecoe exports.

One :class:`Architecture` per ``config.model_type``: how to read the shapes
from ``config.json`` and where each weight lives in the checkpoint. Everything
else (graphs, routing, generation) is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgecoe.errors import ExportError
from edgecoe.moe.manifest import ModelShape, MoeShape


@dataclass(frozen=True, slots=True)
class ExpertWeightNames:
    gate: str  # w1: [intermediate, hidden]
    up: str  # w3: [intermediate, hidden]
    down: str  # w2: [hidden, intermediate]


@dataclass(frozen=True, slots=True)
class LayerWeightNames:
    input_norm: str
    post_norm: str
    q: str
    k: str
    v: str
    o: str
    router: str
    q_bias: str | None  # None: the architecture has no attention biases
    k_bias: str | None
    v_bias: str | None
    shared: ExpertWeightNames | None  # the always-on shared expert, if any
    shared_gate: str | None  # its sigmoid gate [1, hidden]


@dataclass(frozen=True, slots=True)
class Architecture:
    name: str
    model_shape: Callable[[dict[str, Any]], ModelShape]
    moe_shape: Callable[[dict[str, Any]], MoeShape]
    layer: Callable[[int], LayerWeightNames]
    expert: Callable[[int, int], ExpertWeightNames]
    embed: str = "model.embed_tokens.weight"
    final_norm: str = "model.norm.weight"
    lm_head: str = "lm_head.weight"


def _get(config: dict[str, Any], key: str, kind: type | tuple[type, ...], default: object = ...) -> Any:
    value = config.get(key, default)
    if value is ...:
        raise ExportError(f"config.json has no {key!r}")
    if (value is not None and not isinstance(value, kind)) or (isinstance(value, bool) and kind is not bool):
        raise ExportError(f"config.json: {key}={value!r} is not a {getattr(kind, '__name__', kind)}")
    return value


def _eos_ids(config: dict[str, Any]) -> list[int]:
    eos = config.get("eos_token_id")
    if eos is None:
        return []
    ids = eos if isinstance(eos, list) else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ExportError(f"config.json: eos_token_id={eos!r} is not a token id or a list of them")
    return ids


def _model_shape(config: dict[str, Any], *, sliding_window: int | None) -> ModelShape:
    scaling = config.get("rope_scaling")
    if scaling not in (None, {}) and (not isinstance(scaling, dict) or scaling.get("rope_type", "default") != "default"):
        raise ExportError(f"config.json: rope_scaling={scaling!r} is not supported (only plain rotary embeddings)")
    if config.get("hidden_act", "silu") != "silu":
        raise ExportError(f"config.json: hidden_act={config.get('hidden_act')!r} is not supported (only silu)")
    hidden = _get(config, "hidden_size", int)
    heads = _get(config, "num_attention_heads", int)
    head_dim = _get(config, "head_dim", int, None) or hidden // heads
    try:
        return ModelShape(
            vocab_size=_get(config, "vocab_size", int), hidden_size=hidden,
            num_layers=_get(config, "num_hidden_layers", int), num_heads=heads,
            num_kv_heads=_get(config, "num_key_value_heads", int, heads), head_dim=head_dim,
            rope_theta=float(_get(config, "rope_theta", (int, float), 10000.0)),
            rms_norm_eps=float(_get(config, "rms_norm_eps", float, 1e-6)),
            max_position_embeddings=_get(config, "max_position_embeddings", int, 4096),
            sliding_window=sliding_window, bos_token_id=_get(config, "bos_token_id", int, None),
            eos_token_ids=_eos_ids(config), pad_token_id=_get(config, "pad_token_id", int, None))
    except ValueError as exc:
        raise ExportError(f"config.json: {exc}") from None


def _moe_shape(**values: Any) -> MoeShape:
    try:
        return MoeShape(**values)
    except ValueError as exc:
        raise ExportError(f"config.json: {exc}") from None


def _mixtral_model(config: dict[str, Any]) -> ModelShape:
    return _model_shape(config, sliding_window=_get(config, "sliding_window", int, None))


def _mixtral_moe(config: dict[str, Any]) -> MoeShape:
    return _moe_shape(num_experts=_get(config, "num_local_experts", int), top_k=_get(config, "num_experts_per_tok", int),
                      intermediate_size=_get(config, "intermediate_size", int), norm_topk_prob=True)


def _mixtral_layer(i: int) -> LayerWeightNames:
    p = f"model.layers.{i}."
    return LayerWeightNames(
        input_norm=p + "input_layernorm.weight", post_norm=p + "post_attention_layernorm.weight",
        q=p + "self_attn.q_proj.weight", k=p + "self_attn.k_proj.weight", v=p + "self_attn.v_proj.weight",
        o=p + "self_attn.o_proj.weight", router=p + "block_sparse_moe.gate.weight",
        q_bias=None, k_bias=None, v_bias=None, shared=None, shared_gate=None)


def _mixtral_expert(i: int, e: int) -> ExpertWeightNames:
    p = f"model.layers.{i}.block_sparse_moe.experts.{e}."
    return ExpertWeightNames(gate=p + "w1.weight", up=p + "w3.weight", down=p + "w2.weight")


def _qwen2_moe_model(config: dict[str, Any]) -> ModelShape:
    if config.get("use_sliding_window"):
        raise ExportError("config.json: use_sliding_window=true is not supported for qwen2_moe")
    num_layers = _get(config, "num_hidden_layers", int)
    step = _get(config, "decoder_sparse_step", int, 1)
    dense = sorted(set(_get(config, "mlp_only_layers", list, None) or [])
                   | {i for i in range(num_layers) if (i + 1) % max(step, 1)})
    if dense:
        raise ExportError(f"config.json: layers {dense[:8]} have a dense MLP (mlp_only_layers / decoder_sparse_step);"
                          " edgecoe exports models whose every layer is sparse")
    return _model_shape(config, sliding_window=None)


def _qwen2_moe_moe(config: dict[str, Any]) -> MoeShape:
    shared = _get(config, "shared_expert_intermediate_size", int, 0)
    return _moe_shape(num_experts=_get(config, "num_experts", int), top_k=_get(config, "num_experts_per_tok", int),
                      intermediate_size=_get(config, "moe_intermediate_size", int),
                      norm_topk_prob=_get(config, "norm_topk_prob", bool, False),
                      num_shared_experts=1 if shared else 0, shared_intermediate_size=shared)


def _qwen2_moe_layer(i: int) -> LayerWeightNames:
    p = f"model.layers.{i}."
    attn = p + "self_attn."
    shared = p + "mlp.shared_expert."
    return LayerWeightNames(
        input_norm=p + "input_layernorm.weight", post_norm=p + "post_attention_layernorm.weight",
        q=attn + "q_proj.weight", k=attn + "k_proj.weight", v=attn + "v_proj.weight", o=attn + "o_proj.weight",
        router=p + "mlp.gate.weight", q_bias=attn + "q_proj.bias", k_bias=attn + "k_proj.bias",
        v_bias=attn + "v_proj.bias",
        shared=ExpertWeightNames(gate=shared + "gate_proj.weight", up=shared + "up_proj.weight",
                                 down=shared + "down_proj.weight"),
        shared_gate=p + "mlp.shared_expert_gate.weight")


def _qwen2_moe_expert(i: int, e: int) -> ExpertWeightNames:
    p = f"model.layers.{i}.mlp.experts.{e}."
    return ExpertWeightNames(gate=p + "gate_proj.weight", up=p + "up_proj.weight", down=p + "down_proj.weight")


ARCHITECTURES: dict[str, Architecture] = {  # config.model_type -> how to read it
    "mixtral": Architecture("mixtral", _mixtral_model, _mixtral_moe, _mixtral_layer, _mixtral_expert),
    "qwen2_moe": Architecture("qwen2_moe", _qwen2_moe_model, _qwen2_moe_moe, _qwen2_moe_layer, _qwen2_moe_expert),
}


def architecture_of(config: dict[str, Any]) -> Architecture:
    """The architecture of a checkpoint's config.

    Raises:
        ExportError: an unsupported ``model_type`` (the message lists the supported ones).
    """
    model_type = config.get("model_type")
    arch = ARCHITECTURES.get(model_type) if isinstance(model_type, str) else None
    if arch is None:
        raise ExportError(f"config.json: model_type={model_type!r} is not an MoE architecture edgecoe exports; "
                          f"supported: {', '.join(ARCHITECTURES)}")
    return arch
