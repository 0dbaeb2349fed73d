"""The offloading runtimes users run today, driven as a user would, for side-by-side benchmarks.

- ``accelerate``: transformers with Hugging Face accelerate's disk offload
  (``device_map="auto"``, ``max_memory``, ``offload_folder``): what does not fit the
  memory given is written to the offload folder and read back by hooks per forward.
- ``llama.cpp`` (through ``llama-cpp-python``): the same checkpoint converted to GGUF
  (:func:`write_gguf`, float32, nothing quantized), memory-mapped, so the OS pages
  experts in on demand and out under memory pressure.

Both read the prompts' token ids from the package's tokenizer (the same ids
edgecoe runs) and generate greedily; each returns per-prompt figures under the
keys the MoE bench uses. Optional dependencies: ``pip install 'edgecoe[peers]'``
(llama-cpp-python builds from source).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecoe.errors import InvalidInputError
from edgecoe.moe.architectures import architecture_of
from edgecoe.moe.checkpoint import SafetensorsCheckpoint, read_config, read_json_object

PEERS = ("accelerate", "llama.cpp")


def _permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Q/K rows reordered from Hugging Face's rotate-half rotary layout to llama.cpp's interleaved pairs.

    Within each head, HF rotates dimension i with i + d/2; llama.cpp's LLaMA graph rotates 2i with 2i+1.
    """
    rows = weight.shape[0]
    out: np.ndarray = weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    return out


