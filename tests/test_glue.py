"""Packages of models as published: input mapping, constants and scalars, route-dependent inputs,
transforms with fan-out and fan-in, static batches, batch axes other than 0, stateful streams,
kept outputs, and export's sizing of verification inputs."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import faulty_runtime, inject, linear_model, write_spec
from onnx import TensorProto, helper, numpy_helper

import edgecoe
from edgecoe.config import RuntimeConfig
from edgecoe.errors import ExportError, InvalidInputError, PackageError, RequestError
from edgecoe.execution import run_isolating
from edgecoe.export import export_package
from edgecoe.package import load_package
from edgecoe.package.manifest import ExpertRecord


def _model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def scale_model() -> onnx.ModelProto:
    """y = x * scale, with ``scale`` a rank-0 input."""
    return _model([helper.make_node("Mul", ["x", "scale"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
                   helper.make_tensor_value_info("scale", TensorProto.FLOAT, [])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])


def fixed_batch_model() -> onnx.ModelProto:
    """y = x @ W with a batch dimension fixed at 1 (as many published models are exported)."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "W")
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])


def stateful_model() -> onnx.ModelProto:
    """A streaming model: stateN = state + x (state [2, batch, 4], its batch on axis 1),
    out = stateN summed over its first axis. Over a stream, out_k = 2 * (x_1 + ... + x_k)."""
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
    return _model([helper.make_node("Add", ["state", "x"], ["stateN"]),
                   helper.make_node("ReduceSum", ["stateN", "axes"], ["out"], keepdims=0)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
                   helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4]),
                   helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 4])], [axes])


