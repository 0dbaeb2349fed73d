"""The export spec: which experts a package holds, where each comes from, and the routing.

A spec is YAML or JSON; see ``export/README.md`` for the documented format.
Relative paths in it are relative to the spec file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, ValidationError

from edgecoe.errors import Problem, SpecError
from edgecoe.package.manifest import (
    Constant,
    EntryRule,
    Feed,
    MetadataField,
    RequestInput,
    Route,
    StatePair,
    StopRoute,
    TransformStep,
)
from edgecoe.package.routing import ExpertGraph, route_targets
from edgecoe.schema import (
    DocumentError,
    SafeName,
    StrictModel,
    TensorName,
    parse_json,
    parse_yaml,
    pydantic_problems,
    read_document,
)

MAX_SPEC_BYTES = 16 * 1024 * 1024


class ExampleInput(StrictModel):
    shape: list[int] = Field(min_length=1)
    dtype: str = "float32"


class OnnxSource(StrictModel):
    """Import an existing ``.onnx`` file as is (external data is gathered into the package).

    ``reference``: what the packaged copy is checked against: ``onnxruntime`` (the original
    file on ONNX Runtime: proves the copy intact, not the model) or ``onnx`` (the onnx package's
    reference evaluator, an independent implementation of the operators: slow, for small models).
    """

    onnx: str
    reference: Literal["onnxruntime", "onnx"] = "onnxruntime"


class TorchSource(StrictModel):
    """Export a PyTorch module made by ``factory`` (``"pkg.module:callable"``) via torch.onnx."""

    torch: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    args: dict[str, object] = Field(default_factory=dict, description="keyword arguments of the factory")
    example_inputs: dict[TensorName, ExampleInput] = Field(min_length=1)
    output_names: list[TensorName] = Field(min_length=1)
    dynamic_axes: dict[str, dict[int, str]] | None = Field(
        default=None, description="default: axis 0 of every input and output is 'batch'"
    )
    opset: int = Field(default=18, ge=11)
    dynamo: bool = Field(default=True, description="use the torch.export-based exporter")


class HfSource(StrictModel):
    """Export a local Hugging Face model directory via optimum (offline; task required)."""

    hf: str
    task: str
    opset: int | None = Field(default=None, ge=11)


def _source_kind(value: object) -> str:
    if isinstance(value, dict):
        for key in ("onnx", "torch", "hf"):
            if key in value:
                return key
    return "onnx"


Source = Annotated[
    Annotated[OnnxSource, Tag("onnx")] | Annotated[TorchSource, Tag("torch")] | Annotated[HfSource, Tag("hf")],
    Discriminator(_source_kind),
]


class BatchSpecIn(StrictModel):
    """How the model meets a batch; ``max`` defaults to a fixed batch dimension's size."""

    max: int | None = Field(default=None, ge=1)
    axes: dict[TensorName, int | None] = Field(default_factory=dict)


class ExpertSpec(StrictModel):
    source: Source
    architecture: SafeName | None = Field(default=None, description="default: the expert's name")
    route: Route = Field(default_factory=StopRoute)
    dim_defaults: dict[str, int] = Field(
        default_factory=dict, description="sizes for symbolic dims, by name, when making verification inputs"
    )
    input_shapes: dict[TensorName, list[int]] = Field(
        default_factory=dict, description="whole shapes of verification inputs, by input (sizes by position)"
    )
    value_ranges: dict[TensorName, tuple[float, float]] = Field(
        default_factory=dict, description="[low, high] of generated verification values, by input"
    )
    sample_inputs: str | dict[TensorName, str] | None = Field(
        default=None, description="verification inputs from files: one .npz, or input -> .npy"
    )
    feeds: dict[TensorName, Feed] = Field(default_factory=dict)
    prepare: TransformStep | None = None
    finish: TransformStep | None = None
    state: list[StatePair] = Field(default_factory=list)
    batch: BatchSpecIn = Field(default_factory=BatchSpecIn)
    keep_outputs: list[TensorName] | None = Field(
        default=None, description="outputs to keep (default: all); the rest are not computed")


