"""Weight-only int8 / int4 experts: bytes per expert and perplexity change, from the export itself.

    python benchmarks/moe_quantize.py --checkpoint models/moe-tiny-hf --block-sizes 32,128 \\
        --json benchmarks/results/moe/quantize_moe_tiny.json

Exports the checkpoint once per (dtype, block size) into a temporary directory and keeps what export
measured: expert bytes against float32, and perplexity with float32 and quantized experts on the held-out
documentation topics (the demo never trains on them). Greedy tokens of 20 held-out prompts are compared
with the float32 package's, as a second view of how much quantization changes the output.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgecoe.moe.demo import documentation_text, held_out_prompts
from edgecoe.moe.export import export_moe
from edgecoe.moe.generate import Generator, SamplingParams
from edgecoe.moe.model import MoeModel
from edgecoe.moe.package import load_moe_package
from edgecoe.results import machine_info


def _greedy(package: Path, prompts: list[str]) -> list[list[int]]:
    model = MoeModel(load_moe_package(package))
    try:
        generator = Generator(model)
        return [generator.generate([p], SamplingParams(max_new_tokens=32, ignore_eos=True)).token_ids[0]
                for p in prompts]
    finally:
        model.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("models/moe-tiny-hf"))
    parser.add_argument("--block-sizes", default="32,128")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    prompts = held_out_prompts(20)
    eval_text = "\n".join(documentation_text()[1])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_moe(args.checkpoint, Path(tmp) / "fp32")
        reference = _greedy(fp32.package, prompts)
        for dtype in ("int8", "int4"):
            for block in (int(b) for b in args.block_sizes.split(",")):
                report = export_moe(args.checkpoint, Path(tmp) / f"{dtype}-{block}", dtype=dtype,  # type: ignore[arg-type]
                                    block_size=block, eval_text=eval_text)
                quant = report.quantization
                assert quant is not None and quant.perplexity is not None and quant.perplexity_float32 is not None
                tokens = _greedy(report.package, prompts)
                same = sum(a == b for a, b in zip(tokens, reference, strict=True))
                agree = sum(x == y for a, b in zip(tokens, reference, strict=True) for x, y in zip(a, b, strict=True))
                rows.append({"dtype": dtype, "block_size": block, "expert_bytes": report.expert_bytes,
                             "float32_expert_bytes": fp32.expert_bytes,
                             "bytes_vs_float32": report.expert_bytes / fp32.expert_bytes,
                             "perplexity_float32": quant.perplexity_float32, "perplexity": quant.perplexity,
                             "perplexity_change": quant.perplexity / quant.perplexity_float32 - 1,
                             "held_out_tokens": quant.held_out_tokens, "prompts_identical_to_float32": same,
                             "token_agreement": agree / (32 * len(prompts)), "num_prompts": len(prompts)})
                print(json.dumps(rows[-1]), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "machine": machine_info(), "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