def sequence_output_model() -> onnx.ModelProto:
    """y = x + 1, plus a sequence output (as some published models have)."""
    one = numpy_helper.from_array(np.ones(4, dtype=np.float32), "one")
    return _model([helper.make_node("Add", ["x", "one"], ["y"]),
                   helper.make_node("SequenceConstruct", ["x", "y"], ["seq"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
                   helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)], [one])


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


# -- a pipeline with glue: detector -> (split into parts) -> recogniser -> (decode) ---------------------

def split_parts(call):  # type: ignore[no-untyped-def]
    """One item per score the detector gave above ``min_score``: a slice of the page, in order."""
    scores = call.output("det", "y")
    page = call.input("page")
    return [{"part": page[i:i + 4]} for i, s in enumerate(scores) if s > call.args["min_score"]]


def decode(call):  # type: ignore[no-untyped-def]
    return {"text": np.asarray("+" if float(call.outputs["y"].sum()) > 0 else "-")}


def glue_package(tmp_path: Path) -> Path:
    det = linear_model(in_name="x", out_name="y", in_dim=8, out_dim=3, seed=11)
    rec = linear_model(in_name="x", out_name="y", in_dim=4, out_dim=2, seed=12)
    onnx.save_model(det, str(tmp_path / "det.onnx"))
    onnx.save_model(rec, str(tmp_path / "rec.onnx"))
    spec = {
        "name": "glue", "entry": {"key": "k", "experts": {"doc": "det"}},
        "experts": {
            "det": {"source": {"onnx": "det.onnx"}, "feeds": {"x": "request:page"},
                    "route": {"kind": "fanout", "next": ["rec"]}},
            "rec": {"source": {"onnx": "rec.onnx"}, "feeds": {"x": "prepared:part"},
                    "prepare": {"transform": "split_parts", "args": {"min_score": -0.5}},
                    "finish": {"transform": "decode"}},
        },
    }
    return export_package(write_spec(tmp_path / "spec.json", spec), tmp_path / "pkg").package


def _direct(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    w = _weights(model)
    return x @ w["W"] + w["B"]


def test_feeds_rename_inputs_and_a_transform_fans_out_and_back_in(tmp_path):
    pkg = glue_package(tmp_path)
    manifest = load_package(pkg).manifest
    assert [i.name for i in manifest.inputs] == ["page"]  # named by the feed, not the model's "x"
    assert manifest.transforms() == ["decode", "split_parts"]
    det = linear_model(in_name="x", out_name="y", in_dim=8, out_dim=3, seed=11)
    rec = linear_model(in_name="x", out_name="y", in_dim=4, out_dim=2, seed=12)
    rng = np.random.default_rng(0)
    with edgecoe.load(pkg, transforms={"split_parts": split_parts, "decode": decode}) as rt:
        pages = [rng.standard_normal(8).astype(np.float32) for _ in range(6)]
        futures = [rt.submit({"page": p}, {"k": "doc"}) for p in pages]
        for page, future in zip(pages, futures, strict=True):
            result = future.result(timeout=60)
            scores = _direct(det, page)
            kept = [i for i, s in enumerate(scores) if s > -0.5]
            items = result.items.get("rec", [])
            assert len(items) == len(kept)
            for i, item in zip(kept, items, strict=True):  # fan-in keeps the detector's order
                expected = _direct(rec, page[i:i + 4])
                np.testing.assert_allclose(item["y"], expected, rtol=1e-5, atol=1e-5)
                assert str(item["text"]) == ("+" if expected.sum() > 0 else "-")


def test_missing_transform_is_named_at_load_and_a_failing_one_fails_its_request_only(tmp_path):
    pkg = glue_package(tmp_path)
    with pytest.raises(InvalidInputError, match=r"not provided: \['split_parts'\]"):
        edgecoe.load(pkg, transforms={"decode": decode})

    def picky(call):  # type: ignore[no-untyped-def]
        if float(call.input("page")[0]) > 0:
            raise ValueError("page upside down")
        return split_parts(call)

    page_ok = -np.ones(8, dtype=np.float32)
    page_bad = np.ones(8, dtype=np.float32)
    with edgecoe.load(pkg, transforms={"split_parts": picky, "decode": decode}) as rt:
        bad, ok = rt.submit({"page": page_bad}, {"k": "doc"}), rt.submit({"page": page_ok}, {"k": "doc"})
        with pytest.raises(RequestError, match=r"transform 'split_parts' \(prepare of expert 'rec'\).*upside down"):
            bad.result(timeout=60)
        assert ok.result(timeout=60).path[0] == "det"


def test_fan_out_is_bounded(tmp_path):
    pkg = glue_package(tmp_path)

    def flood(call):  # type: ignore[no-untyped-def]
        return [{"part": np.zeros(4, np.float32)}] * 50

    with (edgecoe.load(pkg, transforms={"split_parts": flood, "decode": decode}, max_fanout=10) as rt,
          pytest.raises(RequestError, match="fanned one item out to 50 items; the limit is max_fanout=10")):
        rt.submit({"page": np.zeros(8, np.float32)}, {"k": "doc"}).result(timeout=60)


# -- constants and scalars; route-dependent inputs -------------------------------------------------------

def two_branch_package(tmp_path: Path) -> Path:
    onnx.save_model(scale_model(), str(tmp_path / "scale.onnx"))
    onnx.save_model(linear_model(in_name="x", out_name="y", in_dim=6, out_dim=2, seed=3), str(tmp_path / "lin.onnx"))
    onnx.save_model(linear_model(in_name="x", out_name="y", in_dim=5, out_dim=2, seed=4), str(tmp_path / "late.onnx"))
    spec = {
        "name": "branches",
        "metadata": {"k": {"values": ["audio", "image"]}},
        "entry": {"key": "k", "experts": {"audio": "scale", "image": "lin"}},
        "constants": {"gain": {"dtype": "float32", "shape": [], "values": [2.5]}},
        "experts": {
            "scale": {"source": {"onnx": "scale.onnx"}, "feeds": {"x": "request:audio", "scale": "const:gain"}},
            "lin": {"source": {"onnx": "lin.onnx"}, "feeds": {"x": "request:image"},
                    "route": {"kind": "fanout", "next": ["late"]}},
            "late": {"source": {"onnx": "late.onnx"}, "feeds": {"x": "request:extra"}},
        },
    }
    return export_package(write_spec(tmp_path / "spec.json", spec), tmp_path / "pkg").package


def test_a_scalar_constant_feeds_a_rank0_input_shared_by_the_batch(tmp_path):
    pkg = two_branch_package(tmp_path)
    record = load_package(pkg).experts["scale"]
    assert record.batch.axis("scale") is None  # a scalar has no batch axis
    with edgecoe.load(pkg) as rt:
        xs = [np.full(4, i, np.float32) for i in range(16)]
        futures = [rt.submit({"audio": x}, {"k": "audio"}) for x in xs]
        for x, future in zip(xs, futures, strict=True):
            np.testing.assert_allclose(future.result(timeout=60).outputs["y"], x * 2.5)


def test_a_request_carries_only_what_its_route_reads(tmp_path):
    pkg = two_branch_package(tmp_path)
    with edgecoe.load(pkg) as rt:
        # an audio request carries no image and no extra
        assert rt.submit({"audio": np.ones(4, np.float32)}, {"k": "audio"}).result(timeout=60).path == ["scale"]
        with pytest.raises(InvalidInputError, match=r"missing \['image'\].*expert 'lin'"):
            rt.submit({"audio": np.ones(4, np.float32)}, {"k": "image"})
        # the image branch goes on to an expert that reads `extra`: a request without it fails there, by name
        future = rt.submit({"image": np.ones(6, np.float32)}, {"k": "image"})
        with pytest.raises(RequestError, match=r"expert 'late' input 'x' comes from request input 'extra', "
                                               r"but the request did not carry it"):
            future.result(timeout=60)
        full = rt.submit({"image": np.ones(6, np.float32), "extra": np.ones(5, np.float32)}, {"k": "image"})
        assert full.result(timeout=60).path == ["lin", "late"]


# -- static batches, batch axes, state ---------------------------------------------------------------

def test_a_fixed_batch_of_one_is_never_batched_beyond_it(tmp_path):
    onnx.save_model(fixed_batch_model(), str(tmp_path / "fixed.onnx"))
    spec = {"name": "fixed", "entry": {"key": "k", "experts": {"a": "fixed"}},
            "experts": {"fixed": {"source": {"onnx": "fixed.onnx"}}}}
    pkg = load_package(export_package(write_spec(tmp_path / "spec.json", spec), tmp_path / "pkg").package)
    assert pkg.experts["fixed"].batch.max == 1
    sizes: list[int] = []
    gate = threading.Event()
    rt = faulty_runtime(pkg, RuntimeConfig())
    try:
        inject(rt, before_run=lambda expert, feeds: (gate.wait(60), sizes.append(feeds["x"].shape[0])))
        futures = [rt.submit({"x": np.full(4, i, np.float32)}, {"k": "a"}) for i in range(40)]
        gate.set()  # 40 requests queued together: a batching scheduler would take many at once
        weights = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
        for i, future in enumerate(futures):
            np.testing.assert_allclose(future.result(timeout=60).outputs["y"], np.full(4, i, np.float32) @ weights,
                                       rtol=1e-5)
        report = rt.report(40, [1.0] * 40, 1.0)
    finally:
        gate.set()
        rt.close()
    assert len(sizes) == 40 and set(sizes) == {1}
    assert report.isolated_batches == 0


def test_a_batch_that_fails_whole_is_rerun_and_counted():
    record = ExpertRecord.model_validate({
        "architecture": "a", "model": {"path": "m.onnx", "bytes": 1, "sha256": "0" * 64},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 2]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 2]}], "usage_probability": 1.0})

    class OneAtATime:
        def run(self, names, feeds):  # type: ignore[no-untyped-def]
            if feeds["x"].shape[0] != 1:
                raise RuntimeError("Got invalid dimensions for input: x index: 0 Got: 2 Expected: 1")
            return [feeds["x"] * 2]

    items = [{"x": np.ones(2, np.float32)}, {"x": np.zeros(2, np.float32)}]
    outcome = run_isolating(OneAtATime(), record, items)
    assert outcome.isolated and not outcome.failed and outcome.batch_ms is None
    np.testing.assert_allclose(outcome.ran[0][1]["y"], 2 * np.ones(2))
    capped = record.model_copy(update={"batch": record.batch.model_copy(update={"max": 1})})
    outcome = run_isolating(OneAtATime(), capped, items)
    assert not outcome.isolated and len(outcome.ran) == 2


