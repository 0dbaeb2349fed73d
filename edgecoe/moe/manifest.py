"""The MoE package manifest (``kind: moe``): schema and JSON form.

An MoE package is a directory::

    PKG/
      edgecoe.json                 this manifest
      tokenizer/tokenizer.json     the tokenizer (Hugging Face ``tokenizers`` format) and its config files
      dense/embed.bin              token embeddings, raw little-endian
      dense/layer_000.onnx         per layer: norms, attention (KV cache in and out), router logits
                                   and, where the architecture has them, the shared experts
      dense/head.onnx              final norm and LM head
      experts/L000/E000.bin        per (layer, expert): the FFN weights, raw, laid out per ``expert_format``

The dense parts stay resident; expert weight files are what the expert cache
loads into budgeted buffers. The expert FFN graph is not in the package: the
runtime builds it from ``expert_format`` (so a package carries no code and no
graph for the hot path beyond the dense ONNX models, which are scanned like
any CoE expert's).
"""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import Field, model_validator

from edgecoe.package.manifest import FORMAT, FORMAT_VERSION, FileRecord
from edgecoe.schema import SAFE_NAME_PATTERN, StrictModel

ARCHITECTURES = ("mixtral", "qwen2_moe")
"""Hugging Face MoE architectures edgecoe exports (``config.model_type``)."""

WeightDtype = Literal["float32", "int8", "int4"]


class ModelShape(StrictModel):
    """The transformer's dimensions and numerics, as the checkpoint's config gave them."""

    vocab_size: int = Field(ge=1, le=1 << 22)
    hidden_size: int = Field(ge=1, le=1 << 16)
    num_layers: int = Field(ge=1, le=999)
    num_heads: int = Field(ge=1, le=1024)
    num_kv_heads: int = Field(ge=1, le=1024)
    head_dim: int = Field(ge=2, le=4096)
    rope_theta: float = Field(gt=0)
    rms_norm_eps: float = Field(gt=0, lt=1)
    max_position_embeddings: int = Field(ge=1, le=1 << 24)
    sliding_window: int | None = Field(default=None, ge=1)
    bos_token_id: int | None = Field(default=None, ge=0)
    eos_token_ids: list[int] = Field(default_factory=list, description="generation stops at any of these")
    pad_token_id: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelShape:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even (rotary embedding halves)")
        bad = [t for t in [*self.eos_token_ids, self.bos_token_id, self.pad_token_id]
               if t is not None and t >= self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad} are not below vocab_size={self.vocab_size}")
        return self


class MoeShape(StrictModel):
    """The routed experts: how many per layer, how many each token uses, and their size."""

    num_experts: int = Field(ge=1, le=999)
    top_k: int = Field(ge=1)
    intermediate_size: int = Field(ge=1, le=1 << 20)
    norm_topk_prob: bool = Field(description="renormalize the top-k routing weights to sum to one")
    num_shared_experts: int = Field(default=0, ge=0, description="always-on experts, part of each dense layer")
    shared_intermediate_size: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _top_k_fits(self) -> MoeShape:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} > num_experts={self.num_experts}")
        return self


class TensorLayout(StrictModel):
    """One tensor inside an expert weight file."""

    name: Literal["w13", "w2", "w13_scales", "w2_scales"]
    dtype: Literal["float32", "uint8"]
    shape: list[int] = Field(min_length=1, max_length=4)
    offset: int = Field(ge=0)

    @property
    def num_bytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * (4 if self.dtype == "float32" else 1)