def write_gguf(checkpoint: Path, out: Path) -> Path:
    """Convert a Mixtral checkpoint (safetensors + config + tokenizer.json) to a float32 GGUF llama.cpp runs.

    Raises:
        InvalidInputError: not a Mixtral checkpoint (llama.cpp runs it as LLaMA with experts),
            or its tokenizer is not byte-level BPE.
    """
    import gguf

    config = read_config(checkpoint)
    arch = architecture_of(config)
    if arch.name != "mixtral":
        raise InvalidInputError(f"{checkpoint}: GGUF conversion covers mixtral checkpoints, not {arch.name}")
    shape, moe = arch.model_shape(config), arch.moe_shape(config)
    tokenizer = read_json_object(checkpoint / "tokenizer.json", max_bytes=64 << 20)
    model = tokenizer.get("model", {})
    if model.get("type") != "BPE":
        raise InvalidInputError(f"{checkpoint / 'tokenizer.json'}: model.type={model.get('type')!r}; GGUF conversion "
                                "covers byte-level BPE tokenizers")
    weights = SafetensorsCheckpoint(checkpoint)
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(checkpoint.name)
    writer.add_context_length(shape.max_position_embeddings)
    writer.add_embedding_length(shape.hidden_size)
    writer.add_block_count(shape.num_layers)
    writer.add_feed_forward_length(moe.intermediate_size)
    writer.add_head_count(shape.num_heads)
    writer.add_head_count_kv(shape.num_kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    writer.add_expert_count(moe.num_experts)
    writer.add_expert_used_count(moe.top_k)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab: dict[str, int] = model["vocab"]
    added = {int(t["id"]): str(t["content"]) for t in tokenizer.get("added_tokens", [])}
    tokens = [""] * shape.vocab_size
    for text, index in {**vocab, **{v: k for k, v in added.items()}}.items():
        if 0 <= int(index) < shape.vocab_size:
            tokens[int(index)] = text
    types = [gguf.TokenType.CONTROL if i in added else gguf.TokenType.NORMAL for i in range(shape.vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if shape.bos_token_id is not None:
        writer.add_bos_token_id(shape.bos_token_id)
    if shape.eos_token_ids:
        writer.add_eos_token_id(shape.eos_token_ids[0])
    if shape.pad_token_id is not None:
        writer.add_pad_token_id(shape.pad_token_id)
    writer.add_add_bos_token(False)

    def f32(name: str) -> np.ndarray:
        return np.ascontiguousarray(weights.get(name), dtype=np.float32)

    writer.add_tensor("token_embd.weight", f32(arch.embed))
    writer.add_tensor("output_norm.weight", f32(arch.final_norm))
    writer.add_tensor("output.weight", f32(arch.lm_head))
    for i in range(shape.num_layers):
        names, b = arch.layer(i), f"blk.{i}."
        writer.add_tensor(b + "attn_norm.weight", f32(names.input_norm))
        writer.add_tensor(b + "attn_q.weight", _permute_rotary(f32(names.q), shape.num_heads))
        writer.add_tensor(b + "attn_k.weight", _permute_rotary(f32(names.k), shape.num_kv_heads))
        writer.add_tensor(b + "attn_v.weight", f32(names.v))
        writer.add_tensor(b + "attn_output.weight", f32(names.o))
        writer.add_tensor(b + "ffn_norm.weight", f32(names.post_norm))
        writer.add_tensor(b + "ffn_gate_inp.weight", f32(names.router))
        experts = [arch.expert(i, e) for e in range(moe.num_experts)]
        writer.add_tensor(b + "ffn_gate_exps.weight", np.stack([f32(e.gate) for e in experts]))
        writer.add_tensor(b + "ffn_up_exps.weight", np.stack([f32(e.up) for e in experts]))
        writer.add_tensor(b + "ffn_down_exps.weight", np.stack([f32(e.down) for e in experts]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


class _FirstTokenClock:
    """A transformers streamer noting when the first generated token arrives (the prompt comes first)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_token_at: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2 and self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def run_accelerate(checkpoint: Path, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, memory_bytes: int,
                   offload_folder: Path, threads: int = 0) -> list[dict[str, Any]]:
    """Greedy generation with transformers + accelerate disk offload within ``memory_bytes`` of weights in memory.

    Returns per-prompt ``ttft_ms``, ``decode_tokens_per_s``, ``e2e_ms``, ``tokens``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)
    from accelerate import infer_auto_device_map, init_empty_weights
    from transformers import AutoConfig

    # The device map accelerate's "auto" computes, computed here first: where not even one decoder layer
    # fits beside accelerate's reserve, it maps everything to disk, which transformers 4.57 cannot load
    # ("device disk is invalid"); then the small non-layer parts go to memory, as a user would set them.
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint))
    device_map = infer_auto_device_map(empty, max_memory={"cpu": memory_bytes}, dtype=torch.float32,
                                       no_split_module_classes=list(empty._no_split_modules or []))
    if all(place == "disk" for place in device_map.values()):
        device_map = {name: "disk" if ".layers." in f".{name}." else "cpu" for name in device_map}
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.float32, device_map=device_map, offload_folder=str(offload_folder),
        offload_state_dict=True)
    model.eval()
    out: list[dict[str, Any]] = []
    for ids in prompts:
        clock = _FirstTokenClock()
        tokens = torch.tensor([list(ids)], dtype=torch.long)
        started = time.perf_counter()
        with torch.no_grad():
            generated: Any = model.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=max_new_tokens,
                                       min_new_tokens=max_new_tokens, do_sample=False,
                                       streamer=clock,  # type: ignore[arg-type]  # generate calls put and end only
                                       pad_token_id=model.config.pad_token_id or 0)
        ended = time.perf_counter()
        count = int(generated.shape[1] - tokens.shape[1])
        first = clock.first_token_at or ended
        out.append({"ttft_ms": (first - started) * 1e3, "e2e_ms": (ended - started) * 1e3, "tokens": count,
                    "decode_tokens_per_s": (count - 1) / (ended - first) if count > 1 and ended > first else 0.0,
                    "token_ids": generated[0, tokens.shape[1]:].tolist()})
    return out


def run_llama_cpp(gguf_path: Path, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                  threads: int = 0) -> list[dict[str, Any]]:
    """Greedy generation with llama.cpp on a memory-mapped GGUF; per-prompt figures as :func:`run_accelerate`."""
    import os

    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=512, n_batch=512, use_mmap=True, use_mlock=False,
                n_threads=threads or os.cpu_count() or 1, verbose=False)
    out: list[dict[str, Any]] = []
    for ids in prompts:
        llm.reset()
        started = time.perf_counter()
        first = None
        generated: list[int] = []
        for token in llm.generate(list(ids), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                  reset=True):
            if first is None:
                first = time.perf_counter()
            generated.append(int(token))
            if len(generated) >= max_new_tokens:
                break
        ended = time.perf_counter()
        first = first or ended
        count = len(generated)
        out.append({"ttft_ms": (first - started) * 1e3, "e2e_ms": (ended - started) * 1e3, "tokens": count,
                    "decode_tokens_per_s": (count - 1) / (ended - first) if count > 1 and ended > first else 0.0,
                    "token_ids": generated})
    return out