def stateful_spec(axes: dict | None) -> dict:
    expert: dict = {"source": {"onnx": "state.onnx"}, "state": [{"input": "state", "output": "stateN"}]}
    if axes is not None:
        expert["batch"] = {"axes": axes}
    return {"name": "stream", "entry": {"key": "k", "experts": {"s": "acc"}}, "experts": {"acc": expert}}


def test_a_batch_axis_other_than_0_is_refused_at_export_unless_declared(tmp_path):
    onnx.save_model(stateful_model(), str(tmp_path / "state.onnx"))
    with pytest.raises(ExportError, match=r"expert acc: .*batch axes .*declare batch.axes"):
        export_package(write_spec(tmp_path / "bad.json", stateful_spec(None)), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    pkg = export_package(write_spec(tmp_path / "spec.json", stateful_spec({"state": 1, "stateN": 1})),
                         tmp_path / "pkg").package
    assert load_package(pkg).experts["acc"].batch.axes == {"state": 1, "stateN": 1}


def test_streams_carry_state_in_order_independently_and_refuse_a_dropped_stream(tmp_path):
    onnx.save_model(stateful_model(), str(tmp_path / "state.onnx"))
    pkg = export_package(write_spec(tmp_path / "spec.json", stateful_spec({"state": 1, "stateN": 1})),
                         tmp_path / "pkg").package
    assert [i.name for i in load_package(pkg).manifest.inputs] == ["x"]  # the state is not a request input
    with edgecoe.load(pkg, max_streams=2) as rt:
        with pytest.raises(InvalidInputError, match="expert 'acc' is stateful: submit its requests with a stream"):
            rt.submit({"x": np.ones(4, np.float32)}, {"k": "s"})
        chunks = {s: [np.full(4, s * 10 + i, np.float32) for i in range(5)] for s in (1, 2)}
        futures: dict[int, list] = {1: [], 2: []}
        for i in range(5):  # interleaved and all in flight at once: each stream still runs in order
            for s in (1, 2):
                futures[s].append(rt.submit({"x": chunks[s][i]}, {"k": "s"}, stream=f"cam{s}", stream_start=i == 0))
        for s in (1, 2):
            for i, future in enumerate(futures[s]):
                np.testing.assert_allclose(future.result(timeout=60).outputs["out"], 2 * sum(chunks[s][:i + 1]))
        rt.submit({"x": np.ones(4, np.float32)}, {"k": "s"}, stream="cam2").result(timeout=60)  # cam1 now oldest
        rt.submit({"x": np.ones(4, np.float32)}, {"k": "s"}, stream="cam3", stream_start=True).result(timeout=60)
        # cam1 was least recently used: dropped to hold at most 2 streams
        with pytest.raises(InvalidInputError, match="stream 'cam1' is not held.*max_streams=2.*stream_start=True"):
            rt.submit({"x": np.ones(4, np.float32)}, {"k": "s"}, stream="cam1")
        restarted = rt.submit({"x": np.ones(4, np.float32)}, {"k": "s"}, stream="cam1", stream_start=True)
        np.testing.assert_allclose(restarted.result(timeout=60).outputs["out"], 2 * np.ones(4))


def test_a_cancelled_request_waiting_in_its_stream_lets_the_next_one_run(tmp_path):
    onnx.save_model(stateful_model(), str(tmp_path / "state.onnx"))
    pkg = load_package(export_package(write_spec(tmp_path / "spec.json", stateful_spec({"state": 1, "stateN": 1})),
                                      tmp_path / "pkg").package)
    gate = threading.Event()
    rt = faulty_runtime(pkg, RuntimeConfig())
    try:
        inject(rt, before_run=lambda expert, feeds: gate.wait(60))
        first = rt.submit({"x": np.ones(4, np.float32)}, {"k": "s"}, stream="a", stream_start=True)
        second = rt.submit({"x": np.full(4, 5, np.float32)}, {"k": "s"}, stream="a")
        third = rt.submit({"x": np.full(4, 7, np.float32)}, {"k": "s"}, stream="a")
        assert second.cancel()  # it waits behind `first`, which is held in its run
        gate.set()
        np.testing.assert_allclose(first.result(timeout=60).outputs["out"], 2 * np.ones(4))
        np.testing.assert_allclose(third.result(timeout=60).outputs["out"], 2 * np.full(4, 8.0))
    finally:
        gate.set()
        rt.close()


# -- outputs ----------------------------------------------------------------------------------------

def test_a_sequence_output_is_refused_unless_dropped_and_kept_outputs_are_all_that_run(tmp_path):
    onnx.save_model(sequence_output_model(), str(tmp_path / "seq.onnx"))
    spec = {"name": "seq", "entry": {"key": "k", "experts": {"a": "e"}}, "experts": {"e": {"source": {"onnx": "seq.onnx"}}}}
    with pytest.raises(ExportError, match=r"outputs \['seq'\] are sequences or maps.*keep_outputs.*\['y'\]"):
        export_package(write_spec(tmp_path / "bad.json", spec), tmp_path / "bad")
    spec["experts"]["e"]["keep_outputs"] = ["y"]
    pkg = export_package(write_spec(tmp_path / "spec.json", spec), tmp_path / "pkg").package
    record = load_package(pkg, verify="full").experts["e"]
    assert [o.name for o in record.outputs] == ["y"] and record.dropped_outputs == ["seq"]
    with edgecoe.load(pkg) as rt:
        result = rt.submit({"x": np.zeros(4, np.float32)}, {"k": "a"}).result(timeout=60)
    assert list(result.outputs) == ["y"]
    np.testing.assert_allclose(result.outputs["y"], np.ones(4))


# -- the manifest refuses feeds that cannot exist ---------------------------------------------------

def test_feeds_that_cannot_exist_are_named(tmp_path):
    pkg = two_branch_package(tmp_path)
    manifest = json.loads((pkg / "edgecoe.json").read_text())
    manifest["experts"]["late"]["feeds"]["x"] = {"expert": "scale", "output": "y"}  # not an ancestor of late
    manifest["experts"]["scale"]["feeds"]["scale"] = {"const": "missing"}
    manifest["constants"]["gain"]["values"] = [1.0, 2.0]
    (pkg / "edgecoe.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError) as info:
        load_package(pkg)
    text = str(info.value)
    assert "constants.gain" in text and "holds 1 value(s), `values` has 2" in text
    manifest["constants"]["gain"]["values"] = [1.0]
    (pkg / "edgecoe.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError) as info:
        load_package(pkg)
    text = str(info.value)
    assert "experts.late.feeds.x" in text and "expert 'scale' never runs before 'late'" in text
    assert "experts.scale.feeds.scale" in text and "'missing' is not a package constant" in text


# -- export: sizing verification inputs --------------------------------------------------------------

def rows_of_three_model() -> onnx.ModelProto:
    """raw [-1, ?] (a -1 dimension as some converters write, and an unnamed one) reshaped to rows of 3 and summed:
    the default verification size (8 values per item) does not divide into rows of 3."""
    shape = numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "shape")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    model = _model([helper.make_node("Reshape", ["raw", "shape"], ["rows"]),
                    helper.make_node("ReduceSum", ["rows", "axes"], ["y"], keepdims=0)],
                   [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [-1, None])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])], [shape, axes])
    return model


