"""The bundled circuit-board demo: deterministic bytes, and routing controlled through inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnxruntime as ort

from edgecoe.demo import build_demo, find_recipe, load_recipe
from edgecoe.demo.recipe import DemoRecipe
from edgecoe.package import load_package, next_experts
from edgecoe.workload import generate_workload, materialize


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_pcb_small_shape(pcb_small):
    pkg = load_package(pcb_small)
    classifiers = [n for n in pkg.experts if n.startswith("cls-")]
    detectors = [n for n in pkg.experts if n.startswith("det-")]
    assert (len(classifiers), len(detectors)) == (16, 4)
    assert pkg.total_bytes <= 300e6
    # every detector is shared by several component types
    assert all(len(pkg.graph.parents[d]) >= 2 for d in detectors)
    assert set(pkg.graph.preliminary) == set(classifiers)
    assert abs(sum(pkg.experts[c].usage_probability for c in classifiers) - 1.0) < 1e-6


def test_pcb_recipe_meets_the_documented_size():
    recipe = load_recipe(find_recipe("pcb"))
    assert recipe.num_component_types + recipe.num_detectors >= 120


def test_demo_builds_bit_identically(pcb_small, tmp_path):
    again = build_demo(load_recipe(find_recipe("pcb-small")), tmp_path / "again")
    assert tree_digest(again) == tree_digest(pcb_small)


def test_a_different_seed_gives_different_weights(tmp_path):
    base = load_recipe(find_recipe("pcb-small")).model_dump()
    tiny = {**base, "num_component_types": 2, "num_detectors": 1,
            "classifier_architectures": base["classifier_architectures"][:1],
            "detector_architectures": [{"name": "yolo-t", "widths": [8, 16, 32, 64], "depth": 1}]}
    a = build_demo(DemoRecipe.model_validate(tiny), tmp_path / "a")
    b = build_demo(DemoRecipe.model_validate({**tiny, "seed": tiny["seed"] + 1}), tmp_path / "b")
    da, db = tree_digest(a), tree_digest(b)
    assert da.keys() == db.keys()
    assert da["experts/cls-res-0201.onnx"] != db["experts/cls-res-0201.onnx"]


def test_generator_controls_how_many_items_go_on(pcb_small):
    """Routing comes from running the classifier; the workload only shapes its inputs."""
    pkg = load_package(pcb_small)
    for share in (0.0, 0.3, 1.0):
        trace = generate_workload(pkg.manifest, num_requests=60, dist="uniform", go_on=share, seed=7)
        went_on = 0
        sessions: dict[str, ort.InferenceSession] = {}
        for request in trace.requests:
            first = pkg.manifest.entry.experts[str(request.metadata["component_type"])]
            if first not in sessions:
                sessions[first] = ort.InferenceSession(str(pkg.model_path(first)), providers=["CPUExecutionProvider"])
            image = materialize(request, pkg.manifest.inputs, Path("."))["image"][None]
            logits = sessions[first].run(None, {"image": image})[0]
            went_on += bool(next_experts(pkg.experts[first].route, {"logits": logits}, 0))
        expected = sum(1 for r in trace.requests
                       if r.inputs["image"].seeded.channel_offset > 0)  # type: ignore[union-attr]
        assert went_on == expected
        assert abs(went_on / 60 - share) < 0.2
