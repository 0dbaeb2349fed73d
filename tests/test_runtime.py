"""The runtime end to end on the pcb-small demo: correctness, accounting, failures, API."""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import wait
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import faulty_runtime, inject

import edgecoe
from edgecoe.config import RuntimeConfig, parse_budget
from edgecoe.errors import InvalidInputError, RequestCancelled, RequestError
from edgecoe.package import load_package, next_experts
from edgecoe.profile import ProcessorProfile
from edgecoe.providers import (
    ProviderUnavailableError,
    choose_providers,
    coreml_cache_options,
    create_session,
    validate_session_config,
)
from edgecoe.runtime import Runtime
from edgecoe.sched import PRESETS
from edgecoe.workload import generate_workload, materialize


@pytest.fixture(scope="module")
def pkg(pcb_small):
    return load_package(pcb_small, verify="quick")


def sequential_reference(pkg, image, component_type):
    """Run the experts' sessions directly, one after another, as routing says."""
    expert = pkg.manifest.entry.experts[component_type]
    path = []
    while True:
        session = ort.InferenceSession(str(pkg.model_path(expert)), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(names, {"image": image[None]}), strict=False))
        path.append(expert)
        targets = next_experts(pkg.experts[expert].route, outputs, 0)
        if not targets:
            return {k: v[0] for k, v in outputs.items()}, path
        expert = targets[0]


@pytest.mark.parametrize("policy", list(PRESETS))
def test_results_equal_direct_sequential_run(pkg, policy):
    trace = generate_workload(pkg.manifest, num_requests=12, dist="uniform", go_on=0.5, seed=11)
    with Runtime(pkg, config=RuntimeConfig(policy=policy, budget="30%")) as runtime:
        report = runtime.run(trace)
        futures = {}
        for request in trace.requests[:6]:
            image = materialize(request, pkg.manifest.inputs, Path("."))["image"]
            futures[request.id] = (runtime.submit({"image": image}, request.metadata, request_id="again-" + request.id),
                                   image, str(request.metadata["component_type"]))
        for future, image, ctype in futures.values():
            result = future.result(timeout=60)
            expected, path = sequential_reference(pkg, image, ctype)
            assert result.path == path
            assert result.outputs.keys() == expected.keys()
            for name in expected:
                np.testing.assert_allclose(result.outputs[name], expected[name], rtol=1e-4, atol=1e-5)
    assert report.num_completed == 12 and report.num_failed == 0


@pytest.mark.parametrize("policy", ["samba", "edgecoe"])
def test_no_request_lost_or_duplicated_and_budget_kept(pkg, policy):
    trace = generate_workload(pkg.manifest, num_requests=150, dist="zipf:1.1", rate_rps=2000, seed=2)
    with Runtime(pkg, config=RuntimeConfig(policy=policy, budget="25%")) as runtime:
        report = runtime.run(trace)
        cache = runtime.caches["cpu"]
        assert cache.stats.peak_bytes <= cache.budget_bytes
        cache.check()
        assert all(cache.pins(n) == 0 for n in pkg.experts)
    assert report.num_completed == 150 and report.num_failed == 0
    assert report.num_switches > 0 and report.peak_bytes["cpu"] <= report.budget_bytes["cpu"]
    assert report.throughput_rps > 0 and report.latency_ms["p99"] >= report.latency_ms["p50"]


def test_edgecoe_switches_less_than_samba_on_a_queued_trace(pkg):
    """The same 200 requests queued before anything runs (the first run waits at a gate until
    all are submitted), so each policy sees the whole queue: edgecoe groups, samba does not."""
    trace = generate_workload(pkg.manifest, num_requests=200, dist="zipf:1.1", seed=4)
    items = [(materialize(r, pkg.manifest.inputs, Path("."))["image"], r.metadata) for r in trace.requests]
    switches = {}
    for policy in ("samba", "edgecoe"):
        with faulty_runtime(pkg, RuntimeConfig(policy=policy, budget="25%")) as runtime:
            gate = threading.Event()
            inject(runtime, before_run=lambda expert, feeds, gate=gate: gate.wait(60))
            before = runtime.caches["cpu"].stats.num_misses
            futures = [runtime.submit({"image": image}, meta) for image, meta in items]
            gate.set()
            assert all(f.exception(timeout=120) is None for f in futures)
            switches[policy] = runtime.caches["cpu"].stats.num_misses - before
    assert switches["edgecoe"] < switches["samba"] / 2


