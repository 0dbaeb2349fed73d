"""Fine-tuned MoE variants: consolidation into one package, serving each variant, merging baselines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from moe_helpers import prompts, tiny_checkpoint

from edgecoe.errors import InvalidInputError, PackageError, SpecError
from edgecoe.moe.consolidate import SlotDistances, choose_threshold, consolidate, plan_sharing
from edgecoe.moe.generate import Generator, SamplingParams
from edgecoe.moe.merging import average_merge, read_checkpoint, ties_tensor, write_checkpoint
from edgecoe.moe.model import MoeConfig, MoeModel
from edgecoe.moe.package import load_moe_package
from edgecoe.moe.variants import DOMAINS, domain_text, load_variants_recipe

EXPERT = "model.layers.{layer}.block_sparse_moe.experts.{slot}.{w}.weight"


def _perturbed(state: dict[str, np.ndarray], rng: np.random.Generator, *, small: set[tuple[int, int]],
               large: set[tuple[int, int]]) -> dict[str, np.ndarray]:
    """A 'fine-tune': attention nudged, the listed experts moved a little or a lot, embeddings and head kept."""
    out = dict(state)
    for name, value in state.items():
        if "self_attn" in name:
            out[name] = value + 0.01 * rng.standard_normal(value.shape).astype(np.float32)
    for (layer, slot), size in [*((s, 1e-4) for s in small), *((s, 0.5) for s in large)]:
        for w in ("w1", "w2", "w3"):
            name = EXPERT.format(layer=layer, slot=slot, w=w)
            out[name] = state[name] + size * np.abs(state[name]).mean() * rng.standard_normal(
                state[name].shape).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def variant_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three variants of a tiny Mixtral: 'a' (the first), 'b' (half of layer 0's experts moved far, the rest
    barely), 'c' (every expert moved far)."""
    root = tmp_path_factory.mktemp("variants")
    base = tiny_checkpoint("mixtral", root / "base", seed=7)
    state = read_checkpoint(base)
    rng = np.random.default_rng(0)
    every = {(layer, slot) for layer in range(2) for slot in range(8)}
    far_b = {(0, slot) for slot in range(4, 8)}
    return {
        "base": base,
        "a": write_checkpoint(_perturbed(state, rng, small=set(), large=set()), base, root / "a"),
        "b": write_checkpoint(_perturbed(state, rng, small=every - far_b, large=far_b), base, root / "b"),
        "c": write_checkpoint(_perturbed(state, rng, small=set(), large=every), base, root / "c"),
    }


@pytest.fixture(scope="module")
def consolidated(variant_set: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = "\n".join(domain_text("docs")[0])[:60_000]
    report = consolidate({k: variant_set[k] for k in "abc"}, dict.fromkeys("abc", text),
                         tmp_path_factory.mktemp("pkg") / "set", threshold=0.05, memory_target=None)
    return report.package


def _greedy(checkpoint_state: dict[str, np.ndarray], like: Path, tmp: Path, prompt_ids: list[list[int]],
            new: int) -> list[list[int]]:
    """transformers' greedy tokens from a checkpoint holding ``checkpoint_state``."""
    import torch
    from transformers import AutoModelForCausalLM

    path = write_checkpoint(checkpoint_state, like, tmp)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for ids in prompt_ids:
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                 pad_token_id=0)
        out.append(gen[0, len(ids):].tolist())
    return out


def test_barely_moved_experts_are_stored_once_and_drifted_ones_per_variant(consolidated: Path) -> None:
    manifest = load_moe_package(consolidated, verify="full").manifest
    by_name = {v.name: v for v in manifest.variants}
    assert list(by_name) == ["a", "b", "c"]
    assert by_name["a"].experts == [list(range(8))] * 2
    b = by_name["b"].experts
    assert b[0][:4] == [0, 1, 2, 3] and b[1] == list(range(8))  # shared with a
    assert all(e >= 8 for e in b[0][4:])  # stored for b
    assert all(e >= 8 for row in by_name["c"].experts for e in row)
    assert [len(layer.experts) for layer in manifest.layers] == [8 + 4 + 8, 8 + 8]
    record = manifest.consolidation
    assert record is not None and record.stored_experts == 36
    assert record.shared == {"a": 0.0, "b": 0.75, "c": 0.0}
    # embeddings and head were not tuned: one file serves all three; attention differs per variant
    assert {v.embed.file.path for v in manifest.variants} == {"dense/embed.bin"}
    assert len({v.dense[0].path for v in manifest.variants}) == 3
    assert record.consolidated_bytes < record.separate_bytes