def test_export_sizes_inputs_from_samples_or_shapes_and_explains_a_failure(tmp_path):
    onnx.save_model(rows_of_three_model(), str(tmp_path / "m.onnx"))
    spec = {"name": "m", "entry": {"key": "k", "experts": {"a": "e"}},
            "experts": {"e": {"source": {"onnx": "m.onnx"}, "batch": {"max": 1}}}}
    with pytest.raises(ExportError) as info:
        export_package(write_spec(tmp_path / "bad.json", spec), tmp_path / "bad")
    message = str(info.value)
    assert "expert e" in message and "raw: float32[2, 8]" in message and "dim_defaults" in message
    assert "input_shapes" in message and "\n" not in message
    spec["experts"]["e"]["input_shapes"] = {"raw": [3]}
    with pytest.raises(ExportError, match=r"input_shapes.raw = \[3\] does not fit the model's \[\?, \?\]"):
        export_package(write_spec(tmp_path / "bad.json", spec), tmp_path / "bad")
    spec["experts"]["e"]["input_shapes"] = {"raw": [1, 6]}
    export_package(write_spec(tmp_path / "spec.json", spec), tmp_path / "pkg")
    np.savez(tmp_path / "sample.npz", raw=np.ones((1, 9), np.float32))
    spec["experts"]["e"].pop("input_shapes")
    spec["experts"]["e"]["sample_inputs"] = "sample.npz"
    export_package(write_spec(tmp_path / "spec.json", spec), tmp_path / "pkg2")
    spec["experts"]["e"]["sample_inputs"] = {"raw": "missing.npy"}
    with pytest.raises(Exception, match="missing.npy is not a file"):
        export_package(write_spec(tmp_path / "spec2.json", spec), tmp_path / "pkg3")


