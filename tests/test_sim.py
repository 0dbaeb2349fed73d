"""Simulated mode: same schedulers and cache, virtual clock, profile costs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgecoe.cli import main
from edgecoe.config import RuntimeConfig
from edgecoe.errors import InvalidInputError
from edgecoe.package import load_package
from edgecoe.package.manifest import ArgmaxRoute, ThresholdRoute
from edgecoe.profile import ArchitectureCost, DeviceProfile, ProcessorProfile
from edgecoe.sched import PRESETS
from edgecoe.sim import sample_next, simulate
from edgecoe.workload import generate_workload


def profile_for(pkg, *, budget_share=0.25, memory="uma", host=None):
    costs = {}
    for record in pkg.experts.values():
        size = record.total_bytes * 2
        costs[record.architecture] = {"cpu": ArchitectureCost(
            k_ms=size / 10e6, b_ms=0.5, max_batch=8, load_ms=size / 1e6, host_load_ms=size / 4e6,
            footprint_bytes=size)}
    total = sum(2 * r.total_bytes for r in pkg.experts.values())
    return DeviceProfile(name="test-sim", memory=memory, host_budget_bytes=host,
                         processors=[ProcessorProfile(id="cpu", budget_bytes=int(total * budget_share),
                                                      num_executors=2)], costs=costs)


@pytest.fixture(scope="module")
def pkg(pcb_small):
    return load_package(pcb_small, verify="quick")


@pytest.mark.parametrize("policy", list(PRESETS))
def test_every_request_completes_and_budget_holds(pkg, policy):
    trace = generate_workload(pkg.manifest, num_requests=500, rate_rps=400, seed=3)
    report = simulate(pkg.manifest, profile_for(pkg), trace, config=RuntimeConfig(policy=policy))
    assert report.simulated
    assert report.num_completed == 500 and report.num_failed == 0
    assert report.peak_bytes["cpu"] <= report.budget_bytes["cpu"]
    assert report.wall_s > 0 and report.throughput_rps == pytest.approx(500 / report.wall_s)


def test_simulation_is_deterministic(pkg):
    trace = generate_workload(pkg.manifest, num_requests=300, rate_rps=300, seed=4)
    a = simulate(pkg.manifest, profile_for(pkg), trace, seed=1)
    b = simulate(pkg.manifest, profile_for(pkg), trace, seed=1)
    assert a.to_dict() | {"machine": None} == b.to_dict() | {"machine": None}


def test_coserve_beats_samba_in_simulation(pkg):
    trace = generate_workload(pkg.manifest, num_requests=1000, rate_rps=1000, seed=5)
    prof = profile_for(pkg)
    samba = simulate(pkg.manifest, prof, trace, config=RuntimeConfig(policy="samba"))
    coserve = simulate(pkg.manifest, prof, trace, config=RuntimeConfig(policy="coserve"))
    assert coserve.throughput_rps > 2 * samba.throughput_rps
    assert coserve.num_switches < samba.num_switches


def test_numa_host_tier_makes_reloads_cheaper(pkg):
    trace = generate_workload(pkg.manifest, num_requests=400, rate_rps=2000, seed=6)
    uma = simulate(pkg.manifest, profile_for(pkg), trace, config=RuntimeConfig(policy="samba"))
    numa = simulate(pkg.manifest, profile_for(pkg, memory="numa", host=10**12), trace,
                    config=RuntimeConfig(policy="samba"))
    assert numa.wall_s < uma.wall_s


def test_missing_costs_are_a_clear_error(pkg):
    prof = profile_for(pkg).model_copy(update={"costs": {}})
    with pytest.raises(InvalidInputError, match="no costs for"):
        simulate(pkg.manifest, prof, generate_workload(pkg.manifest, num_requests=1))


def test_sample_next_follows_declared_fractions():
    rng = np.random.default_rng(0)
    route = ArgmaxRoute(kind="argmax", output="y", classes={1: ["d"]}, class_fractions={0: 0.25, 1: 0.75})
    draws = [bool(sample_next(route, 2, rng)) for _ in range(4000)]
    assert abs(np.mean(draws) - 0.75) < 0.03
    threshold = ThresholdRoute(kind="threshold", output="s", threshold=0.0, above=["x"], fraction_above=0.1)
    assert abs(np.mean([bool(sample_next(threshold, None, rng)) for _ in range(4000)]) - 0.1) < 0.03


def test_cli_run_simulate(pkg, tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text(profile_for(pkg).model_dump_json())
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["run", str(pkg.root), "--simulate", "--profile", str(prof),
                                       "--requests", "200", "--rate", "300", "--report", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["simulated"] is True and data["num_completed"] == 200
    # without --profile: the profile picked for this machine and package, said so
    result = CliRunner().invoke(main, ["run", str(pkg.root), "--simulate", "--requests", "50"])
    assert result.exit_code == 0, result.output
    assert "picked automatically" in " ".join(result.output.split()) and "completed 50/50" in result.output


def test_cli_run_simulate_without_any_profile_is_one_error(chain_package):
    result = CliRunner().invoke(main, ["run", str(chain_package), "--simulate"])
    assert result.exit_code == 2 and "--profile" in result.output


def test_belady_eviction_runs_with_the_true_future(pkg):
    trace = generate_workload(pkg.manifest, num_requests=600, rate_rps=600, seed=8)
    prof = profile_for(pkg, budget_share=0.3)
    lru = simulate(pkg.manifest, prof, trace, config=RuntimeConfig(policy="samba"))
    belady = simulate(pkg.manifest, prof, trace, config=RuntimeConfig(policy="samba", eviction="belady"))
    assert belady.num_completed == 600
    assert belady.num_switches <= lru.num_switches


def test_loads_share_one_storage_link(pkg):
    """Two executors loading at once queue on the storage link: the run takes at least as long as
    every load back to back (each load getting the full bandwidth would take about half)."""
    prof = profile_for(pkg, budget_share=1.0)
    prof = prof.model_copy(update={"costs": {a: {"cpu": c["cpu"].model_copy(update={"k_ms": 0.01, "b_ms": 0.01})}
                                             for a, c in prof.costs.items()}})
    trace = generate_workload(pkg.manifest, num_requests=300, rate_rps=None, seed=7)
    report = simulate(pkg.manifest, prof, trace, config=RuntimeConfig(policy="samba-parallel", num_executors=2))
    assert report.executors == {"cpu": 2} and report.num_switches > 5
    assert set(report.link_busy_s) == {"ssd"}
    assert report.wall_s >= report.link_busy_s["ssd"] > 0


def test_numa_loads_cross_storage_then_the_device_link(pkg):
    from edgecoe.bench.reference import numa_profile
    from edgecoe.loaders.simulated import CostModelLoader

    profile = numa_profile()
    loader = CostModelLoader(paper_manifest(), profile)
    cost = profile.cost("resnet101", "cuda")
    assert cost is not None and cost.host_load_ms is not None
    from_disk = loader.stages(cost, "cuda", from_host=False)
    assert [link for link, _ in from_disk] == ["ssd", "host->cuda"]
    assert sum(ms for _, ms in from_disk) == pytest.approx(cost.load_ms)  # the profiled total is kept
    assert loader.stages(cost, "cuda", from_host=True) == [("host->cuda", cost.host_load_ms)]
    assert loader.stages(cost, "cpu", from_host=False) == [("ssd", cost.load_ms)]


def paper_manifest():
    from edgecoe.bench import paper_package

    return paper_package(num_types=20, num_detectors=4).manifest


def test_reference_costs_follow_their_derivation():
    from edgecoe.bench.reference import Assumptions, numa_profile, uma_profile

    numa, uma = numa_profile(), uma_profile()
    for arch in ("resnet101", "yolov5m", "yolov5l"):
        gpu, m2 = numa.cost(arch, "cuda"), uma.cost(arch, "coreml")
        assert gpu is not None and m2 is not None
        t1 = gpu.k_ms + gpu.b_ms
        assert t1 == pytest.approx(gpu.load_ms * 0.05 / 0.95, rel=1e-3)  # loading is 95 % of latency from SSD
        assert m2.k_ms + m2.b_ms == pytest.approx(t1 * 34.1 / 3.6, rel=1e-3)  # scaled by published FP32 peaks
    skewed = numa_profile(Assumptions(k_share=0.25, load_overhead_ms=20.0)).cost("resnet101", "cuda")
    middle = numa.cost("resnet101", "cuda")
    assert skewed is not None and middle is not None
    assert skewed.k_ms == pytest.approx((middle.k_ms + middle.b_ms) * 0.25, rel=1e-3)
    assert skewed.load_ms == pytest.approx(middle.load_ms + 20.0, abs=0.1)


def test_paper_mode_keeps_each_processors_budget(tmp_path):
    out = tmp_path / "paper.json"
    result = CliRunner().invoke(main, ["bench", "--paper", "numa", "--requests", "200", "--policies",
                                       "samba,edgecoe", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())["points"][0]["entries"]["edgecoe"]["report"]
    assert report["budget_bytes"] == {"cuda:0": 10_800_000_000, "cpu": 2_000_000_000, "host": 12_000_000_000}
    assert set(report["link_busy_s"]) <= {"ssd", "host->cuda", "host->cpu"} and report["link_busy_s"]["ssd"] > 0


def test_numa_preload_stages_the_next_likely_experts_in_host_memory():
    from edgecoe.bench import paper_package
    from edgecoe.bench.reference import numa_profile
    from edgecoe.engine import build_engine
    from edgecoe.loaders.simulated import CostModelLoader

    manifest = paper_package().manifest
    profile = numa_profile()
    loader = CostModelLoader(manifest, profile)
    engine = build_engine(manifest, profile, RuntimeConfig(policy="coserve"), loader)
    host = loader.host
    assert host is not None and host.used_bytes > 0.9 * host.budget_bytes
    resident = set().union(*(c.members() for c in engine.caches.values()))
    staged = [e for e in manifest.experts if host.contains(e)]
    assert staged and not resident & set(staged)  # host memory holds what the device does not
    ranked = sorted(manifest.experts, key=lambda n: -manifest.experts[n].usage_probability)
    assert max(ranked.index(e) for e in resident) < max(ranked.index(e) for e in staged)
