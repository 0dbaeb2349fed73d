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

import edgecoe
from edgecoe.errors import ExportError
from edgecoe.export.sources import load_source, scratch_dir
from edgecoe.export.spec import ExportSpec, read_spec
from edgecoe.export.verify import (
    check_model_file,
    compare_with_reference,
    example_inputs,
)
from edgecoe.package.files import record_file
from edgecoe.package.loader import load_package
from edgecoe.package.manifest import ExpertRecord, Manifest, RequestInput
from edgecoe.package.onnxmodel import io_specs, read_model
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
            experts=records,
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
    inputs, outputs = io_specs(read_model(path), where=rel)
    feeds = example_inputs(inputs, expert.dim_defaults)
    comparison = compare_with_reference(path, source.reference, feeds, tolerance=spec.tolerance, where=where)
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
            where=f"{where} (optimized copy)", optimization="none",
        ).max_abs_diff
        optimized = record_file(writer.root, opt_rel)
    record = ExpertRecord(
        architecture=expert.architecture or name, model=model_record, external_data=external,
        optimized=optimized, inputs=inputs, outputs=outputs, route=expert.route, usage_probability=0.0,
        source=source.origin,
    )
    result = ExpertExport(name=name, origin=source.origin, framework=source.framework, bytes=record.total_bytes,
                          max_abs_diff=comparison.max_abs_diff, optimized_max_abs_diff=optimized_diff, seconds=0.0)
    return record, result


def _derive_inputs(spec: ExportSpec, records: dict[str, ExpertRecord]) -> list[RequestInput]:
    """Package inputs = the preliminary experts' inputs without their batch dimension."""
    firsts = list(dict.fromkeys([*spec.entry.experts.values(), *([spec.entry.default] if spec.entry.default else [])]))
    found: dict[str, RequestInput] = {}
    for name in firsts:
        for item in records[name].inputs:
            derived = RequestInput(name=item.name, dtype=item.dtype, shape=item.shape[1:])
            if item.name in found and found[item.name] != derived:
                raise ExportError(
                    f"preliminary experts disagree on input {item.name!r}: {found[item.name].shape_str()} vs "
                    f"{derived.shape_str()} ({name}); declare `inputs:` in the spec"
                )
            found[item.name] = derived
    return list(found.values())
