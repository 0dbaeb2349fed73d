"""Tiny Hugging Face MoE checkpoints (random weights, a BPE tokenizer) for the MoE tests."""

from __future__ import annotations

from pathlib import Path

ARCHS = ("mixtral", "qwen2_moe")


def tiny_checkpoint(arch: str, dest: Path, *, seed: int = 0, vocab_size: int = 384) -> Path:
    """Save a 2-layer, 8-expert ``arch`` checkpoint with a BPE tokenizer trained on Python's docs."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM, PreTrainedTokenizerFast, Qwen2MoeConfig, Qwen2MoeForCausalLM

    from edgecoe.moe.demo import documentation_text, train_tokenizer

    train, _ = documentation_text()
    tokenizer = train_tokenizer(train[:40], vocab_size)
    common = {"vocab_size": tokenizer.get_vocab_size(), "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts_per_tok": 2,
              "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
              "tie_word_embeddings": False}
    torch.manual_seed(seed)
    if arch == "mixtral":
        model = MixtralForCausalLM(MixtralConfig(intermediate_size=96, num_local_experts=8, **common))
    else:
        model = Qwen2MoeForCausalLM(Qwen2MoeConfig(
            intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=64, num_experts=8,
            norm_topk_prob=False, use_sliding_window=False, **common))
    # larger weights than the default init, so routing and outputs are decisive rather than near-uniform
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(4.0)
    model.save_pretrained(dest, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>", model_input_names=["input_ids", "attention_mask"]).save_pretrained(dest)
    return dest


def prompts(count: int = 20) -> list[str]:
    """``count`` prompts from the held-out documentation text."""
    from edgecoe.moe.demo import held_out_prompts

    return held_out_prompts(count)
