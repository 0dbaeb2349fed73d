"""Routing traces, next-layer predictors, and a predictor shipped in a package."""

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
from edgecoe.moe.export import export_moe
from edgecoe.moe.generate import Generator, SamplingParams
from edgecoe.moe.model import MoeConfig, MoeModel
from edgecoe.moe.package import load_moe_package
from edgecoe.moe.predictors import evaluate, linear, pairs, popularity, train_linear, transition
from edgecoe.moe.trace import RoutingTrace, record_trace


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pred")
    return export_moe(tiny_checkpoint("mixtral", root / "hf", seed=4), root / "pkg").package


def _synthetic(num_prompts: int = 6, steps: int = 20, layers: int = 3, experts: int = 8,
               seed: int = 0) -> RoutingTrace:
    """Layer l+1 picks (e + 1, e + 2) mod E of layer l's first pick e: a structure to learn."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("prompt", "step", "layer", "chosen", "hidden")}
    for p in range(num_prompts):
        for s in range(steps):
            first = int(rng.integers(experts))
            for la in range(layers):
                chosen = [first % experts, (first + 1) % experts]
                rows["prompt"].append(p)
                rows["step"].append(s)
                rows["layer"].append(la)
                rows["chosen"].append(chosen)
                rows["hidden"].append(rng.standard_normal(4))
                first += 1
    return RoutingTrace(np.array(rows["prompt"]), np.array(rows["step"]), np.array(rows["layer"]),
                        np.array(rows["chosen"]), np.array(rows["hidden"], np.float16), experts)


def test_predictors_learn_a_structured_trace_and_popularity_does_not() -> None:
    train, test = pairs(_synthetic(seed=1)), pairs(_synthetic(seed=2))
    assert evaluate(transition(train, 3, 8), test, 2).recall > 0.95
    assert evaluate(linear(train_linear(train, 3, 8), 8), test, 2).recall > 0.95
    assert evaluate(popularity(train, 3, 8), test, 2).recall < 0.6
    quality = evaluate(transition(train, 3, 8), test, 4)
    assert quality.precision == pytest.approx(quality.recall / 2)


def test_trace_records_every_decode_step_and_round_trips(exported: Path, tmp_path: Path) -> None:
    package = load_moe_package(exported)
    model = MoeModel(package)
    trace = record_trace(model, prompts(3), max_new_tokens=6)
    layers = package.manifest.model.num_layers
    assert len(trace.layer) == 3 * 5 * layers  # the first token comes from the prefill step
    assert trace.chosen.shape == (3 * 5 * layers, 2) and trace.hidden.shape[1] == package.manifest.model.hidden_size
    assert list(trace.layer[:layers]) == list(range(layers)) and trace.step.max() == 4
    trace.save(tmp_path / "t.npz")
    again = RoutingTrace.load(tmp_path / "t.npz")
    assert np.array_equal(again.chosen, trace.chosen) and np.array_equal(again.hidden, trace.hidden)


def test_hostile_traces_are_refused(tmp_path: Path) -> None:
    good = _synthetic()
    bad = tmp_path / "pickled.npz"
    np.savez(bad, prompt=np.array([object()], dtype=object), step=good.step, layer=good.layer, chosen=good.chosen,
             hidden=good.hidden, num_experts=np.array(8))
    with pytest.raises(InvalidInputError, match="not a routing trace"):
        RoutingTrace.load(bad)
    out_of_range = tmp_path / "range.npz"
    np.savez(out_of_range, prompt=good.prompt, step=good.step, layer=good.layer, chosen=good.chosen + 100,
             hidden=good.hidden, num_experts=np.array(8))
    with pytest.raises(InvalidInputError, match="chosen"):
        RoutingTrace.load(out_of_range)


def test_cli_traces_trains_installs_and_generation_uses_the_predictor(exported: Path, tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    shutil.copytree(exported, package)
    (tmp_path / "cal.txt").write_text("\n".join(prompts(12)[6:]))
    (tmp_path / "held.txt").write_text("\n".join(prompts(6)))
    runner = CliRunner()
    for name in ("cal", "held"):
        out = runner.invoke(main, ["trace", str(package), "--prompts", str(tmp_path / f"{name}.txt"), "-o",
                                   str(tmp_path / f"{name}.npz"), "--max-new-tokens", "8"])
        assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["predictor", "train", str(tmp_path / "cal.npz"), "--eval", str(tmp_path / "held.npz"),
                               "--package", str(package), "--json", str(tmp_path / "q.json")])
    assert out.exit_code == 0, out.output
    quality = json.loads((tmp_path / "q.json").read_text())["quality"]
    assert set(quality) == {"popularity", "sticky", "transition", "speculative", "learned"}
    installed = load_moe_package(package, verify="full")
    record = installed.manifest.predictor
    assert record is not None and record.recall["4"] == pytest.approx(quality["learned"]["4"]["recall"])
    model = MoeModel(installed, MoeConfig(budget="25%", policy="edgecoe"))
    assert model.schedule.context.predictor is not None  # type: ignore[attr-defined]
    base = Generator(MoeModel(installed, MoeConfig(budget="25%", policy="on-demand")))
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    assert Generator(model).generate(prompts(3), params).token_ids == base.generate(prompts(3), params).token_ids
    # a predictor file of the wrong size is caught on load
    (package / "predictor" / "linear.bin").write_bytes(b"\0" * 8)
    with pytest.raises(PackageError, match="predictor"):
        load_moe_package(package)


def test_the_chosen_linear_predictor_is_at_least_as_good_as_sticky_on_sticky_routing() -> None:
    from edgecoe.moe.predictors import choose_linear, sticky

    rng = np.random.default_rng(5)
    rows: dict[str, list] = {k: [] for k in ("prompt", "step", "layer", "chosen", "hidden")}
    for p in range(10):
        current = [sorted(rng.choice(8, 2, replace=False).tolist()) for _ in range(3)]
        for s in range(20):
            for la in range(3):
                if rng.random() < 0.15:  # mostly the same experts as the previous token
                    current[la] = sorted(rng.choice(8, 2, replace=False).tolist())
                rows["prompt"].append(p)
                rows["step"].append(s)
                rows["layer"].append(la)
                rows["chosen"].append(current[la])
                rows["hidden"].append(rng.standard_normal(64))
    trace = RoutingTrace(*(np.array(rows[k]) for k in ("prompt", "step", "layer", "chosen")),
                         np.array(rows["hidden"], np.float16), 8)
    train, test = pairs(_subset_prompts(trace, 0, 6)), pairs(_subset_prompts(trace, 6, 10))
    learned = evaluate(linear(choose_linear(_subset_prompts(trace, 0, 6), 3, 8, 2), 8), test, 2).recall
    assert learned >= evaluate(sticky(train, 3, 8), test, 2).recall - 0.02
    assert learned > 0.7


def _subset_prompts(trace: RoutingTrace, first: int, last: int) -> RoutingTrace:
    rows = (trace.prompt >= first) & (trace.prompt < last)
    return RoutingTrace(trace.prompt[rows], trace.step[rows], trace.layer[rows], trace.chosen[rows],
                        trace.hidden[rows], trace.num_experts)