def test_concurrent_submit_from_threads(pkg):
    trace = generate_workload(pkg.manifest, num_requests=80, dist="uniform", seed=5)
    images = [materialize(r, pkg.manifest.inputs, Path("."))["image"] for r in trace.requests]
    results = []
    lock = threading.Lock()
    with Runtime(pkg, config=RuntimeConfig(policy="edgecoe", budget="25%")) as runtime:
        def client(k):
            futures = [runtime.submit({"image": images[i]}, trace.requests[i].metadata)
                       for i in range(k, len(images), 4)]
            got = [f.result(timeout=60) for f in futures]
            with lock:
                results.extend(got)
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert len(results) == 80
    assert len({r.request_id for r in results}) == 80


def test_submit_rejects_bad_input_before_scheduling(pkg):
    good = np.zeros((3, 64, 64), np.float32)
    with Runtime(pkg, config=RuntimeConfig(policy="samba", budget="25%")) as runtime:
        with pytest.raises(InvalidInputError, match="dtype float64, expected float32"):
            runtime.submit({"image": good.astype(np.float64)}, {"component_type": "res-0201"})
        with pytest.raises(InvalidInputError, match=r"shape \[64, 64\]"):
            runtime.submit({"image": good[0]}, {"component_type": "res-0201"})
        with pytest.raises(InvalidInputError, match="missing \\['image'\\]"):
            runtime.submit({"pixels": good}, {"component_type": "res-0201"})
        with pytest.raises(InvalidInputError, match="component_type='nope'"):
            runtime.submit({"image": good}, {"component_type": "nope"})
        assert len(runtime.scheduler) == 0


def test_failing_expert_fails_only_its_requests(pcb_small, tmp_path):
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(pcb_small, copy)
    pkg = load_package(copy, verify="quick")
    victim = pkg.manifest.entry.experts["cap-0201"]
    with Runtime(pkg, config=RuntimeConfig(policy="edgecoe", budget="25%")) as runtime:
        runtime.caches["cpu"].clear()
        (copy / "experts" / f"{victim}.onnx").write_bytes(b"corrupted after load")
        trace = generate_workload(pkg.manifest, num_requests=60, dist="uniform", seed=9)
        report = runtime.run(trace)
    bad = sum(1 for r in trace.requests if r.metadata["component_type"] == "cap-0201")
    assert bad > 0
    assert report.num_failed == bad and report.num_completed == 60 - bad
    assert any(victim in cause for cause in report.errors)


def test_failure_error_names_expert_and_cause(pcb_small, tmp_path):
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(pcb_small, copy)
    pkg = load_package(copy, verify="quick")
    with Runtime(pkg, config=RuntimeConfig(policy="samba", budget="25%")) as runtime:
        runtime.caches["cpu"].clear()
        (copy / "experts" / "cls-res-0201.onnx").write_bytes(b"junk")
        future = runtime.submit({"image": np.zeros((3, 64, 64), np.float32)}, {"component_type": "res-0201"})
        with pytest.raises(RequestError) as info:
            future.result(timeout=30)
        assert info.value.expert == "cls-res-0201" and "cannot create a session" in str(info.value)


def test_close_without_drain_cancels_queued(pkg):
    """The only executor is held in its first run; every request queued behind it is cancelled."""
    runtime = faulty_runtime(pkg, RuntimeConfig(policy="samba", budget="25%"))
    entered, gate = threading.Event(), threading.Event()

    def hold(expert, feeds):  # type: ignore[no-untyped-def]
        entered.set()
        assert gate.wait(60)

    inject(runtime, before_run=hold)
    image = np.zeros((3, 64, 64), np.float32)
    types = list(pkg.manifest.entry.experts) * 3
    futures = [runtime.submit({"image": image}, {"component_type": types[0]})]
    assert entered.wait(60)
    futures += [runtime.submit({"image": image}, {"component_type": t}) for t in types[1:]]
    threading.Timer(0.0, lambda: (wait(futures[1:], timeout=60), gate.set())).start()
    runtime.close(drain=False)
    cancelled = [f for f in futures if isinstance(f.exception(timeout=30), RequestCancelled)]
    assert cancelled == futures[1:]  # exactly the queued ones
    assert futures[0].result(timeout=30).path[0] == pkg.manifest.entry.experts[types[0]]
    with pytest.raises(RuntimeError, match="closed"):
        runtime.submit({"image": image}, {"component_type": "res-0201"})


