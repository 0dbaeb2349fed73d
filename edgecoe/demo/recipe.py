"""Demo recipes: a YAML file that deterministically describes a circuit-board CoE package."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import onnx
from pydantic import Field

import edgecoe
from edgecoe.demo.builders import resnet_classifier, yolo_detector
from edgecoe.errors import InvalidInputError, SpecError
from edgecoe.package.manifest import (
    ArgmaxRoute,
    EntryRule,
    ExpertRecord,
    Manifest,
    MetadataField,
    RequestInput,
    TensorSpec,
    WorkloadHints,
)
from edgecoe.package.onnxmodel import io_specs
from edgecoe.package.routing import declared_usage_probabilities
from edgecoe.package.writer import PackageWriter
from edgecoe.schema import StrictModel, load_document
from edgecoe.workload import distribution_shares

_FAMILIES = ["res", "cap", "ind", "diode", "led", "tr", "ic", "conn", "osc", "fuse", "sw", "relay"]
_FOOTPRINTS = ["0201", "0402", "0603", "0805", "1206", "sot23", "sot223", "soic8", "soic16", "qfn32", "qfp64", "bga"]
_MARKER_CHANNEL = 0
_MARKER_GAIN = 20.0
_MARKER_OFFSET = 0.5


class ClassifierArch(StrictModel):
    name: str
    widths: list[int] = Field(min_length=1)
    blocks: list[int] = Field(min_length=1)


class DetectorArch(StrictModel):
    name: str
    widths: list[int] = Field(min_length=2)
    depth: int = Field(ge=0)


class DemoRecipe(StrictModel):
    """Everything that determines a demo package's bytes."""

    name: str
    description: str = ""
    seed: int = Field(ge=0)
    image_size: int = Field(ge=16, description="square input side; a multiple of 32")
    num_component_types: int = Field(ge=1, le=len(_FAMILIES) * len(_FOOTPRINTS))
    num_detectors: int = Field(ge=1)
    pass_fraction: float = Field(ge=0.0, le=1.0)
    distribution: str = "uniform"
    classifier_architectures: list[ClassifierArch] = Field(min_length=1)
    detector_architectures: list[DetectorArch] = Field(min_length=1)
    detector_classes: int = Field(default=4, ge=1)


def recipe_dirs() -> list[Path]:
    """Where named recipes are looked up: the installed copy, then a source checkout's."""
    here = Path(__file__).resolve().parent
    return [here / "recipes", here.parents[1] / "models" / "recipes"]


def find_recipe(name_or_path: str) -> Path:
    """Resolve ``pcb``/``pcb-small`` or a path to a recipe file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        if not path.is_file():
            raise InvalidInputError(f"recipe file {path} does not exist")
        return path
    for folder in recipe_dirs():
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in recipe_dirs() if d.is_dir() for p in d.glob("*.yaml")})
    raise InvalidInputError(f"no demo recipe named {name_or_path!r}; known: {known}")


def load_recipe(path: str | Path) -> DemoRecipe:
    """Read and validate a demo recipe (YAML).

    Raises:
        SpecError: naming the file and each invalid field.
    """
    return load_document(path, DemoRecipe, error=SpecError, max_bytes=1024 * 1024)


def component_types(count: int) -> list[tuple[str, int]]:
    """(name, footprint index) of the first ``count`` component types, deterministic.

    Family-major order, so even a small recipe spans every footprint (and so
    every detector).
    """
    pairs = itertools.product(range(len(_FAMILIES)), range(len(_FOOTPRINTS)))
    return [(f"{_FAMILIES[f]}-{_FOOTPRINTS[p]}", p) for f, p in pairs][:count]


def build_demo(
    recipe: DemoRecipe, dest: str | Path, *, overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Build the package a recipe describes at ``dest`` (atomically).

    Returns:
        The package directory.
    """
    size = recipe.image_size
    types = component_types(recipe.num_component_types)
    detectors: list[tuple[str, DetectorArch]] = []
    for d in range(recipe.num_detectors):
        detector_arch = recipe.detector_architectures[d % len(recipe.detector_architectures)]
        detectors.append((f"det-{_FOOTPRINTS[d % len(_FOOTPRINTS)]}-{d:02d}", detector_arch))
    image_item = TensorSpec(name="image", dtype="float32", shape=[3, size, size])
    experts: dict[str, ExpertRecord] = {}
    jobs: list[tuple[str, str, Callable[[], onnx.ModelProto], ArgmaxRoute | None]] = []
    for i, (ctype, footprint) in enumerate(types):
        arch = recipe.classifier_architectures[i % len(recipe.classifier_architectures)]
        detector = detectors[footprint % len(detectors)][0]
        name = f"cls-{ctype}"
        seed = recipe.seed * 1000 + i

        def make(arch: ClassifierArch = arch, seed: int = seed, name: str = name) -> onnx.ModelProto:
            return resnet_classifier(seed=seed, image_size=size, widths=arch.widths, blocks=arch.blocks,
                                     num_classes=2, marker_channel=_MARKER_CHANNEL,
                                     marker_gain=_MARKER_GAIN, name=name)

        route = ArgmaxRoute(kind="argmax", output="logits", classes={0: [], 1: [detector]},
                            class_fractions={0: round(1.0 - recipe.pass_fraction, 9), 1: recipe.pass_fraction})
        jobs.append((name, arch.name, make, route))
    for d, (name, det_arch) in enumerate(detectors):
        seed = recipe.seed * 1000 + 500 + d

        def make_det(arch: DetectorArch = det_arch, seed: int = seed, name: str = name) -> onnx.ModelProto:
            return yolo_detector(seed=seed, image_size=size, widths=arch.widths, depth=arch.depth,
                                 num_classes=recipe.detector_classes, num_anchors=3, name=name)

        jobs.append((name, det_arch.name, make_det, None))

    values = [t for t, _ in types]
    with PackageWriter(dest, overwrite=overwrite) as writer:
        for name, arch_name, make_model, expert_route in jobs:
            if progress:
                progress(name)
            model = make_model()
            inputs, outputs = io_specs(model, where=name)
            record, external = writer.write_model(f"experts/{name}.onnx", model, external=False)
            fields: dict[str, object] = {
                "architecture": arch_name, "model": record, "external_data": external, "inputs": inputs,
                "outputs": outputs, "usage_probability": 0.0, "source": f"demo recipe {recipe.name}",
            }
            if expert_route is not None:
                fields["route"] = expert_route
            experts[name] = ExpertRecord.model_validate(fields)
        manifest = Manifest(
            name=recipe.name, description=recipe.description,
            created_by=f"edgecoe {edgecoe.__version__} demo recipe (seed {recipe.seed})",
            inputs=[RequestInput(**image_item.model_dump())],
            metadata={"component_type": MetadataField(values=values,
                                                      distribution=distribution_shares(recipe.distribution, values))},
            entry=EntryRule(key="component_type", experts={t: f"cls-{t}" for t in values}),
            experts=experts,
            workload_hints=WorkloadHints(input="image", channel=_MARKER_CHANNEL, go_on_offset=_MARKER_OFFSET,
                                         stop_offset=-_MARKER_OFFSET, go_on_fraction=recipe.pass_fraction),
        )
        probabilities = declared_usage_probabilities(manifest)
        manifest = manifest.model_copy(update={"experts": {
            n: e.model_copy(update={"usage_probability": round(probabilities[n], 9)}) for n, e in experts.items()
        }})
        return writer.commit(manifest)
