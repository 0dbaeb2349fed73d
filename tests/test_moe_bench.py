"""Several prompts at once (continuous batching), the MoE bench, its timeline and its peers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

from moe_helpers import prompts, tiny_checkpoint

from edgecoe.cli import main
from edgecoe.errors import InvalidInputError, PackageError
from edgecoe.moe.batching import BatchingParams, ContinuousBatcher
from edgecoe.moe.bench import MoeBenchSpec, run_moe_bench, summarize, token_agreement
from edgecoe.moe.export import export_moe
from edgecoe.moe.generate import Generator, SamplingParams
from edgecoe.moe.model import MoeConfig, MoeModel
from edgecoe.moe.package import load_moe_package
from edgecoe.moe.predictors import activation_matrices, compare_predictors, install_predictor
from edgecoe.moe.timeline import Timeline
from edgecoe.moe.trace import RoutingTrace, record_trace


@pytest.fixture(scope="module")
def checkpoint_and_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny Mixtral checkpoint and its package, with a predictor and activation matrices installed."""
    root = tmp_path_factory.mktemp("bench")
    hf = tiny_checkpoint("mixtral", root / "hf", seed=5)
    package = export_moe(hf, root / "pkg").package
    loaded = load_moe_package(package)
    model = MoeModel(loaded, MoeConfig())
    train = record_trace(model, prompts(16)[8:], max_new_tokens=8)
    test = record_trace(model, prompts(16)[4:8], max_new_tokens=8)
    model.close()
    result = compare_predictors(loaded, train, test)
    install_predictor(package, result.weights, trained_on="test", recall={}, precision={},
                      activations=activation_matrices(train, loaded.manifest.model.num_layers))
    return hf, package


# -- continuous batching ----------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [0, 3])
def test_interleaved_prompts_get_the_tokens_they_get_alone(checkpoint_and_package, chunk: int) -> None:
    _, package = checkpoint_and_package
    model = MoeModel(load_moe_package(package), MoeConfig(budget="25%", policy="edgecoe"))
    generator = Generator(model)
    params = SamplingParams(max_new_tokens=9, ignore_eos=True)
    texts = prompts(5)
    alone = [generator.generate([t], params).token_ids[0] for t in texts]
    batcher = ContinuousBatcher(generator, params, BatchingParams(prefill_chunk_tokens=chunk))
    got: dict[int, list[int]] = {}
    ids = [batcher.submit(t) for t in texts[:2]]
    events = []
    while not batcher.num_running:
        events += batcher.step()
    events += batcher.step()  # decodes under way when the next prompts arrive
    ids += [batcher.submit(t) for t in texts[2:]]
    events += batcher.run()
    for event in events:
        got.setdefault(event.prompt_index, []).append(event.token_id)
    assert [got[i] for i in ids] == alone
    assert batcher.idle and all(batcher.timings[i].finished_ms is not None for i in ids)
    assert sum(e.finished for e in events) == 5
    model.close()


def test_smaller_prefill_chunks_let_running_sequences_advance_sooner(checkpoint_and_package) -> None:
    _, package = checkpoint_and_package
    model = MoeModel(load_moe_package(package), MoeConfig())
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    long_prompt = " ".join(prompts(6))  # many tokens: several chunks
    steps_before_first = {}
    for chunk in (0, 4):
        batcher = ContinuousBatcher(Generator(model), params, BatchingParams(prefill_chunk_tokens=chunk))
        batcher.submit(prompts(1)[0])
        batcher.step()  # the short prompt prefills and decodes once
        batcher.submit(long_prompt)
        steps = 0
        tokens_of_first = 0
        while batcher.timings[1].first_token_ms is None:
            tokens_of_first += sum(e.prompt_index == 0 for e in batcher.step())
            steps += 1
        steps_before_first[chunk] = (steps, tokens_of_first)
        batcher.run()
    assert steps_before_first[0] == (1, 1)  # whole prompt in one step: one token of the other meanwhile
    assert steps_before_first[4][0] > 1 and steps_before_first[4][1] > 1  # chunks: the other keeps decoding
    model.close()


