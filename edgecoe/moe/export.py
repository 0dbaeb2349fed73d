"""``edgecoe export CHECKPOINT``: a Hugging Face MoE checkpoint -> an MoE package.

Reads ``config.json`` and the safetensors weights (never pickles), builds each
layer's dense ONNX model and the LM head, writes every routed expert's FFN
weights to a file of its own (float32, or int8/int4 ``MatMulNBits`` blocks
from ONNX Runtime's quantizer), copies the tokenizer files, and commits the
package atomically after it loads as valid.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

import edgecoe
from edgecoe.errors import ExportError
from edgecoe.moe.architectures import Architecture, architecture_of
from edgecoe.moe.checkpoint import SafetensorsCheckpoint, read_config, read_json_object
from edgecoe.moe.graphs import dense_layer_graph, head_graph
from edgecoe.moe.manifest import (
    ExpertFormat,
    LayerRecord,
    ModelShape,
    MoeManifest,
    MoeShape,
    Quantization,
    TensorFile,
    TensorLayout,
    WeightDtype,
)
from edgecoe.moe.package import load_moe_package
from edgecoe.package.manifest import FileRecord
from edgecoe.package.writer import PackageWriter
from edgecoe.schema import SAFE_NAME_PATTERN

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
"""Copied when present; tokenizer.json is required (the runtime tokenizes with the ``tokenizers`` library)."""

Progress = Callable[[str, int, int], None]
"""(what, done, total): called as export goes."""


@dataclass(frozen=True, slots=True)
class MoeExportReport:
    package: Path
    architecture: str
    num_layers: int
    num_experts: int
    expert_bytes: int
    total_bytes: int
    quantization: Quantization | None


def is_hf_checkpoint(path: Path) -> bool:
    """A directory holding a Hugging Face ``config.json`` (rather than an export spec file)."""
    return path.is_dir() and (path / "config.json").is_file()


def export_moe(checkpoint: str | Path, dest: str | Path, *, name: str | None = None, overwrite: bool = False,
               dtype: WeightDtype = "float32", block_size: int = 32, eval_text: str | None = None,
               progress: Progress | None = None) -> MoeExportReport:
    """Export the checkpoint directory ``checkpoint`` to an MoE package at ``dest``.

    Args:
        name: the package name (default: the destination directory's name).
        dtype: expert weights as float32, or quantized to int8 / int4 (weight-only, symmetric,
            ``block_size`` weights per scale).
        eval_text: held-out text to measure perplexity on when quantizing (float32 and quantized
            side by side); default: text shipped with Python's documentation.

    Raises:
        ExportError: the checkpoint is unsupported or malformed (naming the file and field).
        PackageError: the finished package does not validate.
    """
    root = Path(checkpoint)
    dest = Path(dest)
    name = name or dest.name
    if not re.match(SAFE_NAME_PATTERN, name):
        raise ExportError(f"package name {name!r} must match {SAFE_NAME_PATTERN}")
    if dtype not in ("float32", "int8", "int4"):
        raise ExportError(f"expert dtype {dtype!r}: expected float32, int8 or int4")
    config = read_config(root)
    arch = architecture_of(config)
    shape = _with_generation_eos(arch.model_shape(config), root)
    moe = arch.moe_shape(config)
    if not (root / "tokenizer.json").is_file():
        raise ExportError(f"{root}: no tokenizer.json (the fast-tokenizer file); save the tokenizer with "
                          "AutoTokenizer(...).save_pretrained")
    ckpt = SafetensorsCheckpoint(root)
    report = progress or (lambda what, done, total: None)
    total_steps = shape.num_layers + 2
    with PackageWriter(dest, overwrite=overwrite) as writer:
        tokenizer = [writer.write_bytes(f"tokenizer/{f}", (root / f).read_bytes())
                     for f in TOKENIZER_FILES if (root / f).is_file() and not (root / f).is_symlink()]
        embed = ckpt.get(arch.embed, (shape.vocab_size, shape.hidden_size))
        embed_file = writer.write_bytes("dense/embed.bin", embed.astype("<f4").tobytes())
        lm_head = ckpt.get(arch.lm_head, (shape.vocab_size, shape.hidden_size)) if arch.lm_head in ckpt else embed
        head, _ = writer.write_model("dense/head.onnx", head_graph(
            shape, final_norm=ckpt.get(arch.final_norm, (shape.hidden_size,)), lm_head=lm_head), external=False)
        del embed, lm_head
        report("head", 1, total_steps)
        fmt = float32_format(shape.hidden_size, moe.intermediate_size)
        layers = []
        for i in range(shape.num_layers):
            dense, _ = writer.write_model(f"dense/layer_{i:03d}.onnx", _dense(ckpt, arch, shape, moe, i),
                                          external=False)
            experts = [writer.write_bytes(f"experts/L{i:03d}/E{e:03d}.bin", _expert_bytes(ckpt, arch, moe, shape, i, e))
                       for e in range(moe.num_experts)]
            layers.append(LayerRecord(dense=dense, experts=experts))
            report(f"layer {i}", i + 2, total_steps)
        manifest = MoeManifest(
            name=name, description=f"{arch.name} MoE exported from {root.name}",
            created_by=f"edgecoe {edgecoe.__version__} export", architecture=arch.name,  # type: ignore[arg-type]
            model=shape, moe=moe, tokenizer=_tokenizer_first(tokenizer),
            embed=TensorFile(file=embed_file, dtype="float32", shape=[shape.vocab_size, shape.hidden_size]),
            layers=layers, head=head, expert_format=fmt, source=str(root.name))
        quantization = None
        if dtype != "float32":
            from edgecoe.moe.quantize import quantize_package_experts

            manifest = quantize_package_experts(writer, manifest, bits=4 if dtype == "int4" else 8,
                                                block_size=block_size, eval_text=eval_text, progress=report)
            quantization = manifest.quantization
        report("verify", total_steps, total_steps)
        path = writer.commit(manifest, validate=lambda r: load_moe_package(r, verify="full"))
    return MoeExportReport(package=path, architecture=arch.name, num_layers=shape.num_layers,
                           num_experts=moe.num_experts, expert_bytes=manifest.expert_bytes,
                           total_bytes=sum(f.bytes for f in manifest.files()), quantization=quantization)


def float32_format(hidden: int, intermediate: int) -> ExpertFormat:
    """Float32 experts: ``w13`` (gate and up stacked, ``[2I, H]``) then ``w2`` (``[H, I]``)."""
    w13 = TensorLayout(name="w13", dtype="float32", shape=[2 * intermediate, hidden], offset=0)
    w2 = TensorLayout(name="w2", dtype="float32", shape=[hidden, intermediate], offset=w13.num_bytes)
    return ExpertFormat(dtype="float32", tensors=[w13, w2])


def _tokenizer_first(records: list[FileRecord]) -> list[FileRecord]:
    return sorted(records, key=lambda r: r.path != "tokenizer/tokenizer.json")


def _with_generation_eos(shape: ModelShape, root: Path) -> ModelShape:
    """Stop tokens from generation_config.json where it names them (it wins over config.json, as in transformers)."""
    path = root / "generation_config.json"
    if not path.is_file():
        return shape
    try:
        config = read_json_object(path)
    except ExportError:
        return shape
    eos = config.get("eos_token_id")
    ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < shape.vocab_size for i in ids):
        return shape
    return shape.model_copy(update={"eos_token_ids": list(ids)})


def _dense(ckpt: SafetensorsCheckpoint, arch: Architecture, shape: ModelShape, moe: MoeShape,
           i: int) -> onnx.ModelProto:
    names = arch.layer(i)
    h, d = shape.hidden_size, shape.head_dim
    q_rows, kv_rows = shape.num_heads * d, shape.num_kv_heads * d

    def bias(name: str | None, rows: int) -> np.ndarray | None:
        return ckpt.get(name, (rows,)) if name is not None and name in ckpt else None

    shared = None
    shared_gate = None
    if names.shared is not None and moe.num_shared_experts:
        si = moe.shared_intermediate_size
        shared = (ckpt.get(names.shared.gate, (si, h)), ckpt.get(names.shared.up, (si, h)),
                  ckpt.get(names.shared.down, (h, si)))
        shared_gate = ckpt.get(names.shared_gate, (1, h)) if names.shared_gate else None
    return dense_layer_graph(
        shape, index=i, input_norm=ckpt.get(names.input_norm, (h,)), post_norm=ckpt.get(names.post_norm, (h,)),
        q=ckpt.get(names.q, (q_rows, h)), k=ckpt.get(names.k, (kv_rows, h)), v=ckpt.get(names.v, (kv_rows, h)),
        o=ckpt.get(names.o, (h, q_rows)), router=ckpt.get(names.router, (moe.num_experts, h)),
        q_bias=bias(names.q_bias, q_rows), k_bias=bias(names.k_bias, kv_rows), v_bias=bias(names.v_bias, kv_rows),
        shared=shared, shared_gate=shared_gate)


def _expert_bytes(ckpt: SafetensorsCheckpoint, arch: Architecture, moe: MoeShape, shape: ModelShape,
                  i: int, e: int) -> bytes:
    names = arch.expert(i, e)
    h, inter = shape.hidden_size, moe.intermediate_size
    w13 = np.concatenate([ckpt.get(names.gate, (inter, h)), ckpt.get(names.up, (inter, h))])
    return w13.astype("<f4").tobytes() + ckpt.get(names.down, (h, inter)).astype("<f4").tobytes()