def test_each_variant_generates_what_its_consolidated_weights_generate(
        consolidated: Path, variant_set: dict[str, Path], tmp_path: Path) -> None:
    new = 8
    params = SamplingParams(max_new_tokens=new, ignore_eos=True)
    package = load_moe_package(consolidated)
    probe = MoeModel(package, MoeConfig())
    texts = [Generator(probe).encode(t) for t in prompts(3)]
    probe.close()
    a, b = read_checkpoint(variant_set["a"]), read_checkpoint(variant_set["b"])
    expected_b = dict(b)  # b with the slots it shares taken from a
    for layer, slots in ((0, range(4)), (1, range(8))):
        for slot in slots:
            for w in ("w1", "w2", "w3"):
                name = EXPERT.format(layer=layer, slot=slot, w=w)
                expected_b[name] = a[name]
    want = {"b": _greedy(expected_b, variant_set["b"], tmp_path / "b", texts, new),
            "c": _greedy(read_checkpoint(variant_set["c"]), variant_set["c"], tmp_path / "c", texts, new)}
    for variant in ("b", "c"):
        model = MoeModel(package, MoeConfig(variant=variant, budget="50%", policy="edgecoe"))
        got = [Generator(model).generate([t], params).token_ids[0] for t in texts]
        model.close()
        assert got == want[variant], variant
    # switching mid-life gives what a model started on that variant gives; shared experts stay resident
    model = MoeModel(package, MoeConfig(variant="a"))
    generator = Generator(model)
    generator.generate(texts[:1], params)
    assert model.use_variant("c") >= 0.0 and model.variant == "c" and model.variant_switches == 1
    assert [generator.generate([t], params).token_ids[0] for t in texts] == want["c"]
    assert model.use_variant("c") == 0.0 and model.variant_switches == 1
    with pytest.raises(InvalidInputError, match="has no variant 'z'; it has a, b, c"):
        model.use_variant("z")
    model.close()
    with pytest.raises(InvalidInputError, match="has no variant 'z'"):
        MoeModel(package, MoeConfig(variant="z"))


