"""The CoServe paper's setting as a synthetic package, for the simulated bench.

~350 experts: one ResNet101 classifier per component type and YOLOv5m/l
detectors each shared by several types (docs/background.md); no files — the
simulator needs only the manifest and a device profile's costs (the
reference profiles in ``device_profiles/`` hold ResNet101 / YOLOv5 figures).
"""

from __future__ import annotations

from pathlib import Path

from edgecoe.package import Package
from edgecoe.package.manifest import (
    ArgmaxRoute,
    EntryRule,
    ExpertRecord,
    FileRecord,
    Manifest,
    MetadataField,
    RequestInput,
    TensorSpec,
)
from edgecoe.package.routing import ExpertGraph, declared_usage_probabilities
from edgecoe.workload import distribution_shares

_SIZES = {"resnet101": 178_000_000, "yolov5m": 84_800_000, "yolov5l": 186_000_000}


def paper_package(*, num_types: int = 300, num_detectors: int = 50, pass_fraction: float = 0.7,
                  dist: str = "zipf:1.1") -> Package:
    """A synthetic package shaped like CoServe's circuit-board CoE (default 350 experts)."""
    image = TensorSpec(name="image", dtype="float32", shape=["batch", 3, 224, 224])
    types = [f"type-{i:03d}" for i in range(num_types)]
    experts: dict[str, ExpertRecord] = {}
    for d in range(num_detectors):
        arch = "yolov5m" if d % 2 == 0 else "yolov5l"
        experts[f"det-{d:02d}"] = _record(arch, f"det-{d:02d}", image, None,
                                          TensorSpec(name="detections", dtype="float32", shape=["batch", 25200, 85]))
    for i, ctype in enumerate(types):
        route = ArgmaxRoute(kind="argmax", output="logits", classes={1: [f"det-{i % num_detectors:02d}"]},
                            class_fractions={0: round(1 - pass_fraction, 9), 1: pass_fraction})
        experts[f"cls-{ctype}"] = _record("resnet101", f"cls-{ctype}", image, route,
                                          TensorSpec(name="logits", dtype="float32", shape=["batch", 2]))
    manifest = Manifest(
        name=f"paper-coe-{num_types + num_detectors}", description="synthetic: CoServe's circuit-board CoE shape",
        inputs=[RequestInput(name="image", dtype="float32", shape=[3, 224, 224])],
        metadata={"component_type": MetadataField(values=types, distribution=distribution_shares(dist, types))},
        entry=EntryRule(key="component_type", experts={t: f"cls-{t}" for t in types}), experts=experts,
    )
    probabilities = declared_usage_probabilities(manifest)
    manifest = manifest.model_copy(update={"experts": {
        n: e.model_copy(update={"usage_probability": round(probabilities[n], 9)}) for n, e in experts.items()}})
    return Package(root=Path("<synthetic>"), manifest=manifest, graph=ExpertGraph.from_manifest(manifest))


def _record(arch: str, name: str, image: TensorSpec, route: ArgmaxRoute | None, output: TensorSpec) -> ExpertRecord:
    fields: dict[str, object] = {
        "architecture": arch, "model": FileRecord(path=f"experts/{name}.onnx", bytes=_SIZES[arch], sha256="0" * 64),
        "inputs": [image], "outputs": [output], "usage_probability": 0.0, "source": "synthetic (paper setting)"}
    if route is not None:
        fields["route"] = route
    return ExpertRecord.model_validate(fields)
