"""``edgecoe inspect`` for MoE packages: shapes, expert sizes, quantization, files."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgecoe.moe.package import MoePackage
from edgecoe.schema import printable


def moe_summary(pkg: MoePackage) -> dict[str, object]:
    """The facts ``inspect`` shows, as JSON-ready data."""
    m = pkg.manifest
    quant = m.quantization
    return {
        "name": m.name,
        "kind": "moe",
        "path": str(pkg.root),
        "architecture": m.architecture,
        "model": m.model.model_dump(),
        "moe": m.moe.model_dump(),
        "expert_dtype": m.expert_format.dtype,
        "expert_block_size": m.expert_format.block_size,
        "expert_bytes": m.expert_bytes,
        "num_experts": len(m.expert_names()),
        "total_expert_bytes": m.total_expert_bytes,
        "dense_bytes": sum(f.bytes for f in m.files()) - m.total_expert_bytes - sum(f.bytes for f in m.tokenizer)
        - sum(f.bytes for f in ([m.predictor.file, *([m.predictor.activations] if m.predictor.activations else [])]
                                if m.predictor is not None else [])),
        "total_bytes": sum(f.bytes for f in m.files()),
        "quantization": quant.model_dump() if quant is not None else None,
        "predictor": m.predictor.model_dump() if m.predictor is not None else None,
        "variants": [{"name": v.name, "domain": v.domain, "quality": v.quality} for v in m.variants],
        "consolidation": m.consolidation.model_dump() if m.consolidation is not None else None,
        "tokenizer_files": [f.path for f in m.tokenizer],
        "source": m.source,
    }


def render_moe_summary(pkg: MoePackage, console: Console) -> None:
    m = pkg.manifest
    s = moe_summary(pkg)

    def shown(text: object) -> str:
        return escape(printable(str(text)))

    console.print(f"[bold]{shown(m.name)}[/bold]  {shown(pkg.root)}  (MoE, {shown(m.architecture)})")
    if m.description:
        console.print(shown(m.description))
    shared = (f", {m.moe.num_shared_experts} shared expert(s) of FFN {m.moe.shared_intermediate_size} in each "
              "dense part") if m.moe.num_shared_experts else ""
    console.print(f"{m.model.num_layers} layers x {m.moe.num_experts} routed experts, top-{m.moe.top_k}"
                  f"{' (weights renormalized)' if m.moe.norm_topk_prob else ''}{shared}; hidden "
                  f"{m.model.hidden_size}, expert FFN {m.moe.intermediate_size}, {m.model.num_heads} heads "
                  f"({m.model.num_kv_heads} KV), vocabulary {m.model.vocab_size}")
    table = Table(title="Bytes")
    for col in ("part", "count", "MB each", "MB total"):
        table.add_column(col, justify="left" if col == "part" else "right")
    experts = len(m.expert_names())
    table.add_row(f"routed experts ({m.expert_format.dtype}"
                  f"{f', block {m.expert_format.block_size}' if m.expert_format.block_size else ''})",
                  str(experts), f"{m.expert_bytes / 1e6:.2f}", f"{m.total_expert_bytes / 1e6:.1f}")
    dense = int(s["dense_bytes"])  # type: ignore[call-overload]
    table.add_row("dense parts (embeddings, attention, router, head)", str(len(m.layers) + 2), "",
                  f"{dense / 1e6:.1f}")
    console.print(table)
    quant = m.quantization
    if quant is not None and quant.perplexity is not None and quant.perplexity_float32 is not None:
        console.print(f"int{quant.bits} experts: perplexity {quant.perplexity:.3f} vs {quant.perplexity_float32:.3f} "
                      f"in float32 ({quant.perplexity / quant.perplexity_float32 - 1:+.2%}) on "
                      f"{quant.held_out_tokens} held-out tokens")
    if m.predictor is not None:
        recall = ", ".join(f"top-{n} {r:.1%}" for n, r in m.predictor.recall.items())
        console.print(f"next-layer predictor: {m.predictor.kind}, trained on {shown(m.predictor.trained_on)}; "
                      f"held-out recall {recall}")
    if m.variants and m.consolidation is not None:
        c = m.consolidation
        console.print(f"{len(m.variants)} fine-tuned variants sharing experts: {c.stored_experts} stored for "
                      f"{len(m.variants) * m.moe.num_experts * len(m.layers)} slots (threshold {c.threshold:.3g}), "
                      f"{c.consolidated_bytes / 1e6:.1f} MB = {c.consolidated_bytes / max(c.separate_bytes, 1):.0%} of "
                      "separate copies")
        for v in m.variants:
            share = c.shared.get(v.name)
            ppl = v.quality.get("perplexity_consolidated"), v.quality.get("perplexity_unmerged")
            quality = f"; perplexity {ppl[0]:.2f} (unmerged {ppl[1]:.2f})" if None not in ppl else ""
            console.print(f"  {shown(v.name)} ({shown(v.domain) or 'domain not recorded'}): shares "
                          f"{'-' if share is None else f'{share:.0%}'} of its experts{quality}")
    eos = ", ".join(str(t) for t in m.model.eos_token_ids) or "none"
    console.print(f"tokenizer: {shown(', '.join(f.path for f in m.tokenizer))}; stop tokens {eos}")