def test_batcher_bounds_its_queue_and_checks_prompts(checkpoint_and_package) -> None:
    _, package = checkpoint_and_package
    model = MoeModel(load_moe_package(package), MoeConfig())
    batcher = ContinuousBatcher(Generator(model), SamplingParams(max_new_tokens=4), BatchingParams(max_waiting=2))
    batcher.submit("a prompt")
    batcher.submit([5, 6, 7])
    with pytest.raises(InvalidInputError, match="2 prompts are waiting; the limit is 2"):
        batcher.submit("one too many")
    with pytest.raises(InvalidInputError, match="outside the vocabulary"):
        ContinuousBatcher(Generator(model)).submit([10**6])
    with pytest.raises(InvalidInputError, match="positions"):
        ContinuousBatcher(Generator(model), SamplingParams(max_new_tokens=250)).submit(list(range(3, 40)))
    with pytest.raises(InvalidInputError, match="prefill_chunk_tokens"):
        BatchingParams(prefill_chunk_tokens=-1).validate()
    assert len(batcher.run()) == 8
    model.close()


# -- schedules on the real model ------------------------------------------------------------------------
def test_moe_infinity_and_the_prefill_window_on_the_model(checkpoint_and_package) -> None:
    _, package = checkpoint_and_package
    loaded = load_moe_package(package)
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    base = Generator(MoeModel(loaded, MoeConfig(budget="25%", policy="on-demand")))
    model = MoeModel(loaded, MoeConfig(budget="50%", policy="moe-infinity"))
    assert Generator(model).generate(prompts(3), params).token_ids == base.generate(prompts(3), params).token_ids
    assert model.prefetcher.stats.num_loaded > 0
    phase_aware = MoeModel(loaded, MoeConfig(budget="100%", policy="edgecoe"))  # preloaded: every expert
    assert phase_aware.cache.used_bytes == loaded.manifest.total_expert_bytes
    Generator(phase_aware).generate(prompts(1), params)
    window = phase_aware.schedule.prefill_window  # type: ignore[attr-defined]
    # a prefill starts from the first layers' experts, whatever the decode budget held
    assert phase_aware.last_prefill_peak_bytes <= window * loaded.manifest.expert_bytes
    assert phase_aware.cache.stats.peak_bytes == loaded.manifest.total_expert_bytes  # the report's peak is kept
    for m in (model, phase_aware, base.model):
        m.close()


def test_activation_matrices_are_normalized_per_layer_and_checked_on_load(checkpoint_and_package,
                                                                        tmp_path: Path) -> None:
    trace = RoutingTrace(prompt=np.array([0, 0, 1]), step=np.array([0, 0, 0]), layer=np.array([0, 1, 0]),
                         chosen=np.array([[1, 2], [3, 3], [0, 1]]), hidden=np.zeros((3, 2), np.float16),
                         num_experts=4)
    eams = activation_matrices(trace, 2)
    assert eams.shape == (2, 2, 4)
    assert np.allclose(eams[0, 0], [0, 0.5, 0.5, 0]) and np.allclose(eams[0, 1], [0, 0, 0, 1])
    assert np.allclose(eams[1, 1], 0.25)  # a layer never traced: uniform
    _, package = checkpoint_and_package
    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    (copy / "predictor" / "activations.bin").write_bytes(b"\0" * 12)
    with pytest.raises(PackageError, match="activations"):
        load_moe_package(copy)
    manifest = json.loads((package / "edgecoe.json").read_text())
    manifest["predictor"]["num_activation_requests"] = 0  # says none, but lists a file
    (copy / "edgecoe.json").write_text(json.dumps(manifest))
    shutil.copyfile(package / "predictor" / "activations.bin", copy / "predictor" / "activations.bin")
    with pytest.raises(PackageError, match="num_activation_requests=0"):
        load_moe_package(copy)


