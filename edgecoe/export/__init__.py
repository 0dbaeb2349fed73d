"""``edgecoe export``: build a CoE package from a spec, verifying every expert.

Each expert is exported (or imported), written into the package, checked by
onnx.checker with full shape inference, and run once on ONNX Runtime CPU
against its source framework; the largest absolute difference is reported and
the export fails above the spec's tolerance. The package is only moved into
place after the finished directory loads as valid.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

import edgecoe
from edgecoe.errors import ExportError
from edgecoe.export.sources import load_source, scratch_dir
from edgecoe.export.spec import ExpertSpec, ExportSpec, read_spec
from edgecoe.export.verify import (
    check_batching,
    check_model_file,
    compare_with_reference,
    example_inputs,
)
from edgecoe.package.feeds import item_shape
from edgecoe.package.files import record_file
from edgecoe.package.loader import load_package
from edgecoe.package.manifest import BatchSpec, ExpertRecord, Manifest, RequestInput, TensorSpec
from edgecoe.package.onnxmodel import io_specs, non_tensor_outputs, read_model
from edgecoe.package.routing import declared_usage_probabilities
from edgecoe.package.writer import PackageWriter
from edgecoe.providers import SessionError, create_session

__all__ = ["ExpertExport", "ExportReport", "export_package", "read_spec"]


@dataclass(frozen=True, slots=True)
class ExpertExport:
    """What exporting one expert did."""

    name: str
    origin: str
    framework: str
    bytes: int
    max_abs_diff: float
    optimized_max_abs_diff: float | None
    seconds: float


@dataclass(frozen=True, slots=True)
class ExportReport:
    package: Path
    experts: list[ExpertExport]


def export_package(
    spec_path: str | Path,
    dest: str | Path,
    *,
    overwrite: bool = False,
    allow_custom_ops: bool = False,
    on_expert_start: Callable[[str], None] | None = None,
    on_expert_done: Callable[[ExpertExport], None] | None = None,
) -> ExportReport:
    """Export the package a spec describes to ``dest``.

    Raises:
        SpecError: the spec is invalid (every problem listed).
        ExportError: an expert could not be exported, or failed its checks.
        PackageError: the finished package does not validate (a bug or a spec
            inconsistency only visible after export, e.g. mismatched inputs).
    """
    spec, base = read_spec(spec_path)
    results: list[ExpertExport] = []
    records: dict[str, ExpertRecord] = {}
    with scratch_dir() as scratch, PackageWriter(dest, overwrite=overwrite) as writer:
        for name in spec.experts:
            if on_expert_start:
                on_expert_start(name)
            started = time.perf_counter()
            record, result = _export_one(name, spec, base, Path(scratch), writer, allow_custom_ops)
            result = replace(result, seconds=time.perf_counter() - started)
            records[name] = record
            results.append(result)
            if on_expert_done:
                on_expert_done(result)
        manifest = Manifest(
            name=spec.name, description=spec.description, created_by=f"edgecoe {edgecoe.__version__} export",
            inputs=spec.inputs or _derive_inputs(spec, records), metadata=spec.metadata, entry=spec.entry,
            experts=records, constants=spec.constants,
        )
        probabilities = declared_usage_probabilities(manifest)
        manifest = manifest.model_copy(update={"experts": {
            n: e.model_copy(update={"usage_probability": round(probabilities[n], 9)}) for n, e in records.items()
        }})
        path = writer.commit(manifest, validate=lambda root: load_package(root, allow_custom_ops=allow_custom_ops))
    return ExportReport(package=path, experts=results)


def _export_one(
    name: str, spec: ExportSpec, base: Path, scratch: Path, writer: PackageWriter, allow_custom_ops: bool
) -> tuple[ExpertRecord, ExpertExport]:
    expert = spec.experts[name]
    where = f"expert {name}"
    source = load_source(name, expert, base, scratch, allow_custom_ops=allow_custom_ops)
    rel = f"experts/{name}.onnx"
    model_record, external = writer.write_model(rel, source.model, external=True if source.external_data else None)
    del source.model  # weights can be large; the file on disk is the copy that matters now
    path = writer.root / rel
    check_model_file(path, where)
    model = read_model(path)
    dropped = _dropped_outputs(model, expert, where)
    inputs, outputs = io_specs(model, where=rel, dropped=dropped)
    model_metadata = _model_metadata(model, where)
    del model
    batch = _batch_spec(inputs, outputs, expert, where)
    samples = {**_constant_samples(spec, expert, inputs, batch), **(_read_samples(expert, base, where) or {})}
    feeds = example_inputs(inputs, expert.dim_defaults, input_shapes=expert.input_shapes,
                           value_ranges=expert.value_ranges, samples=samples, batch_axes=batch.axes, where=where)
    kept = [o.name for o in outputs]
    comparison = compare_with_reference(path, source.reference, feeds, tolerance=spec.tolerance, where=where,
                                        outputs=kept)
    optimized = None
    optimized_diff = None
    if spec.optimize:
        opt_rel = f"experts/{name}.opt.onnx"
        # NOTE: "extended", not "all": level-all graphs may hold CPU-specific
        # layouts (NCHWc) that are not portable to other providers or machines.
        try:
            create_session(path, optimization="extended", save_optimized_to=writer.root / opt_rel)
        except SessionError as exc:
            raise ExportError(f"{where}: could not write the ORT-optimized copy: {exc}") from exc
        optimized_diff = compare_with_reference(
            writer.root / opt_rel, source.reference, feeds, tolerance=spec.tolerance,
            where=f"{where} (optimized copy)", optimization="none", outputs=kept,
        ).max_abs_diff
        optimized = record_file(writer.root, opt_rel)
    record = ExpertRecord(
        architecture=expert.architecture or name, model=model_record, external_data=external,
        optimized=optimized, inputs=inputs, outputs=outputs, route=expert.route, usage_probability=0.0,
        source=source.origin, feeds=expert.feeds, prepare=expert.prepare, finish=expert.finish, state=expert.state,
        batch=batch, dropped_outputs=dropped, model_metadata=model_metadata,
        item_shapes={name: [d for i, d in enumerate(array.shape) if i != batch.axis(name)]
                     for name, array in feeds.items()},
        value_ranges=dict(expert.value_ranges),
    )
    check_batching(path, record, feeds, where)
    result = ExpertExport(name=name, origin=source.origin, framework=source.framework, bytes=record.total_bytes,
                          max_abs_diff=comparison.max_abs_diff, optimized_max_abs_diff=optimized_diff, seconds=0.0)
    return record, result


def _model_metadata(model: onnx.ModelProto, where: str) -> dict[str, str]:
    """The model's metadata_props, kept for transforms (a recogniser's character list lives there)."""
    from edgecoe.package.manifest import MAX_MODEL_METADATA_CHARS

    found = {prop.key: prop.value for prop in model.metadata_props}
    size = sum(len(k) + len(v) for k, v in found.items())
    if size > MAX_MODEL_METADATA_CHARS:
        raise ExportError(f"{where}: the model's metadata_props hold {size} characters, more than "
                          f"{MAX_MODEL_METADATA_CHARS}; strip them from the file before exporting")
    return found


def _dropped_outputs(model: onnx.ModelProto, expert: ExpertSpec, where: str) -> list[str]:
    """Outputs not kept: those outside ``keep_outputs``; a non-tensor output must be among them."""
    names = [o.name for o in model.graph.output]
    keep = expert.keep_outputs
    if keep is not None:
        unknown = [n for n in keep if n not in names]
        if unknown:
            raise ExportError(f"{where}: keep_outputs names {unknown}, which are not outputs of the model ({names})")
    dropped = [n for n in names if keep is not None and n not in keep]
    refused = [n for n in non_tensor_outputs(model) if n not in dropped]
    if refused:
        raise ExportError(f"{where}: outputs {refused} are sequences or maps, which edgecoe does not serve; "
                          f"list the outputs to keep in keep_outputs (tensor outputs: "
                          f"{[n for n in names if n not in non_tensor_outputs(model)]})")
    if keep is not None and not keep:
        raise ExportError(f"{where}: keep_outputs is empty; keep at least one output")
    return dropped


def _batch_spec(inputs: list[TensorSpec], outputs: list[TensorSpec], expert: ExpertSpec, where: str) -> BatchSpec:
    """The spec's batch axes, rank-0 inputs unbatched, and ``max`` from a fixed batch dimension."""
    axes = dict(expert.batch.axes)
    tensors = {s.name: s for s in [*inputs, *outputs]}
    for name, axis in axes.items():
        if name not in tensors:
            raise ExportError(f"{where}: batch.axes names {name!r}, which is neither an input nor a kept output "
                              f"({sorted(tensors)})")
        if axis is not None and not 0 <= axis < len(tensors[name].shape):
            raise ExportError(f"{where}: batch.axes.{name} = {axis} is outside {name}'s rank "
                              f"{len(tensors[name].shape)} {tensors[name].shape_str()}")
    for spec in inputs:
        if not spec.shape and spec.name not in axes:
            axes[spec.name] = None  # a scalar input has no batch axis: shared by the batch
    fixed = [dim for spec in inputs if (axis := axes.get(spec.name, 0)) is not None and spec.shape
             and isinstance(dim := spec.shape[axis], int)]
    limit = expert.batch.max if expert.batch.max is not None else (min(fixed) if fixed else None)
    return BatchSpec(max=limit, axes=axes)