def test_a_manifest_mapping_a_slot_outside_the_stored_experts_is_refused(consolidated: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bad"
    shutil.copytree(consolidated, copy)
    raw = json.loads((copy / "edgecoe.json").read_text())
    raw["variants"][1]["experts"][0][0] = 99
    (copy / "edgecoe.json").write_text(json.dumps(raw))
    with pytest.raises(PackageError, match="expert map"):
        load_moe_package(copy)
    raw["variants"][1]["experts"][0][0] = 0
    raw["variants"][0]["experts"][0][0] = 1
    (copy / "edgecoe.json").write_text(json.dumps(raw))
    with pytest.raises(PackageError, match="must map slot e to stored expert e"):
        load_moe_package(copy)


def _slot(functional: list[list[float]]) -> SlotDistances:
    f = np.array(functional)
    return SlotDistances(functional=f, l2=f, cosine=f, tokens=[5] * len(f))


def test_the_smallest_threshold_meeting_the_memory_target_is_chosen() -> None:
    close, far = [[0, 0.01], [0.01, 0]], [[0, 0.3], [0.3, 0]]
    distances = [[_slot(close), _slot(far)]]
    assert plan_sharing(distances, 0.0).stored == 4
    assert plan_sharing(distances, 0.05).stored == 3 and plan_sharing(distances, 0.5).stored == 2
    # two variants of 2 experts of 10 bytes plus 10 fixed: separate 2 x 30 = 60 bytes
    plan, fits = choose_threshold(distances, fixed_bytes=10, expert_bytes=10, separate_bytes=60, memory_target=0.7)
    assert fits and plan.stored == 3 and plan.threshold == pytest.approx(0.01)
    plan, fits = choose_threshold(distances, fixed_bytes=10, expert_bytes=10, separate_bytes=60, memory_target=0.3)
    assert not fits and plan.stored == 2


def test_merging_baselines_follow_their_definitions(variant_set: dict[str, Path], tmp_path: Path) -> None:
    merged = read_checkpoint(average_merge([variant_set["a"], variant_set["c"]], tmp_path / "avg"))
    a, c = read_checkpoint(variant_set["a"]), read_checkpoint(variant_set["c"])
    name = EXPERT.format(layer=1, slot=3, w="w2")
    np.testing.assert_allclose(merged[name], (a[name] + c[name]) / 2, rtol=1e-6)
    # TIES: keep each task vector's top half by magnitude, elect signs, average the agreeing entries
    base = np.zeros(4, np.float32)
    got = ties_tensor(base, [np.array([3, -1, 0.1, 0], np.float32), np.array([2, 1, -0.2, 0], np.float32)],
                      density=0.5)
    np.testing.assert_allclose(got, [2.5, 0, 0, 0])


def test_domains_split_into_disjoint_training_and_held_out_text() -> None:
    for domain in DOMAINS:
        train, held = domain_text(domain)
        assert train and held and not set(train) & set(held), domain


def test_variant_recipes_are_validated(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("kind: moe-variants\nname: x\nbase: moe-tiny\nseed: 1\ntrain_steps: 5\n"
                      "variants: [{name: a, domain: docs}, {name: a, domain: poetry}]\n")
    with pytest.raises(SpecError) as info:
        load_variants_recipe(recipe)
    assert "variants" in str(info.value) and "poetry" in str(info.value)


def test_consolidate_and_generate_from_the_command_line(variant_set: dict[str, Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgecoe.cli import main

    text = tmp_path / "docs.txt"
    text.write_text("\n".join(domain_text("docs")[0])[:60_000])
    out = tmp_path / "set"
    args = ["consolidate", f"a={variant_set['a']}", f"c={variant_set['c']}", "-o", str(out),
            "--calibration", f"a={text}", "--calibration", f"c={text}", "--memory-target", "95%"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 variants" in result.output and "of separate copies" in result.output
    result = CliRunner().invoke(main, ["generate", str(out), "--variant", "c", "--prompt", "The for", "--max-new-tokens",
                                       "3", "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["generate", str(out), "--variant", "zz", "--prompt", "x"])
    assert result.exit_code != 0 and "has no variant 'zz'; it has a, c" in result.output
    result = CliRunner().invoke(main, [*args[:5], "--calibration", f"a={text}", "--force"])
    assert result.exit_code != 0 and "missing: ['c']" in result.output


def test_inspect_shows_the_variants_and_what_they_share(consolidated: Path) -> None:
    from edgecoe.moe.inspect import moe_summary

    summary = moe_summary(load_moe_package(consolidated))
    assert [v["name"] for v in summary["variants"]] == ["a", "b", "c"]  # type: ignore[attr-defined]
    assert summary["consolidation"]["stored_experts"] == 36  # type: ignore[index]
    assert summary["num_experts"] == 36
    record = load_moe_package(consolidated).manifest.consolidation
    assert record is not None and summary["total_bytes"] == record.consolidated_bytes


def test_a_variants_non_expert_parts_are_budgeted_cache_entries(consolidated: Path) -> None:
    package = load_moe_package(consolidated)
    manifest = package.manifest
    a, c = manifest.variants[0], manifest.variants[2]
    parts_a = {f"part:{f.path}" for f in (a.embed.file, *a.dense, a.head)}
    model = MoeModel(package, MoeConfig(variant="a", preload=False))
    assert model.cache.resident() == parts_a  # pinned while served
    assert model.cache.used_bytes == sum(f.bytes for f in (a.embed.file, *a.dense, a.head))
    loads = model.cache.stats.num_misses
    model.use_variant("c")
    # c shares a's embeddings and head (frozen in the fine-tune): only its dense layers load
    assert len(c.dense) == 2 and model.cache.stats.num_misses == loads + 2
    assert "part:dense/embed.bin" in model.cache.resident()
    model.use_variant("a")  # still resident: hits, no load
    assert model.cache.stats.num_misses == loads + 2 and model.variant_switches == 2
    model.cache.drop(list(model.cache.resident()))  # the served variant's parts are pinned: only c's go
    assert model.cache.resident() == parts_a
    model.close()
    # a budget below one expert plus one variant's parts is refused with the figure
    with pytest.raises(InvalidInputError, match="below one expert and one variant"):
        MoeModel(package, MoeConfig(budget=model.cache.budget_bytes // 100, variant="a"))


def test_the_server_stays_with_a_variant_until_another_waited_too_long() -> None:
    from collections import deque

    from edgecoe.moe.variant_serving import VariantRequest, pick_variant

    def q(*arrivals: float) -> deque[VariantRequest]:
        return deque(VariantRequest(i, "x", "p", a) for i, a in enumerate(arrivals))

    queues = {"a": q(1.0), "b": q(0.5)}
    assert pick_variant(queues, "a", 1.2, max_wait_ms=1000) == "a"  # b waited 0.7 s: under the bound
    assert pick_variant(queues, "a", 2.0, max_wait_ms=1000) == "b"  # b waited 1.5 s: switch
    assert pick_variant(queues, None, 1.2, max_wait_ms=1000) == "b"  # nothing served yet: the oldest
    assert pick_variant({"a": q(), "b": q()}, "a", 3.0, max_wait_ms=0) is None


def test_the_variant_bench_runs_every_entry_on_one_workload(consolidated: Path, variant_set: dict[str, Path]) -> None:
    from edgecoe.moe.variant_bench import ENTRIES, VariantWorkload, run_variant_bench

    manifest = load_moe_package(consolidated).manifest
    raw = json.loads((consolidated / "edgecoe.json").read_text())
    for v in raw["variants"]:
        v["domain"] = "docs"  # prompts from a domain the test knows
    (consolidated / "edgecoe.json").write_text(json.dumps(raw))
    try:
        result = run_variant_bench(consolidated, {k: variant_set[k] for k in "abc"},
                                   workload=VariantWorkload(num_requests=12, rate_rps=50.0, prompts_per_variant=4),
                                   new_tokens=3, repeat=1)
    finally:
        (consolidated / "edgecoe.json").write_text(manifest.to_json())
    summary = result["summary"]
    assert list(summary) == list(ENTRIES)
    assert all(run[e]["served"] == 12 and run[e]["refused"] == 0 for run in result["runs"] for e in ENTRIES)
    assert summary["separate-resident"]["switches"] == 0 and summary["swap-whole"]["switches"] >= 1
    assert summary["edgecoe"]["switches"] >= 1
    assert summary["static-split"]["memory_bytes"] <= result["memory_bytes"]
    assert summary["separate-resident"]["memory_bytes"] > result["memory_bytes"]


def test_bench_on_a_variant_package_compares_the_ways_to_serve_it(consolidated: Path, variant_set: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    import shutil

    from click.testing import CliRunner

    from edgecoe.cli import main

    checkpoints = tmp_path / "ckpts"
    for name in "abc":
        shutil.copytree(variant_set[name], checkpoints / name)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(prompts_(4)))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", str(consolidated), "--checkpoint", str(checkpoints), "--prompts",
                                       str(prompts), "--requests", "8", "--rate", "50", "--new-tokens", "2",
                                       "--policies", "static-split,edgecoe", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert list(data["summary"]) == ["static-split", "edgecoe"] and data["workload"]["num_requests"] == 8
    assert "turnaround mean ms" in result.output
    result = CliRunner().invoke(main, ["bench", str(consolidated), "--prompts", str(prompts)])
    assert result.exit_code != 0 and "--checkpoint DIR" in result.output


def prompts_(count: int) -> list[str]:
    return prompts(count)


def test_a_perturbed_variant_moves_the_chosen_share_of_experts_far_and_the_rest_barely(
        variant_set: dict[str, Path], tmp_path: Path) -> None:
    from edgecoe.moe.variants import VariantsRecipe, perturb

    recipe = VariantsRecipe(kind="moe-variants", name="p", base="moe-tiny", seed=1, method="perturb",
                            moved_share=0.25, perturb_scale=0.3, variants=[{"name": "a", "domain": "docs"},
                                                                          {"name": "b", "domain": "code"}])
    out = perturb(variant_set["base"], tmp_path / "p", recipe=recipe, seed=3, progress=lambda *a: None)
    before, after = read_checkpoint(variant_set["base"]), read_checkpoint(out)
    moved = []
    for layer in range(2):
        for slot in range(8):
            name = EXPERT.format(layer=layer, slot=slot, w="w1")
            change = np.abs(after[name] - before[name]).mean() / np.abs(before[name]).mean()
            moved.append(change > 0.1)
            assert change > 0.1 or change < 1e-3
    assert sum(moved) == 4  # a quarter of 16
    assert np.array_equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    with pytest.raises(ValueError, match="needs train_steps"):
        VariantsRecipe(kind="moe-variants", name="p", base="moe-tiny", seed=1,
                       variants=[{"name": "a", "domain": "docs"}, {"name": "b", "domain": "code"}])


def test_continuous_batching_across_variants_gives_each_prompt_its_variants_tokens(consolidated: Path) -> None:
    from edgecoe.moe.batching import BatchingParams
    from edgecoe.moe.variant_serving import VariantBatcher

    package = load_moe_package(consolidated)
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    texts = prompts(4)
    alone = {}
    for variant in ("a", "c"):
        model = MoeModel(package, MoeConfig(variant=variant))
        alone[variant] = [Generator(model).generate([t], params).token_ids[0] for t in texts]
        model.close()
    model = MoeModel(package, MoeConfig(budget="60%", variant="a"))
    batcher = VariantBatcher(Generator(model), params, BatchingParams(prefill_chunk_tokens=3), max_wait_ms=0)
    ids = {(v, batcher.submit(v, t)): (v, i) for i, t in enumerate(texts) for v in ("c", "a")}
    events = batcher.run()
    got: dict[tuple[str, int], list[int]] = {}
    for variant, evs in events.items():
        for e in evs:
            got.setdefault((variant, e.prompt_index), []).append(e.token_id)
    for key, (variant, i) in ids.items():
        assert got[key] == alone[variant][i], key
    assert model.variant_switches >= 2  # max_wait 0: the variants took turns
    with pytest.raises(InvalidInputError, match="no variant 'z'"):
        batcher.submit("z", "x")
    model.close()