def test_error_causes_are_reported_whole(tmp_path):
    pkg = glue_package(tmp_path)
    long = "x" * 300

    def loud(call):  # type: ignore[no-untyped-def]
        raise ValueError(long)

    with edgecoe.load(pkg, transforms={"split_parts": loud, "decode": decode}) as rt:
        with pytest.raises(RequestError):
            rt.submit({"page": np.zeros(8, np.float32)}, {"k": "doc"}).result(timeout=60)
        report = rt.report(1, [], 1.0)
    assert any(long in cause for cause in report.errors)


# -- traces of real inputs, the command line ----------------------------------------------------------

def test_a_trace_from_samples_carries_what_each_route_reads_and_streams_stateful_requests(tmp_path):
    from edgecoe.workload import generate_from_samples, read_workload

    pkg = two_branch_package(tmp_path)
    samples = tmp_path / "samples"
    (samples / "audio").mkdir(parents=True)
    (samples / "image").mkdir()
    np.savez(samples / "audio" / "a.npz", audio=np.ones(4, np.float32))
    np.savez(samples / "image" / "b.npz", image=np.ones(6, np.float32), extra=np.ones(5, np.float32))
    manifest = load_package(pkg).manifest
    trace = generate_from_samples(manifest, samples, num_requests=30, dist="uniform", seed=1,
                                  relative_to=tmp_path)
    trace.write(tmp_path / "trace.jsonl")
    replayed = read_workload(tmp_path / "trace.jsonl")
    for request in replayed.requests:
        wanted = {"audio"} if request.metadata["k"] == "audio" else {"image", "extra"}
        assert set(request.inputs) == wanted and request.stream is None
    with edgecoe.load(pkg) as rt:
        report = rt.run(replayed)
    assert report.num_completed == 30

    onnx.save_model(stateful_model(), str(tmp_path / "state.onnx"))
    stream_pkg = export_package(write_spec(tmp_path / "s.json", stateful_spec({"state": 1, "stateN": 1})),
                                tmp_path / "spkg").package
    (samples / "s").mkdir()
    np.savez(samples / "s" / "c.npz", x=np.ones(4, np.float32))
    trace = generate_from_samples(load_package(stream_pkg).manifest, samples, num_requests=12, streams=3, seed=2,
                                  relative_to=tmp_path)
    streams = [(r.stream, r.stream_start) for r in trace.requests]
    assert {s for s, _ in streams} == {"s-0", "s-1", "s-2"}
    assert [s for s, start in streams if start] == ["s-1", "s-2", "s-0"]  # each started by its first request
    with edgecoe.load(stream_pkg) as rt:
        assert rt.run(trace).num_completed == 12


