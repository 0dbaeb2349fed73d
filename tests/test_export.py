"""edgecoe export: ONNX import (dynamic axes, several I/O, external data), torch, optimum."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import (
    chain_spec,
    linear_model,
    save_external,
    two_in_two_out_model,
    write_spec,
)

from edgecoe.errors import ExportError, SpecError, VerificationError
from edgecoe.export import export_package
from edgecoe.export.verify import compare_with_reference
from edgecoe.package import load_package

FIXTURES = Path(__file__).parent / "fixtures"


def single_expert_spec(source: dict, **extra) -> dict:
    return {"name": "one", "entry": {"key": "k", "experts": {"x": "e"}},
            "experts": {"e": {"source": source, **extra}}}


def test_import_dynamic_axes_several_inputs_outputs_old_opset(tmp_path):
    onnx.save_model(two_in_two_out_model(), str(tmp_path / "two.onnx"))
    spec = write_spec(tmp_path / "spec.json", single_expert_spec({"onnx": "two.onnx"}, dim_defaults={"seq": 5}))
    report = export_package(spec, tmp_path / "pkg")
    pkg = load_package(report.package)
    e = pkg.experts["e"]
    assert [i.name for i in e.inputs] == ["a", "b"]
    assert [o.name for o in e.outputs] == ["sum", "max"]
    assert e.inputs[0].shape == ["batch", "seq", 4]  # symbolic dims kept
    assert pkg.manifest.inputs[0].shape == ["seq", 4]
    assert report.experts[0].max_abs_diff == 0.0


def test_import_external_data_is_gathered_into_the_package(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    save_external(linear_model(in_dim=64, out_dim=32), src / "big.onnx")
    spec = write_spec(src / "spec.json", single_expert_spec({"onnx": "big.onnx"}))
    pkg = load_package(export_package(spec, tmp_path / "pkg").package)
    record = pkg.experts["e"]
    assert [f.path for f in record.external_data] == ["experts/e.onnx.data"]
    shutil.rmtree(src)  # the package must not depend on the source directory
    session = ort.InferenceSession(str(pkg.model_path("e")), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.ones((2, 64), np.float32)})[0]
    assert out.shape == (2, 32)


def test_optimized_copy_is_stored_and_verified(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    spec = write_spec(src / "spec.json", chain_spec(src, optimize=True))
    report = export_package(spec, tmp_path / "pkg")
    pkg = load_package(report.package)
    assert all(e.optimized is not None for e in pkg.experts.values())
    assert all(r.optimized_max_abs_diff is not None and r.optimized_max_abs_diff < 1e-4 for r in report.experts)
    assert pkg.model_path("stage2", optimized=True).name == "stage2.opt.onnx"


def test_spec_errors_are_all_listed(tmp_path):
    spec = {
        "name": "bad name!",
        "entry": {"key": "k", "experts": {"x": "ghost"}},
        "experts": {"e": {"source": {"onnx": "missing.onnx"}, "route": {"kind": "fanout", "next": ["nobody"]}}},
    }
    path = write_spec(tmp_path / "spec.json", spec)
    with pytest.raises(SpecError) as info:
        export_package(path, tmp_path / "pkg")
    text = str(info.value)
    assert "name" in text and "pattern" in text
    assert not (tmp_path / "pkg").exists()


def test_spec_semantic_errors(tmp_path):
    spec = single_expert_spec({"onnx": "missing.onnx"}, route={"kind": "fanout", "next": ["nobody"]})
    spec["entry"]["experts"]["y"] = "ghost"
    path = write_spec(tmp_path / "spec.json", spec)
    with pytest.raises(SpecError) as info:
        export_package(path, tmp_path / "pkg")
    wheres = [p.where for p in info.value.problems]
    assert "spec.json: entry.experts.y" in wheres
    assert "spec.json: experts.e.route" in wheres
    assert "spec.json: experts.e.source" in wheres


def test_source_that_is_not_onnx(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage" * 10)
    spec = write_spec(tmp_path / "spec.json", single_expert_spec({"onnx": "junk.onnx"}))
    with pytest.raises(ExportError, match="junk.onnx"):
        export_package(spec, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()
    assert not list(tmp_path.glob(".pkg.tmp-*"))


def test_verification_fails_above_tolerance(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(linear_model(), str(path))
    inputs = {"x": np.ones((2, 4), np.float32)}

    def off_by_a_bit(feeds):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return {"y": s.run(None, feeds)[0] + 1e-2}

    with pytest.raises(VerificationError, match="exceeds tolerance"):
        compare_with_reference(path, off_by_a_bit, inputs, tolerance=1e-3, where="expert m")
    ok = compare_with_reference(path, off_by_a_bit, inputs, tolerance=1e-1, where="expert m")
    assert ok.max_abs_diff == pytest.approx(1e-2, rel=1e-3)


def test_export_refuses_to_overwrite_without_force(chain_package, tmp_path):
    src = tmp_path / "src"
    spec = src / "spec.json"
    with pytest.raises(Exception, match="already exists"):
        export_package(spec, chain_package)
    report = export_package(spec, chain_package, overwrite=True)
    load_package(report.package)


@pytest.mark.slow
def test_export_from_torch_module_matches_torch(tmp_path):
    shutil.copy(FIXTURES / "torch_experts.py", tmp_path / "torch_experts_mod.py")
    source = {"torch": "torch_experts_mod:make_cnn", "args": {"num_classes": 4},
              "example_inputs": {"image": {"shape": [1, 3, 16, 16]}}, "output_names": ["logits"]}
    spec = write_spec(tmp_path / "spec.json", single_expert_spec(source, architecture="cnn"))
    report = export_package(spec, tmp_path / "pkg")
    assert report.experts[0].framework == "torch"
    assert report.experts[0].max_abs_diff < 1e-4
    pkg = load_package(report.package)
    assert pkg.experts["e"].outputs[0].name == "logits"
    assert pkg.experts["e"].inputs[0].shape[0] == "batch"  # dynamic batch by default


def test_torch_factory_that_returns_no_module(tmp_path):
    shutil.copy(FIXTURES / "torch_experts.py", tmp_path / "torch_experts_bad.py")
    source = {"torch": "torch_experts_bad:not_a_module", "example_inputs": {"x": {"shape": [1, 2]}},
              "output_names": ["y"]}
    spec = write_spec(tmp_path / "spec.json", single_expert_spec(source))
    with pytest.raises(ExportError, match="expected torch.nn.Module"):
        export_package(spec, tmp_path / "pkg")


@pytest.mark.slow
def test_export_from_local_hf_model_via_optimum(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    ResNetForImageClassification(cfg).save_pretrained(tmp_path / "hf-resnet")
    source = {"hf": "hf-resnet", "task": "image-classification"}
    spec = write_spec(tmp_path / "spec.json", single_expert_spec(source, architecture="hf-resnet",
                                                                 dim_defaults={"height": 32, "width": 32}))
    report = export_package(spec, tmp_path / "pkg")
    assert report.experts[0].framework == "transformers"
    assert report.experts[0].max_abs_diff < 1e-4
    pkg = load_package(report.package)
    assert [o.name for o in pkg.experts["e"].outputs] == ["logits"]
    assert pkg.experts["e"].outputs[0].shape[-1] == 3


def test_framework_chatter_is_quiet_during_export_and_back_after(caplog):
    """torch's exporter logs a warning per skipped op registry entry; transformers and optimum
    log progress: none of it is actionable, so an export shows only their errors."""
    import logging
    import warnings

    from edgecoe.export.sources import _quiet_framework_warnings

    chatty = logging.getLogger("torch.onnx._internal.exporter._registration")
    with caplog.at_level(logging.INFO), _quiet_framework_warnings():
        chatty.warning("torchvision is not installed")
        logging.getLogger("transformers.modeling_utils").info("loading weights")
        logging.getLogger("optimum.exporters").error("a real problem")
        warnings.warn("TracerWarning: converting a tensor to a Python boolean", UserWarning, stacklevel=1)
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]
    with caplog.at_level(logging.WARNING):
        chatty.warning("after the export")
    assert caplog.records[-1].getMessage() == "after the export"