class ExportSpec(StrictModel):
    name: SafeName
    description: str = ""
    inputs: list[RequestInput] | None = Field(
        default=None, description="per-item request inputs; default: the preliminary experts' inputs minus batch"
    )
    metadata: dict[str, MetadataField] = Field(default_factory=dict)
    entry: EntryRule
    experts: dict[SafeName, ExpertSpec] = Field(min_length=1)
    constants: dict[SafeName, Constant] = Field(default_factory=dict)
    tolerance: float = Field(default=1e-4, gt=0)
    optimize: bool = Field(default=False, description="also store an ORT-optimized copy of every expert")


def read_spec(path: str | Path) -> tuple[ExportSpec, Path]:
    """Parse and check a spec; returns it with the directory its relative paths start from.

    Raises:
        SpecError: listing every problem (schema, unknown names, cycles, missing sources).
    """
    path = Path(path)
    try:
        text = read_document(path, max_bytes=MAX_SPEC_BYTES)
        raw = parse_json(text, path.name) if path.suffix == ".json" else parse_yaml(text, path.name)
    except DocumentError as exc:
        raise SpecError(path, [Problem(exc.where, exc.message)]) from None
    if not isinstance(raw, dict):
        raise SpecError(path, [Problem(path.name, f"expected a mapping at the top level, got {type(raw).__name__}")])
    try:
        spec = ExportSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(path, pydantic_problems(path.name, exc)) from exc
    problems = check_spec(spec, path.parent, path.name)
    if problems:
        raise SpecError(path, problems)
    return spec, path.parent


def check_spec(spec: ExportSpec, base: Path, where: str) -> list[Problem]:
    """Cross-field checks: names exist, graph is acyclic, source files exist."""
    problems: list[Problem] = []
    names = set(spec.experts)
    for value, expert in spec.entry.experts.items():
        if expert not in names:
            problems.append(Problem(f"{where}: entry.experts.{value}", f"unknown expert {expert!r}"))
    if spec.entry.default is not None and spec.entry.default not in names:
        problems.append(Problem(f"{where}: entry.default", f"unknown expert {spec.entry.default!r}"))
    children = {}
    for name, expert_spec in spec.experts.items():
        children[name] = route_targets(expert_spec.route)
        for target in children[name]:
            if target not in names:
                problems.append(Problem(f"{where}: experts.{name}.route", f"sends to unknown expert {target!r}"))
        source = expert_spec.source
        found: Path | None = None  # the file or directory a source names, and what it must be
        if isinstance(source, OnnxSource):
            found, wanted, is_kind = base / source.onnx, "a regular file", Path.is_file
        elif isinstance(source, HfSource):
            found, wanted, is_kind = base / source.hf, "a model directory", Path.is_dir
        if found is not None and not found.exists():
            problems.append(Problem(f"{where}: experts.{name}.source", f"{found} does not exist"))
        elif found is not None and not is_kind(found):  # a FIFO or device would hang the export
            problems.append(Problem(f"{where}: experts.{name}.source", f"{found} is not {wanted}"))
        samples = expert_spec.sample_inputs
        files = [samples] if isinstance(samples, str) else list((samples or {}).values())
        for file in files:
            suffix = ".npz" if isinstance(samples, str) else ".npy"
            if not file.endswith(suffix):
                problems.append(Problem(f"{where}: experts.{name}.sample_inputs", f"{file!r}: expected a {suffix} file"))
            elif not (base / file).is_file():
                problems.append(Problem(f"{where}: experts.{name}.sample_inputs", f"{base / file} is not a file"))
        for input_name, (low, high) in expert_spec.value_ranges.items():
            if not low <= high:
                problems.append(Problem(f"{where}: experts.{name}.value_ranges.{input_name}",
                                        f"[{low}, {high}]: low must not exceed high"))
    parents: dict[str, list[str]] = {n: [] for n in names}
    for name, targets in children.items():
        for target in targets:
            parents.setdefault(target, []).append(name)
    cycle = ExpertGraph(children=children, parents=parents, preliminary=frozenset()).find_cycle()
    if cycle:
        problems.append(Problem(f"{where}: experts", f"routing graph has a cycle: {' -> '.join(cycle)}"))
    return problems
