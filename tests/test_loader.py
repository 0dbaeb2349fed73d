"""Every bad-package case gives its own error naming the file or field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest
from helpers import linear_model

from edgecoe.errors import PackageError
from edgecoe.package import MANIFEST_NAME, load_package
from edgecoe.package.files import record_file


def edit_manifest(pkg: Path, change) -> None:
    path = pkg / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def problems_of(pkg: Path, **kwargs) -> list[str]:
    with pytest.raises(PackageError) as info:
        load_package(pkg, **kwargs)
    assert str(pkg) in str(info.value)
    return [str(p) for p in info.value.problems]


def only(problems: list[str], *needles: str) -> str:
    hits = [p for p in problems if all(n in p for n in needles)]
    assert hits, f"no problem mentions {needles}: {problems}"
    return hits[0]


# -- ways to make a package untrusted (each also a test below) --
def _escape_external_data(pkg: Path, tmp_path: Path) -> None:
    model = linear_model(in_dim=4, out_dim=3, seed=3)
    (tmp_path / "evil.bin").write_bytes(b"\0" * 64)
    for init in model.graph.initializer:
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        entry = init.external_data.add()
        entry.key, entry.value = "location", "../../evil.bin"
    (pkg / "experts" / "stage2.onnx").write_bytes(model.SerializeToString())
    record = record_file(pkg, "experts/stage2.onnx")
    edit_manifest(pkg, lambda d: d["experts"]["stage2"].update(model=record.model_dump()))


def _custom_op(pkg: Path, tmp_path: Path) -> None:
    model = linear_model(in_dim=4, out_dim=3, seed=3)
    model.opset_import.append(onnx.helper.make_opsetid("com.evil.ops", 1))
    model.graph.node[1].domain = "com.evil.ops"
    (pkg / "experts" / "stage2.onnx").write_bytes(model.SerializeToString())
    record = record_file(pkg, "experts/stage2.onnx")
    edit_manifest(pkg, lambda d: d["experts"]["stage2"].update(model=record.model_dump()))


def _symlink_out(pkg: Path, tmp_path: Path) -> None:
    target = pkg / "experts" / "stage2.onnx"
    (tmp_path / "secret.onnx").write_bytes(target.read_bytes())
    target.unlink()
    os.symlink(tmp_path / "secret.onnx", target)


def _truncate(pkg: Path, tmp_path: Path) -> None:
    path = pkg / "experts" / "stage2.onnx"
    path.write_bytes(path.read_bytes()[:40])
    record = record_file(pkg, "experts/stage2.onnx")
    edit_manifest(pkg, lambda d: d["experts"]["stage2"].update(model=record.model_dump()))


def test_valid_package_loads(chain_package):
    pkg = load_package(chain_package)
    assert set(pkg.experts) == {"cls_a", "cls_b", "stage2"}
    assert pkg.graph.parents["stage2"] == ["cls_a", "cls_b"]
    assert pkg.graph.preliminary == {"cls_a", "cls_b"}


def test_missing_directory(tmp_path):
    only(problems_of(tmp_path / "nope"), "does not exist")


def test_missing_manifest(chain_package):
    (chain_package / MANIFEST_NAME).unlink()
    only(problems_of(chain_package), MANIFEST_NAME, "missing")


def test_invalid_json_names_line(chain_package):
    (chain_package / MANIFEST_NAME).write_text('{"name": "x",\n "experts": }')
    only(problems_of(chain_package), f"{MANIFEST_NAME}:2:", "not valid JSON")


def test_schema_errors_all_reported_with_field_paths(chain_package):
    def change(d):
        d["experts"]["cls_a"]["model"]["sha256"] = "abc"
        d["experts"]["stage2"]["usage_probability"] = 2.0
        d["experts"]["cls_b"]["surprise"] = 1
    edit_manifest(chain_package, change)
    problems = problems_of(chain_package)
    only(problems, "experts.cls_a.model.sha256", "pattern")
    only(problems, "experts.stage2.usage_probability")
    only(problems, "experts.cls_b.surprise", "Extra inputs")


def test_unknown_expert_names(chain_package):
    def change(d):
        d["entry"]["experts"]["a"] = "ghost"
        d["experts"]["cls_b"]["route"]["classes"]["1"] = ["phantom"]
    edit_manifest(chain_package, change)
    problems = problems_of(chain_package)
    only(problems, "entry.experts.a", "unknown expert 'ghost'")
    only(problems, "experts.cls_b.route", "unknown expert 'phantom'")


def test_cycle_is_reported_with_its_path(chain_package):
    edit_manifest(chain_package, lambda d: d["experts"]["stage2"].update(
        route={"kind": "fanout", "next": ["cls_a"]}))
    problem = only(problems_of(chain_package), "cycle")
    assert "cls_a -> stage2 -> cls_a" in problem


def test_route_output_must_exist(chain_package):
    edit_manifest(chain_package, lambda d: d["experts"]["cls_a"]["route"].update(output="nope"))
    only(problems_of(chain_package), "experts.cls_a.route.output", "'nope'")


def test_missing_file(chain_package):
    (chain_package / "experts" / "stage2.onnx").unlink()
    only(problems_of(chain_package), "experts/stage2.onnx", "missing")


def test_extra_file(chain_package):
    (chain_package / "experts" / "stowaway.bin").write_bytes(b"x")
    only(problems_of(chain_package), "experts/stowaway.bin", "extra file")


def flip_last_byte(path: Path) -> bytes:
    """Corrupt a file without changing its size; returns the new content."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