def test_expert_that_never_fits_is_a_startup_error(pkg):
    with pytest.raises(InvalidInputError, match="can never fit"):
        Runtime(pkg, config=RuntimeConfig(policy="samba", budget=1000))


def test_load_api_and_context_manager(pcb_small):
    with edgecoe.load(pcb_small, policy="coserve", budget="50%") as runtime:
        assert runtime.engine.preset.scheduler == "coserve"
        assert runtime.caches["cpu"].used_bytes > 0  # preloaded
    with pytest.raises(InvalidInputError, match="unknown policy 'fast'"):
        edgecoe.load(pcb_small, policy="fast")


def test_parse_budget_forms():
    assert parse_budget("25%", total_bytes=1000) == 250
    assert parse_budget("1.5GiB", total_bytes=1) == int(1.5 * 1024**3)
    assert parse_budget("800MB", total_bytes=1) == 800_000_000
    assert parse_budget(123, total_bytes=1) == 123
    with pytest.raises(InvalidInputError, match="expected bytes"):
        parse_budget("lots", total_bytes=1)
    for bad in ("nan%", "inf%", "-inf%", "%"):
        with pytest.raises(InvalidInputError):
            parse_budget(bad, total_bytes=1000)


def test_a_share_of_the_total_is_exact():
    """In floats, 100 % of 6 % of totals came out one byte short: the last expert missed the preload."""
    for total in (393_600_001, 7_550_123_457, 10**12 + 7, 2**53 - 1):
        assert parse_budget("100%", total_bytes=total) == total
        assert parse_budget("50%", total_bytes=total) == total // 2
        assert parse_budget("12.5%", total_bytes=total) == total // 8


def test_missing_provider_is_an_error_or_a_warned_fallback():
    gpu = ProcessorProfile(id="cuda:0", budget_bytes=1 << 30)
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider"):
        choose_providers(gpu, available=["CPUExecutionProvider"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        choice = choose_providers(gpu, available=["CPUExecutionProvider"], allow_cpu_fallback=True)
    assert choice.fell_back and choice.providers == [("CPUExecutionProvider", {})]
    assert any("falling back" in str(w.message) for w in caught)


def test_cuda_and_coreml_provider_options():
    gpu = ProcessorProfile(id="cuda:1", budget_bytes=2_000_000_000)
    choice = choose_providers(gpu, available=["CUDAExecutionProvider", "CPUExecutionProvider"])
    name, options = choice.providers[0]
    assert name == "CUDAExecutionProvider"
    assert options["device_id"] == "1" and options["gpu_mem_limit"] == "2000000000"
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    assert choice.providers[1][0] == "CPUExecutionProvider"
    apple = ProcessorProfile(id="coreml", budget_bytes=1 << 30, provider_options={"MLComputeUnits": "CPUAndGPU"})
    _, options = choose_providers(apple, available=["CoreMLExecutionProvider"]).providers[0]
    assert options == {"ModelFormat": "MLProgram", "MLComputeUnits": "CPUAndGPU"}
    keyed = coreml_cache_options(options, Path("/cache"), "ab" * 32)
    assert keyed["ModelCacheDirectory"] == "/cache/" + ("ab" * 16)
    typo = ProcessorProfile(id="cuda:0", budget_bytes=1, provider_options={"gpu_mem_limt": 5})
    with pytest.raises(InvalidInputError, match="gpu_mem_limt"):
        choose_providers(typo, available=["CUDAExecutionProvider"])


def test_session_config_keys_are_validated(pkg):
    with pytest.raises(InvalidInputError, match="session.disable_prepackin"):
        validate_session_config({"session.disable_prepackin": "1"})
    session = create_session(pkg.model_path("cls-res-0201"), session_config={"session.disable_prepacking": "1"})
    assert session.get_inputs()[0].name == "image"


def test_report_counts_only_loads_made_while_serving(pkg):
    """The start-up preload is not serving time: with every expert preloaded nothing loads while
    serving, so the report's switches and load time are both zero."""
    trace = generate_workload(pkg.manifest, num_requests=60, rate_rps=600, seed=8)
    with Runtime(pkg, config=RuntimeConfig(policy="coserve", budget="100%")) as runtime:  # room for every expert
        assert runtime.caches["cpu"].members() == set(pkg.experts)
        assert runtime.engine.totals().load_seconds > 0  # the preload took time
        report = runtime.run(trace)
    assert report.num_completed == 60 and report.num_switches == 0
    assert report.load_s == 0.0
