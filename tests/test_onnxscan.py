"""The wire-format scanner agrees with a full ONNX parse, and fails cleanly on junk."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from helpers import linear_model, two_in_two_out_model
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgecoe.errors import OnnxFileError
from edgecoe.package.onnxmodel import custom_domains, external_locations
from edgecoe.package.onnxscan import scan_model, scanned_custom_domains


def nested_model() -> onnx.ModelProto:
    """An If whose branches hold a custom-domain node and an external-data constant; plus a local function."""
    import numpy as np

    external = numpy_helper.from_array(np.zeros(2, np.float32), "c")
    external.ClearField("raw_data")
    external.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../outside.bin"), ("offset", "0"), ("length", "8")):
        entry = external.external_data.add()
        entry.key, entry.value = key, value
    then_graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["t"], domain="com.evil.ops")], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    else_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["e"], value=external)], "else", [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph),
         helper.make_node("Local", ["y"], ["z"], domain="my.functions")], "nested",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    function = helper.make_function("my.functions", "Local", ["a"], ["b"],
                                    [helper.make_node("Identity", ["a"], ["b"])],
                                    [helper.make_opsetid("", 17)])
    return helper.make_model(graph, functions=[function], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.evil.ops", 1), helper.make_opsetid("my.functions", 1)])


@pytest.mark.parametrize("make", [linear_model, two_in_two_out_model, nested_model])
def test_scan_agrees_with_a_full_parse(tmp_path, make):
    model = make()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    scan = scan_model(path)
    assert scanned_custom_domains(scan) == custom_domains(model)
    assert scan.external_locations == external_locations(model)


def test_nested_custom_domain_and_external_data_are_found(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(nested_model().SerializeToString())
    scan = scan_model(path)
    assert scanned_custom_domains(scan) == ["com.evil.ops"]  # the local function's domain is not custom
    assert scan.external_locations == ["../../outside.bin"]


def test_truncations_fail_cleanly(tmp_path):
    data = linear_model().SerializeToString()
    path = tmp_path / "m.onnx"
    failures = 0
    for cut in range(0, len(data), 7):
        path.write_bytes(data[:cut])
        try:
            scan_model(path)
        except OnnxFileError:
            failures += 1
    assert failures >= len(range(0, len(data), 7)) - 2  # a cut at a field boundary past the graph may parse


@given(st.binary(max_size=512))
@settings(max_examples=300, deadline=None)
def test_junk_raises_only_onnx_file_error(tmp_path_factory, junk):
    path: Path = tmp_path_factory.mktemp("junk") / "m.onnx"
    path.write_bytes(junk)
    try:
        scan_model(path)
    except OnnxFileError as exc:
        assert str(path) in str(exc)