def test_checksum_mismatch(chain_package):
    flip_last_byte(chain_package / "experts" / "cls_b.onnx")
    only(problems_of(chain_package), "experts/cls_b.onnx", "checksum mismatch")


def test_quick_verify_skips_checksums_but_not_sizes(chain_package):
    path = chain_package / "experts" / "cls_b.onnx"
    data = flip_last_byte(path)
    load_package(chain_package, verify="quick")
    path.write_bytes(data[:-5])
    only(problems_of(chain_package, verify="quick"), "experts/cls_b.onnx", "size is")


def test_truncated_onnx_with_matching_manifest(chain_package, tmp_path):
    """Truncated, and the manifest updated to match: the ONNX parse itself must fail."""
    _truncate(chain_package, tmp_path)
    only(problems_of(chain_package), "experts/stage2.onnx", "ONNX")


def test_not_onnx(chain_package):
    path = chain_package / "experts" / "stage2.onnx"
    path.write_text("this is a text file, not a model\n" * 3)
    record = record_file(chain_package, "experts/stage2.onnx")
    edit_manifest(chain_package, lambda d: d["experts"]["stage2"].update(model=record.model_dump()))
    only(problems_of(chain_package), "experts/stage2.onnx", "ONNX")


@pytest.mark.parametrize("bad_path, reason", [
    ("../outside.onnx", "escapes"),
    ("/etc/passwd", "absolute"),
    ("experts/../../x.onnx", "escapes"),
])
def test_paths_leaving_the_package(chain_package, bad_path, reason):
    edit_manifest(chain_package, lambda d: d["experts"]["stage2"]["model"].update(path=bad_path))
    only(problems_of(chain_package), bad_path, reason)


def test_symlink_leaving_the_package(chain_package, tmp_path):
    _symlink_out(chain_package, tmp_path)
    only(problems_of(chain_package), "experts/stage2.onnx", "symbolic link")


def test_external_data_location_leaving_the_package(chain_package, tmp_path):
    """A model whose external-data location points outside the package is refused."""
    _escape_external_data(chain_package, tmp_path)
    only(problems_of(chain_package), "experts/stage2.onnx", "external data", "escapes")


def test_declared_io_must_match_model(chain_package):
    edit_manifest(chain_package, lambda d: d["experts"]["stage2"]["outputs"][0].update(shape=["batch", 99]))
    only(problems_of(chain_package), "experts/stage2.onnx", "declared outputs", "do not match")


def test_input_not_providable(chain_package):
    def change(d):
        d["experts"]["cls_a"]["inputs"][0]["name"] = "pixels"
    edit_manifest(chain_package, change)
    only(problems_of(chain_package), "experts.cls_a.inputs.pixels", "not a package input")


def test_custom_op_domain_refused_unless_allowed(chain_package, tmp_path):
    _custom_op(chain_package, tmp_path)
    only(problems_of(chain_package), "experts/stage2.onnx", "custom operator domains", "com.evil.ops")
    load_package(chain_package, allow_custom_ops=True)


def test_many_problems_reported_together(chain_package):
    (chain_package / "experts" / "stage2.onnx").unlink()
    (chain_package / "experts" / "extra.txt").write_text("x")
    edit_manifest(chain_package, lambda d: d["entry"].update(default="ghost"))
    problems = problems_of(chain_package)
    assert len(problems) >= 3


def test_declared_size_far_larger_than_the_file(chain_package):
    """A manifest claiming a huge model (to make a runtime reserve memory for it) is refused."""
    edit_manifest(chain_package, lambda d: d["experts"]["stage2"]["model"].update(bytes=10**12))
    only(problems_of(chain_package, verify="quick"), "experts/stage2.onnx", "size is")


UNTRUSTED = {
    "traversal": lambda pkg, tmp: edit_manifest(pkg, lambda d: d["experts"]["stage2"]["model"].update(
        path="../outside.onnx")),
    "absolute": lambda pkg, tmp: edit_manifest(pkg, lambda d: d["experts"]["stage2"]["model"].update(
        path="/etc/passwd")),
    "external-data-escape": _escape_external_data,
    "symlink": _symlink_out,
    "huge-declared-size": lambda pkg, tmp: edit_manifest(pkg, lambda d: d["experts"]["stage2"]["model"].update(
        bytes=10**12)),
    "checksum": lambda pkg, tmp: flip_last_byte(pkg / "experts" / "stage2.onnx"),
    "truncated-onnx": _truncate,
    "custom-op": _custom_op,
}


CASES = [(case, verify) for case in sorted(UNTRUSTED) for verify in ("quick", "full")
         if (case, verify) != ("checksum", "quick")]  # hashing is exactly what quick leaves out (documented)


@pytest.mark.parametrize("case, verify", CASES)
def test_untrusted_package_refused_before_any_session(chain_package, tmp_path, monkeypatch, case, verify):
    """edgecoe.load refuses each case with a PackageError; onnxruntime never sees the files."""
    import onnxruntime

    import edgecoe

    UNTRUSTED[case](chain_package, tmp_path)
    sessions: list[object] = []
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: sessions.append(a) or real(*a, **k))
    with pytest.raises(PackageError):
        edgecoe.load(chain_package, verify=verify)
    assert sessions == []