def test_cli_runs_all_resident_and_benches_a_trace_with_transforms_from_a_file(tmp_path):
    from click.testing import CliRunner

    from edgecoe.cli import main
    from edgecoe.workload import generate_from_samples

    pkg = glue_package(tmp_path)
    (tmp_path / "samples" / "doc").mkdir(parents=True)
    for i in range(3):
        np.savez(tmp_path / "samples" / "doc" / f"{i}.npz", page=np.full(8, i - 1.0, np.float32))
    generate_from_samples(load_package(pkg).manifest, tmp_path / "samples", num_requests=20, seed=0,
                          relative_to=tmp_path).write(tmp_path / "trace.jsonl")
    (tmp_path / "glue.py").write_text(
        "import numpy as np\n"
        "def split_parts(call):\n"
        "    return [{'part': call.input('page')[i:i + 4]} for i in range(2)]\n"
        "def decode(call):\n"
        "    return {'text': np.asarray('ok')}\n"
        "TRANSFORMS = {'split_parts': split_parts, 'decode': decode}\n")
    runner = CliRunner()
    missing = runner.invoke(main, ["run", str(pkg), "--workload", str(tmp_path / "trace.jsonl")])
    assert missing.exit_code != 0 and "not provided" in missing.output and "--transforms" in missing.output
    ran = runner.invoke(main, ["run", str(pkg), "--workload", str(tmp_path / "trace.jsonl"), "--policy",
                               "all-resident", "--transforms", str(tmp_path / "glue.py")])
    assert ran.exit_code == 0, ran.output
    assert "completed 20/20" in ran.output and "switches 0" in ran.output
    benched = runner.invoke(main, ["bench", str(pkg), "--workload", str(tmp_path / "trace.jsonl"), "--policies",
                                   "samba,all-resident", "--budget", "60%", "--transforms", str(tmp_path / "glue.py"),
                                   "--json", str(tmp_path / "bench.json")])
    assert benched.exit_code == 0, benched.output
    entries = json.loads((tmp_path / "bench.json").read_text())["points"][0]["runs"][0]["entries"]
    assert set(entries) == {"samba", "all-resident"}
    assert all(e["num_completed"] == 20 and e["num_failed"] == 0 for e in entries.values())


