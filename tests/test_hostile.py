"""Untrusted packages, specs, traces and hostile callers: each case ends in one clear error
(or a typed exception), nothing is read or written outside the package, and no request is lost.

The classes follow the probe of 216 hostile cases that found writes outside the package, a
shared cache one package could poison, cancellation killing executors and unbounded queues.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import _mlp, chain_spec, faulty_runtime, inject, wait_idle, wide_package, write_spec
from onnx import TensorProto, helper, numpy_helper

from edgecoe.admission import REQUEST_OVERHEAD_BYTES
from edgecoe.cli import main
from edgecoe.config import RuntimeConfig, parse_budget
from edgecoe.errors import (
    InvalidInputError,
    PackageError,
    ProfileError,
    QueueFullError,
    SpecError,
    WorkloadError,
)
from edgecoe.export import export_package
from edgecoe.package import load_package
from edgecoe.package.writer import PackageWriter
from edgecoe.profile import load_profile
from edgecoe.runtime import Runtime
from edgecoe.workload import read_workload


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory):
    return load_package(wide_package(tmp_path_factory.mktemp("wide") / "wide", num_first=4, num_second=2))


def item(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal(8).astype(np.float32)}


def one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return result.output


def files_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))


# -- 1. writes outside the package -------------------------------------------------------------
@pytest.mark.parametrize("bad", ["../evil", "a/b", "sub\\x", "..", ".hidden", "tab\tname", "x" * 200, "é"])
def test_unsafe_expert_names_are_refused_in_specs_before_any_write(tmp_path, bad):
    src = tmp_path / "src"
    src.mkdir()
    spec = chain_spec(src)
    spec["experts"][bad] = spec["experts"].pop("stage2")
    for expert in ("cls_a", "cls_b"):
        spec["experts"][expert]["route"]["classes"]["1"] = [bad]
    path = write_spec(src / "spec.json", spec)
    before = files_under(tmp_path)
    with pytest.raises(SpecError, match="experts"):
        export_package(path, tmp_path / "out" / "pkg")
    assert files_under(tmp_path) == before  # not even the output's parent


def test_unsafe_expert_names_are_refused_in_manifests(chain_package):
    manifest = json.loads((chain_package / "edgecoe.json").read_text())
    manifest["experts"]["../../x"] = manifest["experts"].pop("stage2")
    (chain_package / "edgecoe.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=r"experts\.\.\./\.\./x"):
        load_package(chain_package)


@pytest.mark.parametrize("rel", ["../escape.onnx", "/tmp/abs.onnx", "experts/../../up.onnx", ""])
def test_the_writer_refuses_paths_outside_the_package(tmp_path, rel):
    before = files_under(tmp_path)
    with pytest.raises(InvalidInputError, match="refusing to write"), \
            PackageWriter(tmp_path / "pkg") as writer:
        writer.write_model(rel, _mlp(4, 4, 2, seed=0))
    assert files_under(tmp_path) == before and not Path("/tmp/abs.onnx").exists()


def test_force_replaces_only_a_package_or_an_empty_directory(tmp_path, chain_package):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    src = tmp_path / "src2"
    src.mkdir()
    spec = write_spec(src / "spec.json", chain_spec(src))
    output = one_line_error(["export", str(spec), "-o", str(precious), "--force"])
    assert "not an edgecoe package" in output and (precious / "thesis.tex").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_package(spec, empty, overwrite=True).package == empty
    assert export_package(spec, chain_package, overwrite=True).package == chain_package  # a package: replaced


# -- 3. cancellation ----------------------------------------------------------------------------
def test_cancelling_queued_requests_never_touches_executors_or_other_requests(wide):
    rng = np.random.default_rng(1)
    runtime = faulty_runtime(wide, RuntimeConfig(policy="samba", budget="50%"))
    entered, gate = threading.Event(), threading.Event()

    def hold_first(expert, feeds):  # type: ignore[no-untyped-def]
        entered.set()
        assert gate.wait(60)

    inject(runtime, before_run=hold_first)
    first = runtime.submit(item(rng), {"kind": "k0"})
    assert entered.wait(60)
    queued = [runtime.submit(item(rng), {"kind": f"k{i % 4}"}) for i in range(40)]
    cancelled = queued[::2]
    assert all(f.cancel() for f in cancelled)
    gate.set()
    kept = [f.result(timeout=60) for f in queued[1::2]]
    assert len(kept) == 20 and first.result(timeout=60)
    assert all(f.cancelled() for f in cancelled)
    later = runtime.submit(item(rng), {"kind": "k1"})  # the executors are alive
    assert later.result(timeout=60)
    wait_idle(runtime)
    runtime.caches["cpu"].check()
    outcome = runtime.close()
    assert outcome.failed == {} and outcome.cancelled == []
    assert runtime.report(0, [], 1.0).errors.get("cancelled by the caller") == 20


def test_cancelling_while_close_drains_returns_an_outcome(wide):
    rng = np.random.default_rng(2)
    runtime = faulty_runtime(wide, RuntimeConfig(policy="samba", budget="50%"))
    gate = threading.Event()
    inject(runtime, before_run=lambda expert, feeds: gate.wait(60))
    futures = [runtime.submit(item(rng), {"kind": f"k{i % 4}"}, request_id=f"r{i}") for i in range(30)]
    closer = threading.Thread(target=lambda: box.append(runtime.close(drain=True, timeout_s=60)))
    box: list = []
    closer.start()
    for future in futures[10:]:
        future.cancel()
    gate.set()
    closer.join(60)
    outcome = box[0]
    assert len(outcome) == 30 and not outcome.failed
    assert {f"r{i}" for i in range(10, 30)} <= set(outcome.cancelled)
    assert all(futures[i].done() for i in range(30))


# -- 4. full verification walks every tensor; the quick scanner refuses repeated keys -----------
def _model_with_hidden_external_data(kind: str) -> onnx.ModelProto:
    """A tiny model whose one external tensor hides in a local function's body, a sparse
    initializer or a sparse attribute, pointing outside the package."""
    outside = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2])
    outside.data_location = TensorProto.EXTERNAL
    outside.external_data.add(key="location", value="../../etc/passwd")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    functions, sparse_init, nodes = [], [], [helper.make_node("Identity", ["x"], ["y"])]
    if kind == "function":
        const = helper.make_node("Constant", [], ["c"], value=outside)
        add = helper.make_node("Add", ["a", "c"], ["b"])
        functions.append(helper.make_function("local", "AddW", ["a"], ["b"], [const, add],
                                              [helper.make_opsetid("", 17)]))
        nodes = [helper.make_node("AddW", ["x"], ["y"], domain="local")]
    elif kind == "sparse_initializer":
        indices = numpy_helper.from_array(np.array([0], np.int64), "w_idx")
        sparse_init.append(helper.make_sparse_tensor(outside, indices, [4]))
    else:  # a sparse tensor attribute
        indices = numpy_helper.from_array(np.array([0], np.int64), "w_idx")
        nodes = [helper.make_node("Constant", [], ["s"], sparse_value=helper.make_sparse_tensor(outside, indices, [4])),
                 helper.make_node("Identity", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], sparse_initializer=sparse_init)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("local", 1)] if functions else [])
    model = helper.make_model(graph, opset_imports=opsets, functions=functions)
    model.ir_version = 8
    return model


@pytest.mark.parametrize("kind", ["function", "sparse_initializer", "sparse_attribute"])
@pytest.mark.parametrize("verify", ["full", "quick"])
def test_external_data_hidden_anywhere_in_a_model_is_found(chain_package, kind, verify):
    from edgecoe.package.files import record_file

    (chain_package / "experts" / "stage2.onnx").write_bytes(_model_with_hidden_external_data(kind).SerializeToString())
    manifest = json.loads((chain_package / "edgecoe.json").read_text())
    manifest["experts"]["stage2"]["model"] = record_file(chain_package, "experts/stage2.onnx").model_dump()
    (chain_package / "edgecoe.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=r"etc/passwd|leaves or escapes"):
        load_package(chain_package, verify=verify)


@pytest.mark.parametrize("verify", ["full", "quick"])
def test_an_external_data_key_given_twice_is_refused(tmp_path, verify):
    from helpers import save_external

    from edgecoe.package.files import record_file

    root = wide_package(tmp_path / "pkg", num_first=2, num_second=0)
    path = root / "experts" / "f0.onnx"
    model = onnx.load(str(path))
    save_external(model, path)  # weights into f0.onnx.bin
    model = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL)
    tensor.external_data.add(key="location", value="../../../etc/passwd")  # a second location
    path.write_bytes(model.SerializeToString())
    manifest = json.loads((root / "edgecoe.json").read_text())
    manifest["experts"]["f0"]["model"] = record_file(root, "experts/f0.onnx").model_dump()
    manifest["experts"]["f0"]["external_data"] = [record_file(root, "experts/f0.onnx.bin").model_dump()]
    (root / "edgecoe.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="twice"):
        load_package(root, verify=verify)


def test_run_can_ask_for_full_verification(chain_package):
    model = chain_package / "experts" / "stage2.onnx"
    data = bytearray(model.read_bytes())
    data[-5] ^= 0x01  # same size, other bytes
    model.write_bytes(bytes(data))
    output = one_line_error(["run", str(chain_package), "--verify", "full", "--requests", "5"])
    assert "sha256" in output or "checksum" in output


# -- 5. one error line instead of a traceback --------------------------------------------------
def test_external_data_outside_the_spec_directory_at_export(tmp_path):
    from helpers import linear_model, save_external

    outside = tmp_path / "outside"
    outside.mkdir()
    save_external(linear_model(), outside / "m.onnx")
    src = tmp_path / "src"
    src.mkdir()
    model = onnx.load(str(outside / "m.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside/m.onnx.bin"
    (src / "m.onnx").write_bytes(model.SerializeToString())
    spec = write_spec(src / "spec.json", {"name": "one", "entry": {"key": "k", "experts": {"x": "e"}},
                                          "experts": {"e": {"source": {"onnx": "m.onnx"}}}})
    output = one_line_error(["export", str(spec), "-o", str(tmp_path / "pkg")])
    assert "external data '../outside/m.onnx.bin' refused" in output


@pytest.mark.parametrize("where", ["manifest", "spec-json", "spec-yaml", "profile", "trace"])
def test_documents_nested_very_deeply_are_one_error(tmp_path, chain_package, where):
    deep = "[" * 50_000 + "]" * 50_000
    if where == "manifest":
        (chain_package / "edgecoe.json").write_text('{"name": ' + deep + "}")
        with pytest.raises(PackageError, match="nested too deeply"):
            load_package(chain_package)
    elif where == "spec-json":
        (tmp_path / "s.json").write_text('{"name": ' + deep + "}")
        output = one_line_error(["export", str(tmp_path / "s.json"), "-o", str(tmp_path / "o")])
        assert "nested too deeply" in output
    elif where == "spec-yaml":
        (tmp_path / "s.yaml").write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
        output = one_line_error(["export", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "o")])
        assert "nested too deeply" in output
    elif where == "profile":
        (tmp_path / "p.json").write_text('{"name": ' + deep + "}")
        with pytest.raises(ProfileError, match="nested too deeply"):
            load_profile(tmp_path / "p.json")
    else:
        (tmp_path / "t.jsonl").write_text('{"id": ' + deep + "}\n")
        with pytest.raises(WorkloadError, match="nested too deeply"):
            read_workload(tmp_path / "t.jsonl")


def test_markup_and_control_characters_reach_the_terminal_inert(chain_package, tmp_path):
    manifest = json.loads((chain_package / "edgecoe.json").read_text())
    manifest["description"] = "[/] [bold red]fake\x1b[31m\nerror: valid"
    (chain_package / "edgecoe.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["inspect", str(chain_package)])
    assert result.exit_code == 0, result.output
    assert "[/] [bold red]fake\\x1b[31m" in result.output and "\x1b" not in result.output
    weird = tmp_path / "pkg\x1b[2Jerror: all good"
    output = one_line_error(["inspect", str(weird)])
    assert "\x1b" not in output and "\\x1b" in output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX thing")
@pytest.mark.parametrize("what", ["spec", "trace", "spec-source", "manifest"])
def test_a_fifo_is_never_read(tmp_path, chain_package, what):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    if what == "spec":
        assert "not a regular file" in one_line_error(["export", str(fifo), "-o", str(tmp_path / "o")])
    elif what == "trace":
        assert "not a regular file" in one_line_error(["run", str(chain_package), "--workload", str(fifo)])
    elif what == "spec-source":
        spec = write_spec(tmp_path / "s.json", {"name": "one", "entry": {"key": "k", "experts": {"x": "e"}},
                                                "experts": {"e": {"source": {"onnx": "fifo"}}}})
        assert "not a regular file" in one_line_error(["export", str(spec), "-o", str(tmp_path / "o")])
    else:
        (chain_package / "edgecoe.json").unlink()
        os.mkfifo(chain_package / "edgecoe.json")
        with pytest.raises(PackageError, match="not a regular file"):
            load_package(chain_package)


@pytest.mark.parametrize("budget", ["1e400", "inf", "-inf", "nan", "1e30"])
def test_absurd_budgets_are_one_error(chain_package, budget):
    with pytest.raises(InvalidInputError, match="budget"):
        parse_budget(budget, total_bytes=100)
    assert "budget" in one_line_error(["run", str(chain_package), "--budget", budget])


@pytest.mark.parametrize("inputs, metadata, says", [
    (None, {"kind": "a"}, "mapping of input name"),
    ([np.zeros(4, np.float32)], {"kind": "a"}, "mapping of input name"),
    ({1: np.zeros(4, np.float32)}, {"kind": "a"}, "mapping of input name"),
    ({"x": "zeros"}, {"kind": "a"}, "expected a numpy array"),
    ({"x": object()}, {"kind": "a"}, "expected a numpy array"),
    ({"x": np.zeros(4, np.float32)}, ["kind"], "mapping of string keys"),
    ({"x": np.zeros(4, np.float32)}, {3: "a"}, "mapping of string keys"),
])
def test_wrong_typed_submit_arguments_are_typed_errors(chain_package, inputs, metadata, says):
    with Runtime(load_package(chain_package), config=RuntimeConfig(policy="samba")) as runtime, \
            pytest.raises(InvalidInputError, match=says):
        runtime.submit(inputs, metadata)  # type: ignore[arg-type]


# -- 6. accepted wrongly before --------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("distribution", float("nan")), ("distribution", float("inf")), ("class_fractions", float("nan")),
    ("threshold", float("nan")), ("tolerance", float("inf")), ("tolerance", float("nan")),
])
def test_nan_and_infinity_are_refused_where_numbers_mean_something(tmp_path, field, value):
    src = tmp_path / "src"
    src.mkdir()
    spec = chain_spec(src)
    if field == "distribution":
        spec["metadata"]["kind"]["distribution"] = {"a": value, "b": 0.25}
    elif field == "class_fractions":
        spec["experts"]["cls_a"]["route"]["class_fractions"] = {"1": value}
    elif field == "threshold":
        spec["experts"]["cls_a"]["route"] = {"kind": "threshold", "output": "y", "threshold": value,
                                             "above": ["stage2"]}
    else:
        spec["tolerance"] = value
    path = src / "spec.json"
    path.write_text(json.dumps(spec))  # Python writes NaN/Infinity, which JSON itself does not allow
    with pytest.raises(SpecError, match=r"NaN|Infinity|finite"):
        export_package(path, tmp_path / "pkg")
    path.write_text(json.dumps(spec).replace("NaN", "1e999").replace("Infinity", "1e999"))
    with pytest.raises(SpecError, match="finite"):
        export_package(path, tmp_path / "pkg")


def test_duplicate_keys_are_refused_in_json_and_yaml(tmp_path, chain_package):
    text = (chain_package / "edgecoe.json").read_text()
    (chain_package / "edgecoe.json").write_text(text.replace('"name": "chain"', '"name": "chain", "name": "evil"', 1))
    with pytest.raises(PackageError, match="'name' appears twice"):
        load_package(chain_package)
    (tmp_path / "s.yaml").write_text("name: a\nname: b\nentry: {key: k, experts: {x: e}}\nexperts: {}\n")
    with pytest.raises(SpecError, match="'name' appears twice"):
        from edgecoe.export import read_spec

        read_spec(tmp_path / "s.yaml")


def test_inputs_are_copied_at_submit(chain_package):
    """A caller changing its array after submit changes nothing: not the checks, not the model's input."""
    pkg = load_package(chain_package)
    runtime = faulty_runtime(pkg, RuntimeConfig(policy="samba"))
    gate = threading.Event()
    inject(runtime, before_run=lambda expert, feeds: gate.wait(60))  # nothing runs before the change
    x = np.ones(4, np.float32)
    future = runtime.submit({"x": x}, {"kind": "b"})
    x[:] = np.nan  # after the finite check
    gate.set()
    result = future.result(timeout=60)
    reference = runtime.submit({"x": np.ones(4, np.float32)}, {"kind": "b"}).result(timeout=60)
    runtime.close()
    assert np.isfinite(result.outputs["y"]).all()
    np.testing.assert_array_equal(result.outputs["y"], reference.outputs["y"])