# -- timeline -------------------------------------------------------------------------------------------
def test_timeline_measures_loads_overlapping_compute_on_other_threads() -> None:
    import threading

    timeline = Timeline(max_events=4)
    timeline.add("dense L000", "dense", 10.0, 10.010)  # main thread, 10 ms

    def loader() -> None:
        timeline.add("load L001.E000", "load", 10.004, 10.020)  # 6 ms of it overlaps the dense span

    thread = threading.Thread(target=loader, name="loader")
    thread.start()
    thread.join()
    timeline.add("load L000.E001", "load", 10.0, 10.002)  # same thread as the compute: not overlap
    assert timeline.overlap_ms("load", "dense") == pytest.approx(6.0)
    timeline.add("expert", "expert", 11.0, 11.001)
    timeline.add("dropped", "expert", 12.0, 12.001)
    chrome = timeline.to_chrome()
    assert chrome["otherData"] == {"dropped_spans": 1}
    events = chrome["traceEvents"]
    assert {e["args"]["name"] for e in events if e["ph"] == "M"} == {"MainThread", "loader"}  # type: ignore[index]
    assert sum(e["ph"] == "X" for e in events) == 4  # type: ignore[index]


# -- the bench ------------------------------------------------------------------------------------------
def test_bench_spec_validates_and_lists_its_runs(checkpoint_and_package) -> None:
    _, package = checkpoint_and_package
    spec = MoeBenchSpec(package=package, prompts=("a",), entries=("all-resident", "on-demand", "llama.cpp"),
                        gguf=Path("m.gguf"), concurrent_chunks=(0, 8))
    assert spec.keys() == ["page-cache/all-resident", "page-cache/on-demand", "device-memory/on-demand",
                           "device-memory/llama.cpp", "concurrent/edgecoe chunk=0", "concurrent/edgecoe chunk=8"]
    assert MoeBenchSpec.from_json(spec.to_json()) == spec
    for bad, message in (({"entries": ("lru",)}, "unknown MoE bench entries"), ({"prompts": ()}, "no prompts"),
                         ({"entries": ("accelerate",)}, "--checkpoint"), ({"modes": ("disk",)}, "modes")):
        with pytest.raises(InvalidInputError, match=message):
            MoeBenchSpec(**{"package": package, "prompts": ("a",), **bad}).validate()  # type: ignore[arg-type]


def _prompt(ttft: float, tps: float, e2e: float) -> dict[str, object]:
    return {"ttft_ms": ttft, "decode_tokens_per_s": tps, "e2e_ms": e2e, "prefill_peak_expert_bytes": 1,
            "peak_expert_bytes": 2, "loads": 3, "prefetched": 0, "hit_rate": 0.5, "storage_read_bytes": None,
            "token_ids": [1, 2]}


def test_summary_takes_medians_over_repeats_and_ratios_within_each() -> None:
    def run(scale: float) -> dict[str, dict[str, object]]:
        return {"page-cache/all-resident": {"prompts": [_prompt(10, 20 * scale, 100)], "peak_rss_bytes": 5},
                "page-cache/on-demand": {"prompts": [_prompt(40, 10 * scale, 400), _prompt(20, 10 * scale, 200)],
                                         "peak_rss_bytes": 6}}

    runs = [run(1.0), run(2.0), run(4.0)]
    summary = summarize(runs)
    on_demand = summary["page-cache/on-demand"]
    assert on_demand["ttft_ms"] == 30 and on_demand["decode_tokens_per_s"] == 20
    assert on_demand["decode_tokens_per_s_range"] == [10, 40]
    assert on_demand["decode_tokens_per_s_ratio_vs_all_resident"] == pytest.approx(0.5)
    assert on_demand["e2e_p50_ms"] in (200, 400) and on_demand["e2e_p99_ms"] == 400
    assert on_demand["loads"] == 6 and on_demand["peak_rss_bytes"] == 6
    assert "e2e_ms_ratio_vs_on_demand" not in on_demand
    assert token_agreement(runs) == {"page-cache/all-resident": 1.0}  # on-demand ran two prompts, not one