def test_an_onnx_source_can_be_checked_against_the_onnx_reference_evaluator(tmp_path):
    onnx.save_model(scale_model(), str(tmp_path / "scale.onnx"))
    spec = {"name": "ref", "entry": {"key": "k", "experts": {"a": "e"}},
            "constants": {"two": {"dtype": "float32", "shape": [], "values": [2.0]}},
            "experts": {"e": {"source": {"onnx": "scale.onnx", "reference": "onnx"}, "feeds": {"scale": "const:two"}}}}
    report = export_package(write_spec(tmp_path / "spec.json", spec), tmp_path / "pkg")
    assert report.experts[0].framework == "onnx reference"
    assert report.experts[0].max_abs_diff <= 1e-6


def test_closing_without_draining_ends_every_request_of_every_stream(tmp_path):
    onnx.save_model(stateful_model(), str(tmp_path / "state.onnx"))
    pkg = load_package(export_package(write_spec(tmp_path / "spec.json", stateful_spec({"state": 1, "stateN": 1})),
                                      tmp_path / "pkg").package)
    gate, running = threading.Event(), threading.Event()
    rt = faulty_runtime(pkg, RuntimeConfig(num_executors=1))
    inject(rt, before_run=lambda expert, feeds: (running.set(), gate.wait(60)))
    held = rt.submit({"x": np.ones(4, np.float32)}, {"k": "s"}, stream="b", stream_start=True)
    assert running.wait(30)  # the one executor is busy: stream a's first request stays queued
    futures = [rt.submit({"x": np.ones(4, np.float32)}, {"k": "s"}, stream="a", stream_start=i == 0) for i in range(3)]
    closer = threading.Thread(target=lambda: rt.close(drain=False))
    closer.start()
    closer.join(0.5)
    gate.set()
    closer.join(30)
    assert not closer.is_alive(), "close(drain=False) waited for a request nothing would run"
    assert held.done() and all(f.done() for f in futures)
    assert all(isinstance(f.exception(), RequestError) for f in futures)


def test_the_profiler_feeds_constants_state_and_the_shapes_export_verified(tmp_path):
    from edgecoe.profiler.measure import batch_inputs

    pkg = load_package(two_branch_package(tmp_path))
    feeds = batch_inputs(pkg, "scale", 3)
    assert feeds["scale"].shape == () and float(feeds["scale"]) == 2.5  # the constant, not noise
    assert feeds["x"].shape == (3, 4)
    onnx.save_model(stateful_model(), str(tmp_path / "state.onnx"))
    spkg = load_package(export_package(write_spec(tmp_path / "s.json", stateful_spec({"state": 1, "stateN": 1})),
                                       tmp_path / "spkg").package)
    assert spkg.experts["acc"].item_shapes == {"x": [4], "state": [2, 4]}
    state = batch_inputs(spkg, "acc", 5)["state"]
    assert state.shape == (2, 5, 4) and not state.any()  # a fresh stream's state, on its batch axis


def test_a_hostile_item_shape_or_initial_state_is_refused_at_load(tmp_path):
    onnx.save_model(stateful_model(), str(tmp_path / "state.onnx"))
    spec = stateful_spec({"state": 1, "stateN": 1})
    spec["constants"] = {"init": {"dtype": "float32", "shape": [3], "fill": 0}}
    spec["experts"]["acc"]["state"][0]["initial"] = "init"
    with pytest.raises(PackageError, match=r"initial 'init' is float32\[3\]; the state input takes float32\[2, 4\]"):
        export_package(write_spec(tmp_path / "bad.json", spec), tmp_path / "bad")
    pkg = export_package(write_spec(tmp_path / "spec.json", stateful_spec({"state": 1, "stateN": 1})),
                         tmp_path / "pkg").package
    manifest = json.loads((pkg / "edgecoe.json").read_text())
    manifest["experts"]["acc"]["item_shapes"]["x"] = [1 << 20, 1 << 20]
    (pkg / "edgecoe.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="item_shapes"):
        load_package(pkg)