def test_empty_package_path_is_an_error_not_the_current_directory():
    assert "empty path" in one_line_error(["run", ""])
    assert "empty path" in one_line_error(["inspect", " "])


def test_workload_check_runs_the_validation_run_runs(tmp_path, pcb_small):
    trace = tmp_path / "w.jsonl"
    assert CliRunner().invoke(main, ["workload", "generate", str(pcb_small), "-o", str(trace),
                                     "--requests", "30"]).exit_code == 0
    lines = trace.read_text().splitlines()
    bad = json.loads(lines[12])
    bad["metadata"]["component_type"] = "no-such-part"
    lines[12] = json.dumps(bad)
    trace.write_text("\n".join(lines) + "\n")
    check = one_line_error(["workload", "check", str(trace), str(pcb_small)])
    run = one_line_error(["run", str(pcb_small), "--workload", str(trace)])
    assert "no-such-part" in check and "no-such-part" in run and bad["id"] in run
    assert "completed" not in run  # refused before serving, not after part of it


@pytest.mark.parametrize("rel", ["../outside.npy", "/etc/hostname", "sub/../../outside.npy"])
def test_trace_input_files_stay_in_the_trace_directory(tmp_path, pcb_small, rel):
    (tmp_path / "outside.npy").write_bytes(b"")
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "w.jsonl").write_text(json.dumps({"id": "r1", "arrival_ms": 0, "metadata": {"component_type": "res-0201"},
                                               "inputs": {"image": {"file": rel}}}) + "\n")
    output = one_line_error(["workload", "check", str(inner / "w.jsonl"), str(pcb_small)])
    assert "outside the trace's directory" in output