class ExpertFormat(StrictModel):
    """How every expert weight file is laid out (all experts of a package share it).

    ``w13`` is the gate and up projections stacked (``[2 * intermediate, hidden]``
    in float32, rows are outputs); ``w2`` the down projection. Quantized formats
    hold ONNX Runtime ``MatMulNBits`` blocks (``[out, blocks, block_bytes]``) and
    float32 scales per block.
    """

    dtype: WeightDtype
    block_size: int | None = Field(default=None, ge=16, le=4096)
    tensors: list[TensorLayout] = Field(min_length=2)

    @property
    def file_bytes(self) -> int:
        return max(t.offset + t.num_bytes for t in self.tensors)

    @model_validator(mode="after")
    def _consistent(self) -> ExpertFormat:
        quantized = self.dtype != "float32"
        if quantized and (self.block_size is None or self.block_size & (self.block_size - 1)):
            raise ValueError(f"{self.dtype} experts need a power-of-two block_size, got {self.block_size}")
        names = sorted(t.name for t in self.tensors)
        want = sorted(["w13", "w2", "w13_scales", "w2_scales"] if quantized else ["w13", "w2"])
        if names != want:
            raise ValueError(f"{self.dtype} experts hold tensors {want}, the manifest lists {names}")
        spans = sorted((t.offset, t.offset + t.num_bytes, t.name) for t in self.tensors)
        for (_, end, first), (start, _, second) in itertools.pairwise(spans):
            if start < end:
                raise ValueError(f"tensors {first} and {second} overlap in the expert file")
        return self


class Quantization(StrictModel):
    """What weight-only quantization did to the model, measured at export."""

    bits: Literal[4, 8]
    block_size: int
    symmetric: bool
    held_out_tokens: int = Field(ge=0, description="tokens of held-out text the perplexities were measured on")
    perplexity_float32: float | None = None
    perplexity: float | None = None


class PredictorRecord(StrictModel):
    """A trained next-layer expert predictor shipped in the package (plain float32 arrays).

    ``linear``: per layer l (0 .. num_layers - 2), weights ``[features, num_experts]`` over the
    features [routed-expert input (hidden), layer l's choices (multi-hot), layer l+1's
    previous-token choices (multi-hot), 1]; layer l+1's scores are features @ weights.
    """

    kind: Literal["linear"]
    file: FileRecord
    shape: list[int] = Field(min_length=3, max_length=3)
    trained_on: str = ""
    recall: dict[str, float] = Field(default_factory=dict, description="top-n -> recall on held-out prompts")
    precision: dict[str, float] = Field(default_factory=dict)
    activations: FileRecord | None = Field(default=None, description=(
        "traced expert activation matrices, float32 [requests, num_layers, num_experts], each layer's row "
        "summing to 1 (the moe-infinity schedule matches requests against them)"))
    num_activation_requests: int = Field(default=0, ge=0, le=1_000_000)


class LayerRecord(StrictModel):
    """One decoder layer: its dense ONNX model and one weight file per routed expert."""

    dense: FileRecord
    experts: list[FileRecord] = Field(min_length=1)


class TensorFile(StrictModel):
    """A raw tensor in a file of its own (the embedding table)."""

    file: FileRecord
    dtype: Literal["float32"]
    shape: list[int] = Field(min_length=2, max_length=2)


class VariantRecord(StrictModel):
    """One fine-tuned variant of a consolidated package: its own non-expert parts, and which stored
    expert each of its (layer, slot)s uses (an index into ``layers[layer].experts``).

    Files may be shared between variants (byte-identical parts are stored once). The first
    variant's parts are the package's top-level ``embed``, ``head`` and ``layers[l].dense``, and its
    slot ``e`` maps to stored expert ``e``.
    """

    name: str = Field(pattern=SAFE_NAME_PATTERN)
    domain: str = Field(default="", max_length=200, description="what it was fine-tuned on (informational)")
    embed: TensorFile
    head: FileRecord
    dense: list[FileRecord] = Field(min_length=1)
    experts: list[list[int]] = Field(min_length=1, description="[layer][slot] -> stored expert index")
    quality: dict[str, float] = Field(default_factory=dict, description=(
        "measured at consolidation: perplexity of the unmerged variant and of this package's, on held-out "
        "text of its domain, and greedy-token agreement"))


class Consolidation(StrictModel):
    """How a variant package's experts were shared (:mod:`edgecoe.moe.consolidate`)."""

    metric: Literal["functional"]
    threshold: float = Field(ge=0)
    memory_target: float | None = Field(default=None, gt=0, le=1)
    separate_bytes: int = Field(ge=0, description="every variant as a package of its own, together")
    consolidated_bytes: int = Field(ge=0)
    stored_experts: int = Field(ge=0)
    shared: dict[str, float] = Field(default_factory=dict, description="variant -> share of its slots it shares")
    calibration_tokens: int = Field(ge=0)