def test_bench_runs_every_entry_in_its_own_process_and_agrees_on_tokens(checkpoint_and_package,
                                                                        tmp_path: Path) -> None:
    hf, package = checkpoint_and_package
    spec = MoeBenchSpec(package=package, budget="25%", prompts=tuple(prompts(2)), new_tokens=5, repeat=1,
                        modes=("page-cache", "device-memory"),
                        entries=("all-resident", "on-demand", "moe-infinity", "edgecoe", "accelerate"),
                        checkpoint=hf, timeline_dir=tmp_path / "tl", concurrent_chunks=(2,))
    seen: list[str] = []
    result = run_moe_bench(spec, on_result=lambda rep, key, r: seen.append(key))
    assert seen == spec.keys()
    agreement = token_agreement(result.runs)
    assert all(agreement[k] == 1.0 for k in agreement), agreement  # every entry, accelerate too, same tokens
    assert "page-cache/accelerate" in agreement and "device-memory/edgecoe" in agreement
    edgecoe = result.summary["device-memory/edgecoe"]
    assert edgecoe["storage_read_bytes"] is not None and edgecoe["device_memory_limit_bytes"] > 0
    assert result.summary["page-cache/edgecoe"]["e2e_ms_ratio_vs_on_demand"] > 0
    assert result.summary["concurrent/edgecoe chunk=2"]["tpot_p50_ms"] > 0
    timeline = json.loads((tmp_path / "tl" / "timeline-page-cache-edgecoe.json").read_text())
    assert any(e.get("cat") == "load" for e in timeline["traceEvents"])


def test_bench_cli_on_an_moe_package(checkpoint_and_package, tmp_path: Path) -> None:
    _, package = checkpoint_and_package
    out = CliRunner().invoke(main, ["bench", str(package), "--policies", "on-demand,edgecoe", "--modes", "page-cache",
                                    "--num-prompts", "2", "--new-tokens", "4", "--json", str(tmp_path / "b.json"),
                                    "--trace", str(tmp_path / "t.json"), "--plots", str(tmp_path / "plots")])
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "b.json").read_text())
    assert set(result["summary"]) == {"page-cache/on-demand", "page-cache/edgecoe"}
    assert "traceEvents" in json.loads((tmp_path / "t.json").read_text())
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "moe-decode_tokens_per_s.png", "moe-e2e_ms.png", "moe-ttft_ms.png"]
    bad = CliRunner().invoke(main, ["bench", str(package), "--policies", "on-demand,accelerate"])
    assert bad.exit_code != 0 and "--checkpoint" in bad.output


# -- peers ----------------------------------------------------------------------------------------------
def test_rotary_rows_are_reordered_to_llama_cpp_pairs() -> None:
    from edgecoe.moe.peers import _permute_rotary

    heads, dim = 2, 8
    weight = np.arange(heads * dim, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    rows = _permute_rotary(weight, heads)[:, 0].astype(int).tolist()
    # per head: dimension i pairs with i + dim/2 in HF's layout; llama.cpp wants them adjacent
    assert rows == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


def test_gguf_holds_every_tensor_the_llama_cpp_graph_reads(checkpoint_and_package, tmp_path: Path) -> None:
    import gguf

    from edgecoe.moe.peers import write_gguf

    hf, package = checkpoint_and_package
    path = write_gguf(hf, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    manifest = load_moe_package(package).manifest
    assert len(tensors) == 3 + manifest.model.num_layers * 10
    gate = tensors["blk.0.ffn_gate_exps.weight"]
    assert sorted(int(d) for d in gate.shape) == sorted([manifest.moe.num_experts, manifest.moe.intermediate_size,
                                                         manifest.model.hidden_size])
    fields = reader.fields
    assert int(fields["llama.expert_count"].parts[-1][0]) == manifest.moe.num_experts
    assert int(fields["llama.expert_used_count"].parts[-1][0]) == manifest.moe.top_k
    with pytest.raises(InvalidInputError, match="mixtral"):
        qwen = tiny_checkpoint("qwen2_moe", tmp_path / "qwen")
        write_gguf(qwen, tmp_path / "q.gguf")