def test_a_torch_factory_leaves_sys_path_as_it_was(tmp_path):
    pytest.importorskip("torch")
    from edgecoe.export.sources import _import_factory

    (tmp_path / "factory_mod_syspath.py").write_text("def make():\n    return None\n")
    before = list(sys.path)
    assert callable(_import_factory("factory_mod_syspath:make", tmp_path))
    assert sys.path == before


# -- 7. bounds on what waits -------------------------------------------------------------------
def test_submit_beyond_the_queue_limits_is_a_typed_error_or_waits(wide):
    rng = np.random.default_rng(3)
    config = RuntimeConfig(policy="samba", budget="50%", max_queued_requests=5)
    runtime = faulty_runtime(wide, config)
    gate = threading.Event()
    inject(runtime, before_run=lambda expert, feeds: gate.wait(60))
    futures = [runtime.submit(item(rng), {"kind": "k0"}) for _ in range(5)]
    with pytest.raises(QueueFullError, match="max_queued_requests=5"):
        runtime.submit(item(rng), {"kind": "k0"})
    with pytest.raises(QueueFullError):
        runtime.submit(item(rng), {"kind": "k0"}, wait_s=0.05)
    threading.Timer(0.2, gate.set).start()
    waited = runtime.submit(item(rng), {"kind": "k0"}, wait_s=60)  # room comes once the gate opens
    assert waited.result(timeout=60) and all(f.result(timeout=60) for f in futures)
    runtime.close()


