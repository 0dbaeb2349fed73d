"""Reliability: load from many threads, injected faults, quarantine, close outcomes, bad input.

Faults are injected through the runtime's expert loader (``helpers.FaultyLoader``
wraps the real session loader), so the real cache, scheduler and executors
handle them. Tests that need an order of events hold runs at a gate instead
of sleeping.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import Future, wait

import numpy as np
import pytest
from helpers import faulty_runtime, inject, wait_idle, wide_package

from edgecoe.config import RuntimeConfig
from edgecoe.errors import InvalidInputError, RequestCancelled, RequestError
from edgecoe.package import load_package
from edgecoe.results import Result
from edgecoe.runtime import Runtime

WAIT_S = 120  # no test here waits longer for a future: a hang fails, it does not block CI


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("wide") / "wide"
    return load_package(wide_package(root, routes=["argmax", "threshold", "fanout", "stop"]), verify="full")


def item(rng: np.random.Generator, width: int = 8) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal(width).astype(np.float32)}


def assert_accounting_exact(runtime: Runtime) -> None:
    wait_idle(runtime, WAIT_S)
    for cache in runtime.caches.values():
        cache.check()
        assert cache.stats.peak_bytes <= cache.budget_bytes
        assert all(cache.pins(name) == 0 for name in runtime.package.experts)
    assert len(runtime.scheduler) == 0


def outcomes(futures: list[Future]) -> tuple[list[Result], list[BaseException]]:
    _done, not_done = wait(futures, timeout=WAIT_S)
    assert not not_done, f"{len(not_done)} requests never finished (deadlock?)"
    results = [f.result() for f in futures if f.exception() is None]
    errors = [f.exception() for f in futures if f.exception() is not None]
    return results, errors  # type: ignore[return-value]


# -- load ---------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["edgecoe", "samba"])
def test_16_threads_10000_requests_each_end_once(wide, policy):
    """16 client threads, 10,000 requests at a 25 % budget: one outcome each, accounting exact.

    About 1 % of the submissions are invalid (NaN input, undeclared metadata):
    those raise at submit, the rest all complete.
    """
    per_thread, threads = 625, 16
    futures: list[Future] = []
    rejected: list[InvalidInputError] = []
    endings: Counter = Counter()
    lock = threading.Lock()
    with Runtime(wide, config=RuntimeConfig(policy=policy, budget="25%")) as runtime:
        def client(k: int) -> None:
            rng = np.random.default_rng(k)
            mine, bad = [], []
            for i in range(per_thread):
                inputs = item(rng)
                metadata: dict[str, object] = {"kind": f"k{int(rng.integers(12))}"}
                if i % 100 == 7:
                    inputs["x"][3] = np.nan
                elif i % 100 == 57:
                    metadata["colour"] = "red"
                try:
                    future = runtime.submit(inputs, metadata, request_id=f"t{k}-{i}")
                except InvalidInputError as exc:
                    bad.append(exc)
                    continue
                future.add_done_callback(lambda f: endings.update([id(f)]))
                mine.append(future)
            with lock:
                futures.extend(mine)
                rejected.extend(bad)

        clients = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(timeout=WAIT_S)
            assert not t.is_alive(), "a submitting thread is stuck"
        results, errors = outcomes(futures)
        assert_accounting_exact(runtime)
        evictions = runtime.caches["cpu"].stats.num_evictions
    assert len(rejected) == threads * 13  # per thread: i % 100 == 7 seven times, == 57 six times
    assert len(futures) + len(rejected) == threads * per_thread
    assert errors == [] and len(results) == len(futures)
    assert len({r.request_id for r in results}) == len(results)
    assert set(endings.values()) == {1}  # every future ended exactly once
    assert evictions > 0  # the 25 % budget really churned (every expert is used; a quarter fits)


# -- faults -------------------------------------------------------------------------
def test_run_failure_of_one_item_fails_it_alone(wide):
    """A batch with a poisoned item is re-run item by item: only the poisoned request fails."""
    rng = np.random.default_rng(1)
    def poison(expert, feeds):
        return bool((feeds["x"][:, 0] == 777.0).any())
    with faulty_runtime(wide, RuntimeConfig(policy="edgecoe", budget="50%", quarantine_after=0)) as runtime:
        inject(runtime, run_fails=poison)
        futures, poisoned = [], set()
        for i in range(400):
            inputs = item(rng)
            if i % 50 == 3:
                inputs["x"][0] = 777.0
                poisoned.add(f"r{i}")
            futures.append(runtime.submit(inputs, {"kind": f"k{i % 3}"}, request_id=f"r{i}"))
        results, errors = outcomes(futures)
        assert_accounting_exact(runtime)
    assert {e.request_id for e in errors} == poisoned
    assert all(isinstance(e, RequestError) and "injected run failure" in e.cause and e.expert for e in errors)
    assert len(results) == 400 - len(poisoned)


@pytest.mark.parametrize("error", [
    MemoryError("std::bad_alloc"),
    RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory"),
])
def test_session_creation_failure_fails_that_expert_only(wide, error):
    victim = "f4"
    rng = np.random.default_rng(2)
    with faulty_runtime(wide, RuntimeConfig(policy="edgecoe", budget="25%", quarantine_after=0)) as runtime:
        inject(runtime, create_fails=lambda expert: error if expert == victim else None)
        futures = [runtime.submit(item(rng), {"kind": f"k{i % 12}"}) for i in range(240)]
        results, errors = outcomes(futures)
        assert_accounting_exact(runtime)
        assert runtime.caches["cpu"].stats.num_load_failures >= 1
    assert len(errors) == 20 and len(results) == 220
    assert all(e.expert == victim and str(error) in e.cause for e in errors)


def test_repeatedly_failing_expert_is_quarantined_then_retried(wide):
    victim = "f1"
    broken = {"on": True}
    rng = np.random.default_rng(3)
    config = RuntimeConfig(policy="samba", budget="25%", quarantine_after=3, quarantine_s=0.5)
    with faulty_runtime(wide, config) as runtime:
        created = inject(runtime, create_fails=lambda e: OSError("corrupt file") if e == victim and broken["on"]
                         else None)
        errors = [outcomes([runtime.submit(item(rng), {"kind": "k1"})])[1][0] for _ in range(10)]  # one by one
        assert len(errors) == 10
        assert created[victim] == 3  # three loads failed; the other seven failed fast, without a load
        assert sum("quarantined after 3 consecutive failures" in e.cause for e in errors) == 7
        assert "corrupt file" in runtime.health.quarantined(runtime.now_ms() / 1e3)[victim]
        others, _ = outcomes([runtime.submit(item(rng), {"kind": "k2"}) for _ in range(5)])
        assert len(others) == 5  # the rest of the package serves on
        report_now = runtime.report(0, [], 1.0)
        assert victim in report_now.quarantined and report_now.expert_failures[victim] == 3
        broken["on"] = False
        time.sleep(0.6)  # the quarantine ends: one attempt goes through, and it works
        results, errors = outcomes([runtime.submit(item(rng), {"kind": "k1"}) for _ in range(3)])
        assert len(results) == 3 and errors == []
        assert runtime.health.quarantined(runtime.now_ms() / 1e3) == {}
        assert_accounting_exact(runtime)


def test_corrupt_file_found_at_load(tmp_path):
    root = wide_package(tmp_path / "pkg")
    pkg = load_package(root, verify="quick")
    with Runtime(pkg, config=RuntimeConfig(policy="edgecoe", budget="25%")) as runtime:
        runtime.caches["cpu"].clear()
        (root / "experts" / "f0.onnx").write_bytes(b"\x08\x07garbage")
        rng = np.random.default_rng(4)
        results, errors = outcomes([runtime.submit(item(rng), {"kind": f"k{i % 4}"}) for i in range(40)])
        assert_accounting_exact(runtime)
    assert len(errors) == 10 and all(e.expert == "f0" for e in errors)
    assert any("cannot create a session" in e.cause for e in errors)
    assert len(results) == 30


# -- close --------------------------------------------------------------------------
def test_close_drain_returns_every_outcome(wide):
    rng = np.random.default_rng(5)
    runtime = Runtime(wide, config=RuntimeConfig(policy="edgecoe", budget="25%"))
    futures = [runtime.submit(item(rng), {"kind": f"k{i % 12}"}, request_id=f"d{i}") for i in range(200)]
    outcome = runtime.close(drain=True)
    assert all(f.done() for f in futures)
    assert len(outcome) <= 200 and outcome.cancelled == [] and outcome.failed == {}
    assert set(outcome.completed) <= {f"d{i}" for i in range(200)}
    assert_accounting_exact(runtime)


def test_close_without_drain_cancels_what_is_queued(wide):
    """One executor holds its first batch at a gate while 99 more requests queue;
    close(drain=False) cancels exactly those 99, and the held one still completes."""
    rng = np.random.default_rng(6)
    runtime = faulty_runtime(wide, RuntimeConfig(policy="samba", budget="25%"))
    entered, gate = threading.Event(), threading.Event()

    def hold(expert, feeds):  # type: ignore[no-untyped-def]
        entered.set()
        assert gate.wait(WAIT_S)

    inject(runtime, before_run=hold)
    futures = [runtime.submit(item(rng), {"kind": "k0"}, request_id="c0")]
    assert entered.wait(WAIT_S)
    futures += [runtime.submit(item(rng), {"kind": f"k{i % 12}"}, request_id=f"c{i}") for i in range(1, 100)]
    closing = threading.Thread(target=lambda: outcome_box.append(runtime.close(drain=False)))
    outcome_box: list = []
    closing.start()
    wait(futures[1:], timeout=WAIT_S)  # the queued ones are cancelled at once, while c0 is held
    assert all(isinstance(f.exception(), RequestCancelled) for f in futures[1:])
    gate.set()
    closing.join(WAIT_S)
    outcome = outcome_box[0]
    assert sorted(outcome.cancelled) == sorted(f"c{i}" for i in range(1, 100))
    assert outcome.completed == ["c0"] and outcome.failed == {}
    assert_accounting_exact(runtime)


def test_close_with_timeout_never_leaves_a_request_pending(wide):
    """After the first request completes every run is held at a gate: a drain with a
    timeout then cancels the rest (queued and running) and returns in time."""
    rng = np.random.default_rng(7)
    runtime = faulty_runtime(wide, RuntimeConfig(policy="samba", budget="25%"))
    gate, holding = threading.Event(), threading.Event()

    def hold_once_armed(expert, feeds):  # type: ignore[no-untyped-def]
        if holding.is_set():
            assert gate.wait(WAIT_S)

    inject(runtime, before_run=hold_once_armed)
    first = runtime.submit(item(rng), {"kind": "k0"}, request_id="w0")
    first.result(timeout=WAIT_S)
    holding.set()
    futures = [first] + [runtime.submit(item(rng), {"kind": "k0"}, request_id=f"w{i}") for i in range(1, 60)]
    started = time.monotonic()
    outcome = runtime.close(drain=True, timeout_s=0.3)
    assert time.monotonic() - started < 5
    gate.set()  # let the abandoned run end
    assert all(f.done() for f in futures)
    assert outcome.completed == [] and len(outcome) == 59  # w0 had finished before close
    assert all("close timed out" in str(futures[int(r[1:])].exception()) for r in outcome.cancelled)


# -- bad input ----------------------------------------------------------------------
@pytest.mark.parametrize("inputs, metadata, message", [
    ({"x": np.full(8, np.nan, np.float32)}, {"kind": "k0"}, "8 NaN/inf value"),
    ({"x": np.array([np.inf] + [0.0] * 7, np.float32)}, {"kind": "k0"}, "1 NaN/inf value"),
    ({"x": np.zeros(8, np.float64)}, {"kind": "k0"}, "dtype float64, expected float32"),
    ({"x": np.zeros((1, 8), np.float32)}, {"kind": "k0"}, "shape [1, 8], expected [8]"),
    ({"x": np.zeros(9, np.float32)}, {"kind": "k0"}, "shape [9], expected [8]"),
    ({}, {"kind": "k0"}, "missing ['x']"),
    ({"x": np.zeros(8, np.float32), "y": np.zeros(8, np.float32)}, {"kind": "k0"}, "unexpected ['y']"),
    ({"x": np.zeros(8, np.float32)}, {"kind": "k0", "colour": "red"}, "unknown key(s) ['colour']"),
    ({"x": np.zeros(8, np.float32)}, {"kind": "k99"}, "kind='k99' is not one of"),
    ({"x": np.zeros(8, np.float32)}, {"kind": ["k0"]}, "expected a string"),
    ({"x": np.zeros(8, np.float32)}, {}, "lacks 'kind'"),
])
def test_bad_requests_are_rejected_at_submit(wide, inputs, metadata, message):
    with Runtime(wide, config=RuntimeConfig(policy="edgecoe", budget="25%")) as runtime:
        with pytest.raises(InvalidInputError) as info:
            runtime.submit(inputs, metadata)
        assert message in str(info.value)
        assert len(runtime.scheduler) == 0 and runtime.wait_idle(0)


def test_non_finite_inputs_pass_where_the_package_allows_them(tmp_path):
    import json

    root = wide_package(tmp_path / "pkg", num_first=2, num_second=0)
    manifest = json.loads((root / "edgecoe.json").read_text())
    manifest["inputs"][0]["allow_non_finite"] = True
    (root / "edgecoe.json").write_text(json.dumps(manifest))
    with Runtime(load_package(root), config=RuntimeConfig(policy="samba")) as runtime:
        result = runtime.submit({"x": np.full(8, np.nan, np.float32)}, {"kind": "k0"}).result(timeout=WAIT_S)
    assert np.isnan(result.outputs["y"]).all()


def test_a_workload_with_bad_requests_is_refused_whole_before_anything_runs(wide):
    """Run validates every request first: a bad value midway cannot leave a run half served."""
    from edgecoe.errors import WorkloadError
    from edgecoe.workload import generate_workload

    trace = generate_workload(wide.manifest, num_requests=50, seed=8)
    trace.requests[5].metadata["colour"] = "red"
    trace.requests[9].metadata["kind"] = "k404"
    with Runtime(wide, config=RuntimeConfig(policy="edgecoe", budget="25%")) as runtime:
        before = runtime.engine.totals()
        with pytest.raises(WorkloadError) as info:
            runtime.run(trace)
        assert runtime.engine.totals() == before and len(runtime.scheduler) == 0  # nothing ran
    text = str(info.value)
    assert "(2 shown)" in text and "request r000005" in text and "colour" in text
    assert "request r000009" in text and "k404" in text


def test_expert_with_a_wrong_shape_fails_its_requests_only(tmp_path):
    """A real ONNX Runtime shape error: s0's file expects 5 features where routing feeds 8
    (quick verification does not compare I/O; the run does). Its requests fail naming s0."""
    import json

    from helpers import _mlp

    from edgecoe.package.files import record_file

    root = wide_package(tmp_path / "pkg", num_first=4, num_second=2, routes=["fanout", "stop"])
    (root / "experts" / "s0.onnx").write_bytes(_mlp(5, 16, 3, seed=9).SerializeToString())
    manifest = json.loads((root / "edgecoe.json").read_text())
    manifest["experts"]["s0"]["model"] = record_file(root, "experts/s0.onnx").model_dump()
    (root / "edgecoe.json").write_text(json.dumps(manifest))
    rng = np.random.default_rng(10)
    with Runtime(load_package(root, verify="quick"), config=RuntimeConfig(policy="edgecoe")) as runtime:
        results, errors = outcomes([runtime.submit(item(rng), {"kind": f"k{i % 4}"}) for i in range(40)])
        assert_accounting_exact(runtime)
        quarantined = runtime.health.quarantined(runtime.now_ms() / 1e3)
    # f0 and f2 fan out to s0 and s1: their requests fail at s0; f1 and f3 stop: theirs complete
    assert len(errors) == 20 and all(e.expert == "s0" for e in errors)
    assert all("invalid dimensions" in e.cause.lower() or "quarantined" in e.cause for e in errors)
    assert list(quarantined) == ["s0"]
    assert len(results) == 20 and all(r.path in (["f1"], ["f3"]) for r in results)