def _constant_samples(spec: ExportSpec, expert: ExpertSpec, inputs: list[TensorSpec],
                      batch: BatchSpec) -> dict[str, np.ndarray]:
    """Inputs fed by a constant are verified with it (a sample rate of 16000, not a random 7):
    as is when unbatched, else one copy per item of a verification batch of two."""
    out = {}
    names = {s.name for s in inputs}
    for name, feed in expert.feeds.items():
        if feed.const is None or feed.const not in spec.constants or name not in names:
            continue
        value = spec.constants[feed.const].array()
        axis = batch.axis(name)
        out[name] = value if axis is None else np.stack([value, value], axis=axis)
    return out


def _read_samples(expert: ExpertSpec, base: Path, where: str) -> dict[str, np.ndarray] | None:
    """Verification inputs from the spec's .npz or .npy files (pickles refused)."""
    samples = expert.sample_inputs
    if samples is None:
        return None
    try:
        if isinstance(samples, str):
            with np.load(base / samples, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        return {name: np.load(base / file, allow_pickle=False) for name, file in samples.items()}
    except (OSError, ValueError) as exc:
        raise ExportError(f"{where}: sample_inputs cannot be read: {exc}") from exc


def _request_inputs(record: ExpertRecord, *, unlisted: bool) -> list[RequestInput]:
    """The request inputs a record reads, one item each: its ``request:`` feeds, and with ``unlisted``
    (a first expert) also every input without a feed or state, under its own name."""
    state = {pair.input for pair in record.state}
    out = []
    for spec in record.inputs:
        feed = record.feeds.get(spec.name)
        if spec.name in state or (feed is not None and feed.request is None) or (feed is None and not unlisted):
            continue
        out.append(RequestInput(name=feed.request if feed is not None and feed.request else spec.name,
                                dtype=spec.dtype, shape=item_shape(spec, record.batch.axis(spec.name))))
    return out


def _derive_inputs(spec: ExportSpec, records: dict[str, ExpertRecord]) -> list[RequestInput]:
    """Package inputs: what the preliminary experts read from the request (without their batch dimension),
    then later experts' explicit request feeds (inputs only some routes need)."""
    firsts = list(dict.fromkeys([*spec.entry.experts.values(), *([spec.entry.default] if spec.entry.default else [])]))
    found: dict[str, RequestInput] = {}
    for name in firsts:
        for derived in _request_inputs(records[name], unlisted=True):
            if derived.name in found and found[derived.name] != derived:
                raise ExportError(
                    f"preliminary experts disagree on input {derived.name!r}: {found[derived.name].shape_str()} vs "
                    f"{derived.shape_str()} ({name}); declare `inputs:` in the spec"
                )
            found[derived.name] = derived
    for record in records.values():
        for derived in _request_inputs(record, unlisted=False):
            found.setdefault(derived.name, derived)
    return list(found.values())