def test_queued_input_bytes_are_bounded(wide):
    rng = np.random.default_rng(4)
    per_request = 32 + REQUEST_OVERHEAD_BYTES  # an 8-float input and the bookkeeping
    config = RuntimeConfig(policy="samba", budget="50%", max_queued_input_bytes=3 * per_request + 10)
    runtime = faulty_runtime(wide, config)
    gate = threading.Event()
    inject(runtime, before_run=lambda expert, feeds: gate.wait(60))
    futures = [runtime.submit(item(rng), {"kind": "k1"}) for _ in range(3)]
    with pytest.raises(QueueFullError, match="max_queued_input_bytes"):
        runtime.submit(item(rng), {"kind": "k1"})
    gate.set()
    assert all(f.result(timeout=60) for f in futures)
    runtime.close()
    with Runtime(wide, config=RuntimeConfig(policy="samba", max_queued_input_bytes=16)) as small, \
            pytest.raises(QueueFullError, match=f"one request holds {32 + REQUEST_OVERHEAD_BYTES} bytes"):
        small.submit(item(rng), {"kind": "k1"})


def test_documents_over_their_size_limit_are_refused(tmp_path, monkeypatch):
    from edgecoe import workload

    monkeypatch.setattr(workload, "MAX_TRACE_BYTES", 100)
    (tmp_path / "t.jsonl").write_text("{}\n" * 100)
    with pytest.raises(WorkloadError, match="the limit is 100"):
        read_workload(tmp_path / "t.jsonl")


def test_the_demo_trace_runs_unchanged_after_all_this(pcb_small, tmp_path):
    """The hardening changes nothing for a well-formed package and trace."""
    shutil.copytree(pcb_small, tmp_path / "pkg")
    result = CliRunner().invoke(main, ["run", str(tmp_path / "pkg"), "--verify", "full", "--budget", "30%",
                                       "--requests", "30"])
    assert result.exit_code == 0, result.output and "completed 30/30" in result.output


@pytest.mark.parametrize("path", ["x" * 300, "/".join(["d"] * 600) + "/m.onnx"])
def test_a_path_too_long_for_the_file_system_is_one_package_error(chain_package, tmp_path, path):
    from edgecoe.errors import PackageError
    from edgecoe.package import load_package

    pkg = tmp_path / "pkg"
    shutil.copytree(chain_package, pkg)
    manifest = json.loads((pkg / "edgecoe.json").read_text())
    manifest["experts"]["cls_a"]["model"]["path"] = path
    (pkg / "edgecoe.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="too long for a file system"):
        load_package(pkg)
