"""MoE generation against transformers: token-exact at every expert budget, for both architectures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from moe_helpers import ARCHS, prompts, tiny_checkpoint  # noqa: E402

from edgecoe.errors import InvalidInputError  # noqa: E402
from edgecoe.moe.evaluate import held_out_perplexity  # noqa: E402
from edgecoe.moe.export import export_moe  # noqa: E402
from edgecoe.moe.generate import Generator, SamplingParams  # noqa: E402
from edgecoe.moe.model import MoeConfig, MoeModel, route  # noqa: E402
from edgecoe.moe.package import load_moe_package  # noqa: E402


@pytest.fixture(scope="module", params=ARCHS)
def checkpoint_and_package(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp(request.param)
    hf = tiny_checkpoint(request.param, root / "hf")
    export_moe(hf, root / "pkg")
    model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    model.eval()
    return hf, load_moe_package(root / "pkg", verify="full"), model


def _reference(model, ids: list[int], new: int) -> list[int]:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("budget", [None, "50%", "25%"])
def test_greedy_tokens_match_transformers_at_every_budget(checkpoint_and_package, budget: str | None) -> None:
    _, package, reference = checkpoint_and_package
    model = MoeModel(package, MoeConfig(budget=budget))
    generator = Generator(model)
    mismatched = []
    for text in prompts(20):
        ids = generator.encode(text)
        got = generator.generate([ids], SamplingParams(max_new_tokens=32, ignore_eos=True)).token_ids[0]
        if got != _reference(reference, ids, 32):
            mismatched.append(text)
        assert model.cache.stats.peak_bytes <= model.cache.budget_bytes
    assert mismatched == []
    if budget == "25%":
        assert model.cache.stats.num_evictions > 0  # the budget really forced experts out


def test_logits_agree_with_transformers(checkpoint_and_package) -> None:
    _, package, reference = checkpoint_and_package
    model = MoeModel(package, MoeConfig(budget="25%"))
    ids = Generator(model).encode(" ".join(prompts(3)))
    tokens = np.array([ids])
    ours = model.forward(tokens, np.arange(len(ids))[None], np.ones_like(tokens), model.empty_cache(1),
                         all_logits=True)
    with torch.no_grad():
        theirs = reference(torch.tensor([ids])).logits.numpy()
    assert np.abs(ours - theirs).max() < 1e-3


def test_batched_generation_matches_transformers_left_padded_batch(checkpoint_and_package) -> None:
    hf, package, reference = checkpoint_and_package
    texts = prompts(6)
    generator = Generator(MoeModel(package, MoeConfig(budget="50%")))
    ours = generator.generate(texts, SamplingParams(max_new_tokens=16, ignore_eos=True))
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    tok.padding_side = "left"
    batch = tok(texts, return_tensors="pt", padding=True)
    assert batch["input_ids"][0][batch["attention_mask"][0] > 0].tolist() == ours.prompt_token_ids[0]
    with torch.no_grad():
        out = reference.generate(**batch, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
    assert ours.token_ids == out[:, batch["input_ids"].shape[1]:].tolist()
    singles = [generator.generate([t], SamplingParams(max_new_tokens=16, ignore_eos=True)).token_ids[0] for t in texts]
    assert singles == ours.token_ids


def test_sampling_is_seeded_and_independent_of_the_batch(checkpoint_and_package) -> None:
    _, package, _ = checkpoint_and_package
    generator = Generator(MoeModel(package))
    texts = prompts(3)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    batched = generator.generate(texts, params).token_ids
    assert generator.generate(texts, params).token_ids == batched
    assert generator.generate(texts[:1], params).token_ids[0] == batched[0]
    other_seed = generator.generate(texts, SamplingParams(max_new_tokens=12, temperature=1.0, seed=8,
                                                          ignore_eos=True)).token_ids
    assert other_seed != batched
    greedy = generator.generate(texts, SamplingParams(max_new_tokens=12, ignore_eos=True)).token_ids
    top1 = generator.generate(texts, SamplingParams(max_new_tokens=12, temperature=0.7, top_k=1,
                                                    ignore_eos=True)).token_ids
    assert top1 == greedy


def test_stop_tokens_end_a_sequence_and_streaming_yields_each_token(checkpoint_and_package) -> None:
    _, package, _ = checkpoint_and_package
    generator = Generator(MoeModel(package))
    text = prompts(1)[0]
    greedy = generator.generate([text], SamplingParams(max_new_tokens=8, ignore_eos=True)).token_ids[0]
    stopped = generator.generate([text], SamplingParams(max_new_tokens=8, stop_token_ids=(greedy[2],),
                                                        ignore_eos=True))
    assert stopped.token_ids[0] == greedy[:greedy.index(greedy[2]) + 1]
    events = list(generator.stream([text], SamplingParams(max_new_tokens=8, ignore_eos=True)))
    assert [e.token_id for e in events] == greedy
    assert [e.finished for e in events] == [False] * 7 + [True]
    assert "".join(e.text for e in events) == generator.decode(greedy)
    report = generator.last_report
    assert report.num_generated_tokens == 8 and report.num_prompt_tokens == len(generator.encode(text))
    assert report.ttft_ms > 0 and report.e2e_ms >= report.ttft_ms and report.decode_tokens_per_s > 0


def test_budget_below_one_expert_and_bad_prompts_are_refused(checkpoint_and_package) -> None:
    _, package, _ = checkpoint_and_package
    with pytest.raises(InvalidInputError, match="below one expert"):
        MoeModel(package, MoeConfig(budget=1000))
    generator = Generator(MoeModel(package))
    with pytest.raises(InvalidInputError, match="outside the vocabulary"):
        generator.generate([[1, 10**6]])
    with pytest.raises(InvalidInputError, match="empty"):
        generator.generate([[]])
    with pytest.raises(InvalidInputError, match="positions"):
        generator.generate(["hello"], SamplingParams(max_new_tokens=10_000))
    with pytest.raises(InvalidInputError, match="limit"):
        generator.generate(["x"] * 1000)


def test_route_matches_torch_topk_and_renormalizes() -> None:
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((50, 8)).astype(np.float32)
    chosen, weights = route(logits, top_k=2, normalize=True)
    probs = torch.softmax(torch.from_numpy(logits), dim=1)
    top, index = torch.topk(probs, 2, dim=-1)
    assert (chosen == index.numpy()).all()
    assert np.allclose(weights, (top / top.sum(-1, keepdim=True)).numpy(), atol=1e-6)
    _, raw = route(logits, top_k=2, normalize=False)
    assert np.allclose(raw, top.numpy(), atol=1e-6)


def test_int4_experts_are_under_a_third_of_float32_and_report_perplexity(tmp_path: Path) -> None:
    hf = tiny_checkpoint("mixtral", tmp_path / "hf", seed=1)
    fp32 = export_moe(hf, tmp_path / "fp32")
    int4 = export_moe(hf, tmp_path / "int4", dtype="int4", block_size=32)
    int8 = export_moe(hf, tmp_path / "int8", dtype="int8", block_size=32)
    assert int4.expert_bytes <= 0.3 * fp32.expert_bytes
    assert int4.expert_bytes < int8.expert_bytes < fp32.expert_bytes
    for report in (int4, int8):
        quant = report.quantization
        assert quant is not None and quant.perplexity is not None and quant.perplexity_float32 is not None
        assert quant.held_out_tokens > 500
    # int8 changes the model less than int4 does
    assert abs(int8.quantization.perplexity / int8.quantization.perplexity_float32 - 1) <= abs(  # type: ignore[union-attr]
        int4.quantization.perplexity / int4.quantization.perplexity_float32 - 1) + 1e-3  # type: ignore[union-attr]
    package = load_moe_package(int4.package, verify="full")
    assert package.manifest.expert_format.dtype == "int4"
    # the packages as written measure what export recorded
    assert held_out_perplexity(int4.package, None)[0] == pytest.approx(int4.quantization.perplexity, rel=1e-5)  # type: ignore[union-attr]
    assert held_out_perplexity(fp32.package, None)[0] == pytest.approx(
        int4.quantization.perplexity_float32, rel=1e-5)  # type: ignore[union-attr]
    result = Generator(MoeModel(package, MoeConfig(budget="25%"))).generate(
        prompts(2), SamplingParams(max_new_tokens=8, ignore_eos=True))
    assert all(len(ids) == 8 for ids in result.token_ids)


@pytest.mark.parametrize("policy", ["mixtral-offload", "edgecoe"])
def test_every_schedule_gives_the_same_tokens_within_the_budget(checkpoint_and_package, policy: str) -> None:
    _, package, _ = checkpoint_and_package
    base = Generator(MoeModel(package, MoeConfig(budget="25%", policy="on-demand")))
    model = MoeModel(package, MoeConfig(budget="25%", policy=policy, preload=False))
    generator = Generator(model)
    texts = prompts(5)
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    assert [generator.generate([t], params).token_ids[0] for t in texts] == [
        base.generate([t], params).token_ids[0] for t in texts]
    assert generator.generate(texts, params).token_ids == base.generate(texts, params).token_ids
    assert model.cache.stats.peak_bytes <= model.cache.budget_bytes
    assert model.prefetcher.stats.num_loaded > 0  # the loader thread really fetched ahead
    model.close()
    model.cache.check()
