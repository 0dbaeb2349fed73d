from __future__ import annotations

import json

import numpy as np
import pytest

from edgecoe.errors import WorkloadError
from edgecoe.package import load_package
from edgecoe.workload import (
    distribution_shares,
    generate_workload,
    materialize,
    read_workload,
)


def test_distribution_shares():
    assert distribution_shares("uniform", ["a", "b"]) == {"a": 0.5, "b": 0.5}
    z = distribution_shares("zipf:1.0", ["a", "b", "c"])
    assert z["a"] == pytest.approx(1 / (1 + 1 / 2 + 1 / 3))
    assert z["a"] > z["b"] > z["c"]
    for bad in ("zipf", "zipf:-1", "zipf:x", "pareto:2", "uniform:3"):
        with pytest.raises(WorkloadError, match="distribution"):
            distribution_shares(bad, ["a"])


def test_generate_write_read_roundtrip(pcb_small, tmp_path):
    manifest = load_package(pcb_small, verify="quick").manifest
    trace = generate_workload(manifest, num_requests=200, dist="zipf:1.1", rate_rps=100.0, seed=3)
    path = tmp_path / "w.jsonl"
    trace.write(path)
    back = read_workload(path)
    assert [r.model_dump() for r in back.requests] == [r.model_dump() for r in trace.requests]
    assert back.header.package == "pcb-small"
    arrivals = [r.arrival_ms for r in back.requests]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0.0
    # mean gap of a 100 req/s Poisson process is 10 ms
    assert 7.0 < arrivals[-1] / (len(arrivals) - 1) < 13.0
    # zipf: the most likely component type is drawn most often
    counts: dict[str, int] = {}
    for r in back.requests:
        counts[str(r.metadata["component_type"])] = counts.get(str(r.metadata["component_type"]), 0) + 1
    assert max(counts, key=counts.__getitem__) == "res-0201"


def test_same_seed_same_trace(pcb_small):
    manifest = load_package(pcb_small, verify="quick").manifest
    a = generate_workload(manifest, num_requests=20, seed=5)
    b = generate_workload(manifest, num_requests=20, seed=5)
    c = generate_workload(manifest, num_requests=20, seed=6)
    assert a.requests == b.requests
    assert a.requests != c.requests


def test_uniform_arrivals(pcb_small):
    manifest = load_package(pcb_small, verify="quick").manifest
    trace = generate_workload(manifest, num_requests=5, rate_rps=250.0, arrival="uniform")
    assert [r.arrival_ms for r in trace.requests] == [0.0, 4.0, 8.0, 12.0, 16.0]


def test_generator_argument_errors(pcb_small):
    manifest = load_package(pcb_small, verify="quick").manifest
    with pytest.raises(WorkloadError, match="--requests"):
        generate_workload(manifest, num_requests=0)
    with pytest.raises(WorkloadError, match="--rate"):
        generate_workload(manifest, num_requests=1, rate_rps=0)
    with pytest.raises(WorkloadError, match="--go-on"):
        generate_workload(manifest, num_requests=1, go_on=1.5)


def test_bad_trace_lines_are_reported_with_line_numbers(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"edgecoe_trace": 1}),
        json.dumps({"id": "a", "arrival_ms": 0, "inputs": {"image": {"file": "x.npy"}}}),
        "{not json",
        json.dumps({"id": "b", "arrival_ms": -1, "inputs": {"image": {"file": "x.npy"}}}),
        json.dumps({"id": "c", "arrival_ms": 1, "inputs": {"image": {}}}),
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(WorkloadError) as info:
        read_workload(path)
    text = str(info.value)
    assert f"{path}:3: not valid JSON" in text
    assert f"{path}:4: arrival_ms" in text
    assert f"{path}:5: inputs.image" in text and "exactly one" in text


def test_duplicate_ids_rejected(tmp_path):
    path = tmp_path / "dup.jsonl"
    row = json.dumps({"id": "a", "arrival_ms": 0, "inputs": {"x": {"seeded": {"seed": 1}}}})
    path.write_text(row + "\n" + row + "\n")
    with pytest.raises(WorkloadError, match="unique"):
        read_workload(path)


def test_materialize_file_and_seeded(pcb_small, tmp_path):
    manifest = load_package(pcb_small, verify="quick").manifest
    image = np.full((3, 64, 64), 0.25, np.float32)
    np.save(tmp_path / "img.npy", image)
    path = tmp_path / "t.jsonl"
    path.write_text(
        json.dumps({"id": "f", "arrival_ms": 0, "metadata": {"component_type": "res-0201"},
                    "inputs": {"image": {"file": "img.npy"}}}) + "\n" +
        json.dumps({"id": "s", "arrival_ms": 1, "metadata": {"component_type": "res-0201"},
                    "inputs": {"image": {"seeded": {"seed": 4, "channel": 0, "channel_offset": 0.5}}}}) + "\n")
    trace = read_workload(path)
    from_file = materialize(trace.requests[0], manifest.inputs, trace.base_dir)["image"]
    np.testing.assert_array_equal(from_file, image)
    seeded = materialize(trace.requests[1], manifest.inputs, trace.base_dir)["image"]
    assert seeded.dtype == np.float32 and seeded.shape == (3, 64, 64)
    assert seeded[0].mean() == pytest.approx(0.5, abs=0.05)
    assert seeded[1].mean() == pytest.approx(0.0, abs=0.05)
    missing = trace.requests[0].model_copy(update={"inputs": {"image": trace.requests[0].inputs["image"].model_copy(update={"file": "nope.npy"})}})
    with pytest.raises(WorkloadError, match="nope.npy"):
        materialize(missing, manifest.inputs, trace.base_dir)
