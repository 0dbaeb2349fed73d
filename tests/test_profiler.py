"""edgecoe profile: schema validation, a quick real profile, and run using it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgecoe.cli import main
from edgecoe.config import RuntimeConfig
from edgecoe.package import load_package
from edgecoe.profiler import ProfileError, load_profile
from edgecoe.profiler.run import ProfileSettings, profile_package
from edgecoe.profiler.select import best_profile, resolve_profile
from edgecoe.runtime import Runtime
from edgecoe.workload import generate_workload


def test_schema_errors_name_each_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({
        "name": "x", "memory": "shared",
        "processors": [{"id": "gpu0", "budget_bytes": -1}],
        "costs": {"arch": {"cpu": {"k_ms": 1, "b_ms": 1, "max_batch": 0, "load_ms": 1}}},
        "surprise": True,
    }))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    text = str(info.value)
    assert "bad.json: memory" in text and "'uma' or 'numa'" in text
    assert "processors.0.id" in text and "processors.0.budget_bytes" in text
    assert "costs.arch.cpu.max_batch" in text
    assert "surprise" in text


def test_unreadable_and_duplicate_processors(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="p.json:1:2"):
        load_profile(path)
    path.write_text(json.dumps({"name": "x", "memory": "uma", "processors": [
        {"id": "cpu", "budget_bytes": 1}, {"id": "cpu", "budget_bytes": 2}]}))
    with pytest.raises(ProfileError, match="unique"):
        load_profile(path)


def test_reference_profiles_ship_valid_with_sources():
    for name in ("reference-numa-x86-rtx3080ti", "reference-uma-apple-m2-24gb"):
        profile, path = resolve_profile(name)
        assert path.suffix == ".json"
        assert set(profile.costs) == {"resnet101", "yolov5m", "yolov5l"}
        assert profile.sources and all(v.split(":")[0] in {"published", "derived", "assumed", "not used on UMA (no separate host tier)"}
                                       for v in profile.sources.values())
    numa, _ = resolve_profile("reference-numa-x86-rtx3080ti")
    assert numa.memory == "numa" and numa.host_budget_bytes
    assert [p.id for p in numa.processors] == ["cuda:0", "cpu"]


@pytest.mark.slow
def test_quick_profile_is_valid_and_run_uses_it(pcb_small, tmp_path):
    pkg = load_package(pcb_small, verify="quick")
    profile = profile_package(pkg, settings=ProfileSettings.quick())
    path = tmp_path / "prof.json"
    path.write_text(profile.model_dump_json())
    again = load_profile(path)
    archs = {e.architecture for e in pkg.experts.values()}
    assert set(again.costs) == archs
    for arch in archs:
        cost = again.costs[arch]["cpu"]
        assert cost.k_ms > 0 and cost.load_cold_ms and cost.load_warm_ms and cost.footprint_bytes
        assert cost.max_batch in cost.latency_ms and cost.fit_max_rel_error is not None
    alloc = again.allocation
    assert alloc is not None and alloc.package == "pcb-small" and alloc.search
    assert again.processors[0].budget_bytes == alloc.budget_bytes
    assert again.processors[0].num_executors == alloc.num_executors["cpu"]
    # the runtime takes budget, executors and footprints from it
    with Runtime(pkg, config=RuntimeConfig(policy="edgecoe"), profile=again) as runtime:
        assert runtime.caches["cpu"].budget_bytes == alloc.budget_bytes
        assert len(runtime.executors) == alloc.num_executors["cpu"]
        arch = pkg.experts["cls-res-0201"].architecture
        assert runtime.engine.footprint("cls-res-0201") == again.costs[arch]["cpu"].footprint_bytes
        report = runtime.run(generate_workload(pkg.manifest, num_requests=30, seed=1))
    assert report.num_completed == 30 and report.profile == again.name
    # run picks it as the best match for this machine and package when it sits in device_profiles/
    folder = tmp_path / "device_profiles"
    folder.mkdir()
    (folder / "here.json").write_text(profile.model_dump_json())
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        match = best_profile(pkg)
        assert match is not None and match.path.name == "here.json" and match.score == 2
        result = CliRunner().invoke(main, ["run", str(pcb_small), "--requests", "20"])
        assert result.exit_code == 0, result.output
        said = " ".join(result.output.split())  # the console wraps long lines
        assert "device profile:" in said and "here.json, picked automatically" in said
    finally:
        os.chdir(cwd)


def test_profile_command_rejects_unknown_device(pcb_small, tmp_path):
    result = CliRunner().invoke(main, ["profile", str(pcb_small), "--device", "tpu", "-o", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "--device 'tpu'" in result.output