class MoeManifest(StrictModel):
    """The whole ``edgecoe.json`` of an MoE package."""

    format: Literal["edgecoe.package"] = FORMAT
    version: Literal[1] = FORMAT_VERSION
    kind: Literal["moe"] = "moe"
    name: str = Field(pattern=SAFE_NAME_PATTERN)
    description: str = ""
    created_by: str = ""
    architecture: Literal["mixtral", "qwen2_moe"]
    model: ModelShape
    moe: MoeShape
    tokenizer: list[FileRecord] = Field(min_length=1, description="tokenizer/tokenizer.json first")
    embed: TensorFile
    layers: list[LayerRecord] = Field(min_length=1)
    head: FileRecord
    expert_format: ExpertFormat
    quantization: Quantization | None = None
    predictor: PredictorRecord | None = None
    source: str = Field(default="", description="where the checkpoint came from (informational)")
    variants: list[VariantRecord] = Field(default_factory=list, max_length=64, description=(
        "fine-tuned variants sharing experts (empty: one model)"))
    consolidation: Consolidation | None = None

    @model_validator(mode="after")
    def _counts_agree(self) -> MoeManifest:
        if len(self.layers) != self.model.num_layers:
            raise ValueError(f"{len(self.layers)} layers listed, model.num_layers={self.model.num_layers}")
        if self.variants:
            self._check_variants()
        else:
            wrong = [i for i, layer in enumerate(self.layers) if len(layer.experts) != self.moe.num_experts]
            if wrong:
                raise ValueError(f"layers {wrong} do not list moe.num_experts={self.moe.num_experts} expert files")
        if self.embed.shape != [self.model.vocab_size, self.model.hidden_size]:
            raise ValueError(f"embed.shape={self.embed.shape} is not [vocab_size, hidden_size]="
                             f"{[self.model.vocab_size, self.model.hidden_size]}")
        size = self.expert_format.file_bytes
        odd = [f.path for layer in self.layers for f in layer.experts if f.bytes != size]
        if odd:
            raise ValueError(f"expert files {odd[:3]} are not expert_format's {size} bytes")
        if (self.quantization is None) != (self.expert_format.dtype == "float32"):
            raise ValueError(f"quantization record and expert_format.dtype={self.expert_format.dtype} disagree")
        if self.predictor is not None:
            want = [self.model.num_layers, self.model.hidden_size + 2 * self.moe.num_experts + 1, self.moe.num_experts]
            if self.predictor.shape != want or self.predictor.file.bytes != 4 * want[0] * want[1] * want[2]:
                raise ValueError(f"predictor.shape={self.predictor.shape} ({self.predictor.file.bytes} bytes) is not "
                                 f"{want} float32")
            activations = self.predictor.activations
            rows = self.predictor.num_activation_requests
            want_bytes = 4 * rows * self.model.num_layers * self.moe.num_experts
            if (activations is None) != (rows == 0) or (activations is not None and activations.bytes != want_bytes):
                raise ValueError(f"predictor.activations ({activations.bytes if activations else 0} bytes) is not "
                                 f"num_activation_requests={rows} x {self.model.num_layers} layers x "
                                 f"{self.moe.num_experts} experts float32")
        return self

    def _check_variants(self) -> None:
        first = self.variants[0]
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names repeat: {names}")
        if (first.embed != self.embed or first.head != self.head
                or [f.path for f in first.dense] != [layer.dense.path for layer in self.layers]):
            raise ValueError(f"variant {first.name!r} (the first) must use the package's top-level embed, head "
                             "and dense layers")
        identity = [list(range(self.moe.num_experts))] * len(self.layers)
        if first.experts != identity:
            raise ValueError(f"variant {first.name!r} (the first) must map slot e to stored expert e")
        short = [i for i, layer in enumerate(self.layers) if len(layer.experts) < self.moe.num_experts]
        if short:
            raise ValueError(f"layers {short} store fewer than moe.num_experts={self.moe.num_experts} experts")
        used: set[tuple[int, int]] = set()
        for v in self.variants:
            if len(v.dense) != len(self.layers) or len(v.experts) != len(self.layers):
                raise ValueError(f"variant {v.name!r} lists {len(v.dense)} dense parts and {len(v.experts)} expert "
                                 f"maps for {len(self.layers)} layers")
            if v.embed.shape != self.embed.shape:
                raise ValueError(f"variant {v.name!r}: embed.shape={v.embed.shape}, the package's is {self.embed.shape}")
            for i, row in enumerate(v.experts):
                stored = len(self.layers[i].experts)
                if len(row) != self.moe.num_experts or any(not 0 <= e < stored for e in row):
                    raise ValueError(f"variant {v.name!r} layer {i}: expert map {row} must give each of "
                                     f"{self.moe.num_experts} slots a stored expert below {stored}")
                used.update((i, e) for e in row)
        unused = [expert_name(i, e) for i, layer in enumerate(self.layers) for e in range(len(layer.experts))
                  if (i, e) not in used]
        if unused:
            raise ValueError(f"stored experts {unused[:4]} belong to no variant")

    def variant(self, name: str | None) -> VariantRecord | None:
        """The variant called ``name`` (None: the first); None for a package without variants.

        Raises:
            KeyError: no such variant (the message lists them).
        """
        if not self.variants:
            if name is not None:
                raise KeyError(f"package {self.name!r} has no variants; asked for {name!r}")
            return None
        if name is None:
            return self.variants[0]
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"package {self.name!r} has no variant {name!r}; it has {', '.join(x.name for x in self.variants)}")

    def expert_names(self) -> list[str]:
        """Every stored routed expert's cache name, ``L{layer}.E{index}``, layer by layer."""
        return [expert_name(layer, e) for layer, record in enumerate(self.layers) for e in range(len(record.experts))]

    def files(self) -> list[FileRecord]:
        """Every file of the package, the manifest excepted (each once)."""
        records = [*self.tokenizer, self.embed.file, self.head,
                   *(f for layer in self.layers for f in (layer.dense, *layer.experts)),
                   *([self.predictor.file] if self.predictor is not None else []),
                   *([self.predictor.activations] if self.predictor is not None and self.predictor.activations else []),
                   *(f for v in self.variants for f in (v.embed.file, v.head, *v.dense))]
        seen: set[str] = set()
        out = []
        for record in records:
            if record.path not in seen:
                seen.add(record.path)
                out.append(record)
        return out

    @property
    def expert_bytes(self) -> int:
        """Bytes of one routed expert's weights (every expert has the same)."""
        return self.expert_format.file_bytes

    @property
    def total_expert_bytes(self) -> int:
        """Bytes of every stored routed expert."""
        return self.expert_bytes * sum(len(layer.experts) for layer in self.layers)

    @property
    def non_expert_bytes(self) -> int:
        """Bytes of every other file: tokenizer, embeddings, dense layers, head, predictor, variants' parts."""
        return sum(f.bytes for f in self.files()) - self.total_expert_bytes

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, so identical packages have identical bytes."""
        import json

        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def expert_name(layer: int, expert: int) -> str:
    """The cache name of routed expert ``expert`` of layer ``layer``."""
    return f"L{layer:03d}.E{expert:03d}"


class SlotNames:
    """The cache name of (layer, slot) under one variant's expert map (the identity without variants).

    Mutable on purpose: the model and its schedule share one, and a variant switch changes the
    map in place, so every later name is the new variant's.
    """

    def __init__(self, maps: list[list[int]] | None = None) -> None:
        self.maps = maps

    def __call__(self, layer: int, slot: int) -> str:
        return expert_name(layer, self.maps[layer][slot] if self.maps is not None else slot)


def parse_expert_name(name: str) -> tuple[int, int]:
    """(layer, expert) of a cache name made by :func:`expert_name`.

    Raises:
        ValueError: not such a name.
    """
    if len(name) != 9 or name[0] != "L" or name[4:6] != ".E" or not (name[1:4] + name[6:]).isdigit():
        raise ValueError(f"{name!r} is not an expert name like 'L003.E007'")
    return int(name[1:4]), int(name[6:])
